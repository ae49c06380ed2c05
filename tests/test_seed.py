"""Seed data: the programmatic teacher, the paper's rules, and an engine teacher."""

from __future__ import annotations

import pandas as pd
import pytest

from tops.config import ProblemsConfig, SeedConfig, VerifyConfig
from tops.domains import load_problems
from tops.errors import UserError
from tops.seed import apply_seed_rules, engine_responses, programmatic_responses
from tops.verify import verify_samples


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_programmatic_teacher_is_always_right_and_orders_by_effort(tokenizer):
    problems = load_problems(ProblemsConfig(n=30))
    responses = programmatic_responses(problems)
    verified, summary = verify_samples(responses.assign(n_tokens=0), VerifyConfig(workers=1), progress=False)
    assert summary["correct"] == len(responses) == 90
    seed, stats = apply_seed_rules(responses, tokenizer, min_gap_tokens=1)
    lengths = seed.pivot(index="problem_id", columns="effort", values="n_tokens")
    assert (lengths["low"] < lengths["medium"]).all() and (lengths["medium"] < lengths["high"]).all()
    assert stats["kept"] == 30 and stats["responses_relabelled_by_length"] == 0


def _rows(problem_id: str, texts: dict[str, str]) -> list[dict]:
    return [{"problem_id": problem_id, "question": "q", "answer": "1", "difficulty": None, "effort": effort,
             "sample_idx": 0, "response": text, "finish_reason": "stop"} for effort, text in texts.items()]


def test_rules_relabel_by_length_drop_narrow_gaps_and_incomplete(tokenizer):
    short, mid, long = "a " * 5, "a " * 30, "a " * 60
    frame = pd.DataFrame(
        _rows("swapped", {"low": mid, "medium": short, "high": long})  # teacher ignored the prompts
        + _rows("narrow", {"low": short, "medium": short + "a ", "high": long})  # low/medium too close
        + _rows("missing", {"low": short, "high": long}))  # medium never answered correctly
    seed, stats = apply_seed_rules(frame, tokenizer, min_gap_tokens=10)
    assert set(seed["problem_id"]) == {"swapped"}
    swapped = seed.set_index("effort")
    assert swapped.loc["low", "response"] == short and swapped.loc["low", "teacher_effort"] == "medium"
    assert swapped.loc["medium", "response"] == mid and swapped.loc["high", "response"] == long
    assert stats["dropped_gap_below_min"] == 1 and stats["dropped_not_correct_at_every_effort"] == 1
    assert stats["responses_relabelled_by_length"] == 2


def test_nothing_survives_is_a_clear_error(tokenizer):
    frame = pd.DataFrame(_rows("p", {"low": "a", "medium": "a a", "high": "a a a"}))
    with pytest.raises(UserError, match="no problem survived"):
        apply_seed_rules(frame, tokenizer, min_gap_tokens=300)


def test_engine_teacher_keeps_only_correct_answers(tmp_path, vllm_engine, smoke_config):
    problems = load_problems(smoke_config.problems, n=4)
    cfg = SeedConfig(teacher="tiny", samples_per_effort=2, sampling={"max_tokens": 16})
    responses = engine_responses(problems, vllm_engine, cfg, smoke_config.efforts.prompts, tmp_path,
                                 VerifyConfig(workers=1))
    assert (tmp_path / "teacher_samples.parquet").exists()
    teacher = pd.read_parquet(tmp_path / "teacher_samples.parquet")
    assert len(teacher) == 4 * 3 * 2
    if len(responses):  # a random model is rarely right; whatever it keeps must be
        verified, _ = verify_samples(responses, VerifyConfig(workers=1), progress=False)
        assert verified["correct"].all()
        assert not responses.duplicated(["problem_id", "effort"]).any()
