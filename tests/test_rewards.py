"""LASER's rewards against hand-computed cases (tops/rewards.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from tops.rewards import (
    difficulty_buckets,
    group_accuracy,
    is_repetitive,
    laser_d_targets,
    length_rewards,
    length_thresholds,
    repetition_start,
)

# correct, wrong, no answer; each short (10 tokens) and long (30 tokens) against a target of 20
CORRECT = [True, True, False, False, None, None]
TOKENS = [10, 30, 10, 30, 10, 30]


def test_accuracy_is_the_base_reward_only():
    assert length_rewards("accuracy", CORRECT, TOKENS, None) == [1.0, 1.0, -0.5, -0.5, -1.0, -1.0]


@pytest.mark.parametrize("kind", ["laser", "laser-d"])
def test_laser_pays_alpha_to_correct_responses_within_target(kind):
    assert length_rewards(kind, CORRECT, TOKENS, 20) == [1.5, 1.0, -0.5, -0.5, -1.0, -1.0]
    assert length_rewards(kind, CORRECT, TOKENS, 20, alpha=0.2) == [1.2, 1.0, -0.5, -0.5, -1.0, -1.0]


def test_exactly_the_target_counts_as_within():
    assert length_rewards("laser", [True, True], [20, 21], 20) == [1.5, 1.0]
    # laser-de: a wrong response exactly at the target is not "longer than" it
    assert length_rewards("laser-de", [False, False], [20, 21], 20, repetitive=[False, False]) == [-0.5, 0.0]


def test_laser_de_pays_long_wrong_responses_that_do_not_loop():
    rewards = length_rewards("laser-de", CORRECT, TOKENS, 20, repetitive=[False] * 6)
    assert rewards == [1.5, 1.0, -0.5, 0.0, -1.0, -1.0]  # no answer is never paid
    looping = length_rewards("laser-de", CORRECT, TOKENS, 20, repetitive=[False, False, False, True, False, False])
    assert looping[3] == -0.5


def test_targets_per_response():
    # the same 30-token correct response: within a hard prompt's 40, past an easy prompt's 20
    assert length_rewards("laser-d", [True, True], [30, 30], [40, 20]) == [1.5, 1.0]
    with pytest.raises(ValueError, match="one target"):
        length_rewards("laser-d", [True, True], [30, 30], [40])
    with pytest.raises(ValueError, match="repetitive"):
        length_rewards("laser-de", [True], [30], 20)
    with pytest.raises(ValueError, match="reward kind"):
        length_rewards("length", [True], [30], 20)


def test_buckets_at_their_boundaries():
    buckets = difficulty_buckets({"a": 1.0, "b": 2 / 3, "c": 0.6, "d": 1 / 3, "e": 0.3, "f": 0.0})
    assert buckets == {"a": "easy", "b": "easy", "c": "medium", "d": "medium", "e": "hard", "f": "hard"}
    # from rollouts: 4 of 6 correct is exactly 2/3; a missing answer is not correct
    accuracy = group_accuracy(["p"] * 6 + ["q"] * 3, [True] * 4 + [False, None] + [True, None, None])
    assert difficulty_buckets(accuracy) == {"p": "easy", "q": "medium"}


def test_thresholds_follow_their_get_length_threshold():
    assert length_thresholds(1024, 4096, 1024) == [1024, 2048, 3072, 4096]
    assert length_thresholds(512, 3072, 1024) == [512, 1024, 2048, 3072]
    assert length_thresholds(2048, 4096, 1024) == [2048, 3072, 4096]
    assert length_thresholds(16, 96, 32) == [16, 32, 64, 96]  # the same rule at short lengths


def _monitor(rows: dict[str, list[int]]) -> pd.DataFrame:
    return pd.DataFrame([{"problem_id": f"{b}{i}", "bucket": b, "n_tokens": n}
                         for b, lengths in rows.items() for i, n in enumerate(lengths)])


def test_targets_from_a_small_monitor_table():
    # 6 rollouts per prompt: lower_n is 4 (easy), 2 (medium), 1 (hard).
    monitor = _monitor({
        # easy: coverage(10) = 1/4 -> int(1.0) = 1 >= 1
        "easy": [10, 20, 30, 40],
        # medium: coverage(10) = 1/4 -> int(0.5) = 0; coverage(20) = 2/4 -> int(1.0) = 1
        "medium": [10, 20, 30, 40],
        # hard: needs every response covered (lower_n 1): 40 is past the last threshold -> largest
        "hard": [10, 20, 30, 45],
    })
    assert laser_d_targets(monitor, 6, [10, 20, 30, 40]) == {"easy": 10, "medium": 20, "hard": 40}
    # expecting two correct: easy needs coverage 1/2 (20); medium 4/4 (40); hard never -> largest
    assert laser_d_targets(monitor, 6, [10, 20, 30, 40], expected_correct=2) == {
        "easy": 20, "medium": 40, "hard": 40}
    # thresholds in any order; a bucket with no monitor rows gets the largest
    assert laser_d_targets(_monitor({"easy": [5]}), 8, [40, 10]) == {"easy": 10, "medium": 40, "hard": 40}


def test_coverage_counts_every_response_of_the_bucket():
    # 8 rollouts: easy lower_n = 5. 3 of 8 within 10 -> int(3/8 * 5) = 1.
    monitor = _monitor({"easy": [5, 6, 7, 50, 50, 50, 50, 50]})
    assert laser_d_targets(monitor, 8, [10, 50])["easy"] == 10
    # 1 of 8 within 10 -> int(0.625) = 0; all within 50 -> 5
    monitor = _monitor({"easy": [5, 50, 50, 50, 50, 50, 50, 50]})
    assert laser_d_targets(monitor, 8, [10, 50])["easy"] == 50


def test_repetition_detector():
    assert not is_repetitive(list(range(120)))  # no n-gram twice
    # a 4-gram three times close together in a long response: the loop starts at its first copy
    loop = list(range(300)) + [1000, 1001, 1002, 1003] * 3
    assert repetition_start(loop) == 300 and is_repetitive(loop)
    # short responses: two copies of a bigram are enough when closer than a third of the response
    assert repetition_start([1, 2, 1, 2, 5, 6, 7, 8, 9, 10, 11]) == 0
    assert repetition_start([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]) == 11  # 9 apart in 11 tokens: not a loop
    # one token repeated on its own is skipped by the n-gram pass, caught as a repeated pattern
    assert repetition_start(list(range(40)) + [7] * 20) < 60
    assert repetition_start([1, 2, 3]) == 3  # too short to judge
