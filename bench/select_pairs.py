"""Time select (each policy) and pairs on one million synthetic verified samples.

Goal: each call handles 1,000,000 rows in at most 10 s. Run: .venv/bin/python bench/select_pairs.py
The synthetic set has 125,000 problems x 3 efforts with 3/3/2 samples (low/medium/high);
lengths grow with effort and accuracy falls with difficulty, as in the paper's tag model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from tops.config import PairsConfig, SelectConfig
from tops.pairs import build_pairs
from tops.select import select_responses

GOAL_SECONDS = 10.0
EFFORT_SAMPLES = (("low", 3, 400), ("medium", 3, 900), ("high", 2, 1600))  # name, samples, mean tokens
DIFFICULTY_ACCURACY = {"easy": 0.9, "medium": 0.6, "hard": 0.25}


def synthetic_verified(n_problems: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    per_problem = sum(n for _, n, _ in EFFORT_SAMPLES)
    efforts = np.concatenate([[name] * n for name, n, _ in EFFORT_SAMPLES])
    sample_idx = np.concatenate([np.arange(n) for _, n, _ in EFFORT_SAMPLES])
    mean_tokens = np.concatenate([[tokens] * n for _, n, tokens in EFFORT_SAMPLES])
    problem = np.repeat(np.arange(n_problems), per_problem)
    difficulty_names = np.array(list(DIFFICULTY_ACCURACY))
    difficulty = difficulty_names[rng.integers(0, len(difficulty_names), n_problems)][problem]
    accuracy = pd.Series(difficulty).map(DIFFICULTY_ACCURACY).to_numpy()
    n_rows = len(problem)
    n_tokens = rng.gamma(4.0, np.tile(mean_tokens, n_problems) / 4.0).astype(np.int64) + 1
    correct = rng.random(n_rows) < accuracy
    ids = np.char.add("p", np.arange(n_problems).astype(str))
    return pd.DataFrame({
        "problem_id": ids[problem],
        "question": np.char.add("What is ", ids)[problem],
        "answer": "42",
        "difficulty": difficulty,
        "effort": np.tile(efforts, n_problems),
        "sample_idx": np.tile(sample_idx, n_problems),
        "response": np.char.add("response ", np.arange(n_rows).astype(str)),
        "n_tokens": n_tokens,
        "finish_reason": "stop",
        "pred": np.where(correct, "42", "41"),
        "correct": correct,
        "verify_status": "ok",
    }).astype({c: "str" for c in ("problem_id", "question", "answer", "difficulty", "effort",
                                  "response", "finish_reason", "pred", "verify_status")})


def timed(label: str, fn, n_rows: int) -> tuple[float, int]:
    start = time.perf_counter()
    out, _ = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<18} {seconds:6.2f} s  {n_rows / seconds:12,.0f} rows/s  -> {len(out):,} rows "
          f"{'ok' if seconds <= GOAL_SECONDS else 'OVER GOAL'}")
    return seconds, len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=125_000)
    args = parser.parse_args()
    verified = synthetic_verified(args.problems)
    n_rows = len(verified)
    print(f"{n_rows:,} verified rows, {args.problems:,} problems (goal: <= {GOAL_SECONDS:.0f} s each)")
    worst = 0.0
    for policy in ("shortest", "random", "laser-d"):
        cfg = SelectConfig(policy=policy)
        seconds, _ = timed(f"select {policy}", lambda cfg=cfg: select_responses(verified, cfg), n_rows)
        worst = max(worst, seconds)
    seconds, _ = timed("pairs", lambda: build_pairs(verified, PairsConfig()), n_rows)
    worst = max(worst, seconds)
    print(f"slowest {worst:.2f} s: goal {'met' if worst <= GOAL_SECONDS else 'NOT met'}")


if __name__ == "__main__":
    main()
