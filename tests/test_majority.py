"""maj@k against hand-computed cases: a clear majority, ties (the answer given first wins), all
answers different, no answers, k larger than the samples; then in the tables and `compare`."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tops.checkers import get_checker
from tops.evaluate import maj_at_k, majority_correct, metrics, metrics_table


def test_majority_of_one_problem():
    # 7, 7, 8: 7 wins (and 7 was right)
    assert majority_correct(["7", "7", "8"], [True, True, False]) is True
    # the majority is wrong even though one sample is right
    assert majority_correct(["8", "7", "8"], [False, True, False]) is False
    # tie 1-1: the answer whose first vote came first (seed order) wins
    assert majority_correct(["8", "7"], [False, True]) is False
    assert majority_correct(["7", "8"], [True, False]) is True
    # tie 2-2 with the later answer's votes first in count: still the first vote decides
    assert majority_correct(["5", "6", "6", "5"], [True, False, False, True]) is True
    # all different: a tie of ones, the first answer
    assert majority_correct(["1", "2", "3"], [False, True, False]) is False
    assert majority_correct(["3", "2", "1"], [True, False, False]) is True
    # no answer casts no vote: one vote beats two abstentions
    assert majority_correct([None, None, "4"], [False, False, True]) is True
    assert majority_correct([None, float("nan")], [False, False]) is False
    # an answer judged right once and timed out once is the right answer
    assert majority_correct(["9", "9", "2"], [False, True, False]) is True


def _rows(answers: dict[str, list[tuple[str | None, bool]]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"model": "m", "effort": "none", "problem_id": p, "seed": seed, "answer_key": key, "correct": ok,
         "n_tokens": 10, "difficulty": None, "benchmark": "b"}
        for p, samples in answers.items() for seed, (key, ok) in enumerate(samples)])


def test_maj_at_k_over_problems_and_k_larger_than_the_samples():
    evals = _rows({
        "a": [("7", True), ("7", True), ("8", False), ("8", False)],  # k=4: tie 2-2, 7 first -> right
        "b": [("1", False), ("2", True), ("2", True), ("3", False)],  # k=4: 2 -> right; k=2: tie, 1 -> wrong
        "c": [(None, False), ("5", False), (None, False), ("6", True)],  # k=4: tie 5/6, 5 first -> wrong
        "d": [("4", True)],  # only one sample: left out of maj@2 and maj@4
    })
    assert maj_at_k(evals, 4) == pytest.approx(2 / 3)  # a, b right; c wrong; d left out
    # k=2 takes the first two samples by seed: a 7,7 right; b 1,2 tie -> 1 wrong; c None,5 -> 5 wrong
    assert maj_at_k(evals, 2) == pytest.approx(1 / 3)
    assert maj_at_k(evals, 1) == pytest.approx(2 / 4)  # a right, b wrong, c no answer, d right
    assert math.isnan(maj_at_k(evals, 5))  # k larger than every problem's samples: not reported
    shuffled = evals.sample(frac=1, random_state=0)  # row order does not matter, seed order does
    assert maj_at_k(shuffled, 4) == maj_at_k(evals, 4) and maj_at_k(shuffled, 2) == maj_at_k(evals, 2)


def test_maj_at_k_in_metrics_and_the_table():
    evals = _rows({"a": [("7", True), ("7", True), ("8", False)], "b": [("1", False), ("1", False), ("2", True)]})
    row = metrics(evals, ["model"], pass_ks=[3], budgets=[], maj_ks=[1, 3]).iloc[0]
    assert row["maj@3"] == pytest.approx(0.5) and row["maj@1"] == pytest.approx(0.5)
    assert row["pass@3"] == pytest.approx(1.0)
    table = metrics_table(evals, budgets=[])  # maj@k defaults to pass@k's k: the samples per problem
    header, _, first = table.splitlines()[:3]
    cells = dict(zip(header.strip("| ").split(" | "), first.strip("| ").split(" | "), strict=True))
    assert cells["pass@3"] == "1.000" and cells["maj@3"] == "0.500"
    old = evals.drop(columns=["answer_key"]).assign(pred=["7", "7.", "8", "x", "x", "y"])  # rows of an older run
    assert maj_at_k(old, 3) == pytest.approx(0.5)


def test_vote_keys_normalise_spellings():
    math_key, choice_key = get_checker("math").vote_key, get_checker("choice").vote_key
    assert math_key("1,000") == math_key("1000.0") == math_key("$1000$")
    assert math_key("\\frac{1}{2}") == math_key("0.5") != math_key("0.6")
    assert math_key("\\dfrac{\\pi}{2}") == math_key("\\frac{\\pi}{2}")
    assert choice_key("C") == "C"


def test_compare_reports_maj_at_k(tmp_path):
    from tops.compare import RunResult, compare_markdown

    def run(name: str, second: str) -> RunResult:
        evals = _rows({"a": [("7", True), (second, second == "7"), ("8", False)]}).assign(difficulty="easy")
        return RunResult(name, evals, None, ["easy"], seed=0)

    text = compare_markdown([run("r0", "7"), run("r1", "9")])  # r0: 7 wins; r1: tie of ones, 7 first
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    row = next(line for line in text.splitlines() if line.startswith("| m |"))
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | "), strict=True))
    assert cells["maj@3 (mean)"] == "1.000"


def test_maj_k_config_is_checked_against_the_samples():
    from pathlib import Path

    from tops.config import load_config
    from tops.errors import UserError

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    assert load_config(smoke, ["eval.seeds=[0, 1, 2]", "eval.maj_k=[1, 3]"]).eval.maj_k == [1, 3]
    with pytest.raises(UserError, match=r"eval\.maj_k: k cannot exceed the 2 samples"):
        load_config(smoke, ["eval.seeds=[0, 1]", "eval.maj_k=[3]"])
