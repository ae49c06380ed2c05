"""select_responses: exact picks on small hand-made tables, for every policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tops.artifacts import SELECTED_COLUMNS, to_table
from tops.config import LaserConfig, SelectConfig
from tops.errors import UserError
from tops.select import SampleKeys, laser_buckets, select_responses


def verified(rows: list[tuple], **extra_columns) -> pd.DataFrame:
    """Rows of (problem_id, effort, sample_idx, n_tokens, correct[, difficulty])."""
    records = []
    for pid, effort, idx, n_tokens, correct, *difficulty in rows:
        records.append({
            "problem_id": pid, "question": f"Q {pid}", "answer": "1",
            "difficulty": difficulty[0] if difficulty else "easy",
            "effort": effort, "sample_idx": idx, "response": f"{pid}/{effort}/{idx}",
            "n_tokens": n_tokens, "finish_reason": "stop", "pred": "1" if correct else "2",
            "correct": correct, "verify_status": "ok",
        })
    df = pd.DataFrame(records)
    for name, values in extra_columns.items():
        df[name] = values
    return df


def picks(selected: pd.DataFrame) -> dict[str, str]:
    return dict(zip(selected["problem_id"], selected["response"], strict=True))


def test_shortest_picks_fewest_tokens_across_efforts_and_samples():
    df = verified([
        ("p1", "low", 0, 100, False), ("p1", "low", 1, 80, True),
        ("p1", "medium", 0, 50, True), ("p1", "high", 0, 30, False),
        ("p2", "high", 0, 70, True), ("p2", "high", 1, 60, True),
    ])
    selected, _ = select_responses(df, SelectConfig(policy="shortest"))
    assert picks(selected) == {"p1": "p1/medium/0", "p2": "p2/high/1"}
    assert selected["n_tokens"].tolist() == [50, 60]
    assert (selected["policy"] == "shortest").all()


def test_ties_go_to_lower_effort_then_lower_sample_idx_then_unknown_efforts_alphabetically():
    df = verified([
        ("same-len", "medium", 0, 50, True), ("same-len", "low", 0, 50, True),
        ("same-effort", "medium", 1, 40, True), ("same-effort", "medium", 0, 40, True),
        ("known-first", "none", 0, 30, True), ("known-first", "high", 0, 30, True),
        ("alphabetical", "none", 0, 30, True), ("alphabetical", "alpha", 0, 30, True),
    ])
    selected, _ = select_responses(df, SelectConfig())
    assert picks(selected) == {
        "same-len": "same-len/low/0",
        "same-effort": "same-effort/medium/0",
        "known-first": "known-first/high/0",
        "alphabetical": "alphabetical/alpha/0",
    }


def test_problems_without_a_correct_response_are_dropped_and_counted():
    df = verified([
        ("p1", "low", 0, 10, True, "easy"), ("p1", "high", 0, 30, True, "easy"),
        ("p2", "low", 0, 20, False, "hard"), ("p2", "high", 0, 90, False, "hard"),
        ("p3", "low", 0, 40, False, "hard"), ("p3", "high", 0, 60, True, "hard"),
    ])
    selected, summary = select_responses(df, SelectConfig())
    assert selected["problem_id"].tolist() == ["p1", "p3"]
    assert summary["problems_in"] == 3
    assert summary["kept"] == 2
    assert summary["dropped"] == 1
    assert summary["mean_tokens_selected"] == 35.0  # (10 + 60) / 2
    assert summary["mean_tokens_correct"] == pytest.approx(100 / 3, abs=0.05)  # 10, 30, 60
    assert summary["effort_share"] == {"low": 0.5, "high": 0.5}
    assert summary["effort_share_by_difficulty"] == {
        "easy": {"low": 1.0, "high": 0.0}, "hard": {"low": 0.0, "high": 1.0}}


def test_output_columns_follow_the_selected_contract_and_keep_extras():
    df = verified([("p1", "low", 3, 10, True), ("p2", "high", 0, 20, True, None)],
                  source=["gsm8k", "math"])
    selected, summary = select_responses(df, SelectConfig())
    assert list(selected.columns) == [*SELECTED_COLUMNS, "difficulty", "sample_idx", "source"]
    assert selected["sample_idx"].tolist() == [3, 0]
    assert selected["source"].tolist() == ["gsm8k", "math"]
    assert summary["effort_share_by_difficulty"]["unknown"] == {"low": 0.0, "high": 1.0}
    assert to_table(selected, "selected").num_rows == 2  # passes the artifact schema check


def test_selection_does_not_depend_on_row_order():
    df = verified([(f"p{i % 7}", ("low", "medium", "high")[i % 3], i, (i * 37) % 11, i % 4 != 0)
                   for i in range(60)])
    shuffled = df.sample(frac=1.0, random_state=3)
    for policy in ("shortest", "random", "laser-d"):
        cfg = SelectConfig(policy=policy, seed=5)
        a = select_responses(df, cfg)[0].sort_values("problem_id").reset_index(drop=True)
        b = select_responses(shuffled, cfg)[0].sort_values("problem_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)


def many_correct(n_problems: int = 40) -> pd.DataFrame:
    """Every problem: 6 correct responses of distinct lengths and 1 incorrect short one."""
    rows = []
    for p in range(n_problems):
        for i, effort in enumerate(("low", "low", "medium", "medium", "high", "high")):
            rows.append((f"p{p}", effort, i, 100 + 10 * i + p, True))
        rows.append((f"p{p}", "low", 9, 5, False))
    return verified(rows)


def test_random_is_deterministic_per_seed_and_varies_with_the_seed():
    df = many_correct()
    first, _ = select_responses(df, SelectConfig(policy="random", seed=1))
    again, _ = select_responses(df, SelectConfig(policy="random", seed=1))
    other, _ = select_responses(df, SelectConfig(policy="random", seed=2))
    pd.testing.assert_frame_equal(first, again)
    assert (first["policy"] == "random").all()
    assert (first["n_tokens"] >= 100).all()  # never the short incorrect response
    assert (first["response"] != other["response"]).sum() > 10  # 40 problems, 1/6 same by chance
    shortest, _ = select_responses(df, SelectConfig())
    assert (first["response"] != shortest["response"]).sum() > 10


def test_laser_buckets_use_pass_rate_thresholds_inclusively():
    df = verified([
        ("two-thirds", "low", 0, 1, True), ("two-thirds", "low", 1, 1, True),
        ("two-thirds", "low", 2, 1, False),
        ("one-third", "low", 0, 1, True), ("one-third", "low", 1, 1, False),
        ("one-third", "low", 2, 1, False),
        ("one-quarter", "low", 0, 1, True), ("one-quarter", "low", 1, 1, False),
        ("one-quarter", "low", 2, 1, False), ("one-quarter", "low", 3, 1, False),
    ])
    assert laser_buckets(SampleKeys.of(df)).tolist() == [0, 1, 2]  # easy, medium, hard


def laser_case() -> pd.DataFrame:
    """Easy: correct lengths 10 30 40 50 60 60 70 80 95 (N=5: 2nd smallest, 30 -> 50).
    Medium: 120 170 200 250 (N=2: 2nd smallest, 170 -> 200). Hard: 310 (N=1: 310 -> 350).
    """
    return verified([
        ("e1", "low", 0, 10, True), ("e1", "medium", 0, 40, True), ("e1", "high", 0, 95, True),
        ("e2", "low", 0, 30, True), ("e2", "medium", 0, 50, True), ("e2", "high", 0, 60, True),
        ("e3", "low", 0, 60, True), ("e3", "medium", 0, 70, True), ("e3", "high", 0, 80, True),
        ("m1", "low", 0, 20, False), ("m1", "low", 1, 30, False),
        ("m1", "medium", 0, 120, True), ("m1", "high", 0, 170, True),
        ("m2", "low", 0, 20, False), ("m2", "low", 1, 30, False),
        ("m2", "medium", 0, 200, True), ("m2", "high", 0, 250, True),
        ("h1", "low", 0, 10, False), ("h1", "low", 1, 20, False),
        ("h1", "medium", 0, 30, False), ("h1", "high", 0, 310, True),
        ("h2", "low", 0, 10, False), ("h2", "high", 0, 900, False),
    ])


def laser(alpha: float = 0.5, seed: int = 0) -> SelectConfig:
    return SelectConfig(policy="laser-d", seed=seed, laser=LaserConfig(alpha=alpha, length_step=50))


def test_laser_d_targets_per_bucket():
    selected, summary = select_responses(laser_case(), laser())
    assert summary["laser_targets"] == {"easy": 50, "medium": 200, "hard": 350}
    assert summary["laser_problems"] == {"easy": 3, "medium": 2, "hard": 2}
    assert summary["dropped"] == 1  # h2
    assert selected["problem_id"].tolist() == ["e1", "e2", "e3", "m1", "m2", "h1"]
    assert summary["laser_within_target"] == 5  # all but e3, whose correct ones are all > 50


def test_laser_d_prefers_responses_within_target_and_is_indifferent_inside_it():
    within = {"e1": {"e1/low/0", "e1/medium/0"}, "e2": {"e2/low/0", "e2/medium/0"},
              "m1": {"m1/medium/0", "m1/high/0"}, "m2": {"m2/medium/0"}, "h1": {"h1/high/0"}}
    seen: set[str] = set()
    for seed in range(12):
        chosen = picks(select_responses(laser_case(), laser(seed=seed))[0])
        for pid, allowed in within.items():
            assert chosen[pid] in allowed
        seen.update(chosen.values())
    # Not `shortest` in disguise: longer responses inside the target are picked too.
    assert {"e1/medium/0", "e2/medium/0", "m1/high/0"} & seen


def test_laser_d_without_length_bonus_is_the_random_policy():
    a, _ = select_responses(laser_case(), laser(alpha=0.0, seed=4))
    b, _ = select_responses(laser_case(), SelectConfig(policy="random", seed=4))
    assert picks(a) == picks(b)


def lucky_guess_case() -> pd.DataFrame:
    """guess: low right 1 time in 4 (short), medium right. skill: low right 3 in 4.
    luck-only: low right 1 in 4, medium and high wrong."""
    rows = [("guess", "low", i, 5, i == 2) for i in range(4)]
    rows += [("guess", "medium", 0, 60, True), ("guess", "high", 0, 90, False)]
    rows += [("skill", "low", i, 6 + i, i != 1) for i in range(4)]
    rows += [("skill", "medium", 0, 50, True), ("skill", "high", 0, 80, True)]
    rows += [("luck-only", "low", i, 5, i == 0) for i in range(4)]
    rows += [("luck-only", "medium", 0, 60, False), ("luck-only", "high", 0, 90, False)]
    return verified(rows)


def test_min_effort_accuracy_keeps_skill_and_drops_lucky_guesses():
    plain, _ = select_responses(lucky_guess_case(), SelectConfig())
    assert picks(plain) == {"guess": "guess/low/2", "skill": "skill/low/0", "luck-only": "luck-only/low/0"}
    selected, summary = select_responses(lucky_guess_case(), SelectConfig(min_effort_accuracy=0.75))
    # 3 of 4 passes 0.75 exactly; the guesses give way to the working or drop the problem.
    assert picks(selected) == {"guess": "guess/medium/0", "skill": "skill/low/0"}
    assert summary["dropped_unreliable"] == 1 and summary["dropped"] == 1
    assert summary["unreliable_excluded"] == 2  # guess/low/2 and luck-only/low/0
    assert summary["min_effort_accuracy"] == 0.75
    strict, _ = select_responses(lucky_guess_case(), SelectConfig(min_effort_accuracy=1.0))
    assert picks(strict) == {"guess": "guess/medium/0", "skill": "skill/medium/0"}


def test_min_effort_accuracy_narrows_random_and_laser_too():
    for policy in ("random", "laser-d"):
        for seed in range(5):
            selected, _ = select_responses(lucky_guess_case(),
                                           SelectConfig(policy=policy, seed=seed, min_effort_accuracy=0.75))
            assert picks(selected)["guess"] == "guess/medium/0"
            assert "luck-only" not in picks(selected)


def test_random_draws_an_effort_first_so_extra_samples_do_not_tilt_it():
    rows = []
    for p in range(400):
        rows += [(f"p{p}", "low", i, 10 + i, True) for i in range(4)]
        rows.append((f"p{p}", "high", 0, 100, True))
    selected, _ = select_responses(verified(rows), SelectConfig(policy="random", seed=3))
    low_share = (selected["effort"] == "low").mean()
    assert 0.42 < low_share < 0.58  # per sample it would be 0.8
    assert selected.loc[selected["effort"] == "low", "sample_idx"].nunique() == 4


def test_min_effort_accuracy_is_validated():
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValidationError, match="min_effort_accuracy"):
            SelectConfig(min_effort_accuracy=bad)


def test_laser_config_needs_every_bucket():
    with pytest.raises(ValidationError, match="easy, medium and hard"):
        LaserConfig(expected_correct={"easy": 5, "medium": 2})
    with pytest.raises(ValidationError, match="at least 1"):
        LaserConfig(expected_correct={"easy": 5, "medium": 2, "hard": 0})


def test_seed_low_rows_are_appended_once_per_problem():
    df = verified([("p1", "low", 0, 10, True), ("p2", "high", 0, 20, True)])
    seed = pd.DataFrame({
        "problem_id": ["s1", "s1", "s2", "p1"],
        "question": ["Q s1", "Q s1", "Q s2", "Q p1"],
        "answer": ["3", "3", "4", "1"],
        "response": ["s1 low", "s1 high", "s2 low", "p1 seed low"],
        "n_tokens": [5, 50, 6, 7],
        "effort": ["low", "high", "low", "low"],
    })
    selected, summary = select_responses(df, SelectConfig(), seed_low=seed)
    assert selected["response"].tolist() == ["p1/low/0", "p2/high/0", "s1 low", "s2 low"]
    assert selected["policy"].tolist() == ["shortest", "shortest", "seed-low", "seed-low"]
    assert selected["sample_idx"].tolist() == [0, 0, 0, 0]
    assert selected["difficulty"].isna().tolist() == [False, False, True, True]
    assert summary["seed_low_added"] == 2
    assert summary["seed_low_skipped"] == 1  # p1 is already selected
    assert summary["kept"] == 2  # the policy's own figures leave the seed rows out
    assert to_table(selected, "selected").num_rows == 4


def test_all_incorrect_gives_an_empty_selection():
    selected, summary = select_responses(verified([("p1", "low", 0, 10, False)]), SelectConfig())
    assert selected.empty
    assert list(selected.columns)[: len(SELECTED_COLUMNS)] == list(SELECTED_COLUMNS)
    assert summary["kept"] == 0 and summary["dropped"] == 1
    assert summary["mean_tokens_selected"] is None
    assert summary["effort_share"] == {"low": 0.0}


def test_missing_column_is_a_user_error():
    df = verified([("p1", "low", 0, 10, True)]).drop(columns=["n_tokens"])
    with pytest.raises(UserError, match="'n_tokens' is missing"):
        select_responses(df, SelectConfig())
    seed = pd.DataFrame({"problem_id": ["s1"], "response": ["x"]})
    with pytest.raises(UserError, match="seed set: column 'question'"):
        select_responses(verified([("p1", "low", 0, 10, True)]), SelectConfig(), seed_low=seed)


def test_sample_keys_rank_efforts_in_effort_order():
    keys = SampleKeys.of(verified([("p", "none", 0, 1, True), ("p", "high", 0, 1, True),
                                   ("p", "low", 0, 1, True)]))
    assert keys.efforts == ["low", "high", "none"]
    assert np.array_equal(keys.effort, [2, 1, 0])
