"""LASER's rewards (Liu et al. 2025, hkust-nlp/Laser), pure functions others can script.

Their definitions, kept exactly (verl/utils/reward_score/length_penalty.py, constants.py,
compute_unique_tokens.py):

- base reward: +1 correct, -0.5 wrong, -1 no answer found;
- `laser`: +alpha for a correct response with at most `target` tokens (one fixed target);
- `laser-d`: the same with the target of the response's difficulty bucket, a bucket being
  decided by the share of its prompt's group that is correct;
- `laser-de`: also +alpha for a wrong response longer than its target unless it loops
  (token n-gram repetition): explore longer where the model fails;
- the LASER-D targets: per bucket, the smallest candidate length L with
  int(coverage(L) * lower_n) >= expected_correct over the monitor set.

One departure, from the issue's API: a bucket whose no candidate qualifies gets the largest
candidate, where their code takes the longest response of the batch. Their monitor also cuts
buckets at accuracy <= 1/3 / <= 2/3 while their reward cuts at < 1/3 / < 2/3; here both use
`difficulty_buckets` (the reward's cut).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from numbers import Integral

import pandas as pd

KINDS = ("accuracy", "laser", "laser-d", "laser-de")
BUCKETS = ("easy", "medium", "hard")
CORRECT, WRONG, NO_ANSWER = 1.0, -0.5, -1.0


def base_reward(correct: bool | None) -> float:
    """+1 correct, -0.5 wrong, -1 no answer (None)."""
    if correct is None:
        return NO_ANSWER
    return CORRECT if correct else WRONG


def length_rewards(kind: str, correct: Sequence[bool | None], n_tokens: Sequence[int],
                   targets: int | Sequence[int] | None, alpha: float = 0.5,
                   repetitive: Sequence[bool | None] | None = None) -> list[float]:
    """One reward per response. `targets`: one target for all, or one per response (LASER-D:
    its bucket's); unused by `accuracy`. `repetitive[i]` is read only where LASER-DE would pay a
    long wrong response (None there counts as not repetitive)."""
    if kind not in KINDS:
        raise ValueError(f"reward kind {kind!r}: expected one of {', '.join(KINDS)}")
    n = len(correct)
    if len(n_tokens) != n:
        raise ValueError(f"{len(n_tokens)} token counts for {n} responses")
    rewards = [base_reward(c) for c in correct]
    if kind == "accuracy":
        return rewards
    per_row = [int(targets)] * n if isinstance(targets, Integral) else list(targets or [])
    if len(per_row) != n:
        raise ValueError(f"reward kind {kind!r} needs one target, or one per response")
    if kind == "laser-de" and repetitive is None:
        raise ValueError("reward kind 'laser-de' needs `repetitive`")
    for i in range(n):
        if correct[i] is True and n_tokens[i] <= per_row[i]:
            rewards[i] += alpha
        elif (kind == "laser-de" and correct[i] is False and n_tokens[i] > per_row[i]
              and not repetitive[i]):
            rewards[i] += alpha
    return rewards


def bucket_of(accuracy: float) -> str:
    """easy >= 2/3, medium in [1/3, 2/3), hard < 1/3 (LASER-D's reward-time bands)."""
    if accuracy >= 2 / 3:
        return "easy"
    if accuracy >= 1 / 3:
        return "medium"
    return "hard"


def difficulty_buckets(accuracy_per_problem: Mapping[str, float] | pd.Series) -> dict[str, str]:
    """problem_id -> easy | medium | hard, from the share of its rollouts that are correct."""
    items = accuracy_per_problem.items()
    return {problem_id: bucket_of(float(accuracy)) for problem_id, accuracy in items}


def group_accuracy(problem_ids: Sequence[str], correct: Sequence[bool | None]) -> dict[str, float]:
    """Share of each problem's responses that are correct (no answer counts as not correct)."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for problem_id, c in zip(problem_ids, correct, strict=True):
        hits[problem_id][0] += c is True
        hits[problem_id][1] += 1
    return {problem_id: right / total for problem_id, (right, total) in hits.items()}


def lower_n(bucket: str, n_rollouts: int) -> int:
    """How many of a prompt's rollouts a bucket guarantees correct: int(n*2/3), int(n/3), 1."""
    return {"easy": int(n_rollouts * 2 / 3), "medium": int(n_rollouts * 1 / 3), "hard": 1}[bucket]


def length_thresholds(lower: int, upper: int, interval: int) -> list[int]:
    """Candidate targets, LASER's get_length_threshold: lower, lower + interval, ... up to
    `upper`; a lower bound under one interval is followed by the multiples of the interval.
    (Theirs writes 1024 for that interval, the only one they use; at our short lengths a
    literal 1024 would leave one candidate.)"""
    if lower < interval:
        return [lower, *range(interval, upper + interval, interval)]
    return list(range(lower, upper + interval, interval))


def coverage(lengths: Sequence[int], threshold: int) -> float:
    """Share of `lengths` at most `threshold` (0 for none)."""
    return sum(1 for n in lengths if n <= threshold) / len(lengths) if len(lengths) else 0.0


def laser_d_targets(monitor: pd.DataFrame, n_rollouts: int, thresholds: Sequence[int],
                    expected_correct: int = 1) -> dict[str, int]:
    """Per bucket, the smallest threshold L with int(coverage(L) * lower_n) >= expected_correct,
    coverage over all that bucket's monitor responses (correct or not); none: the largest.
    `monitor`: one row per rollout with `problem_id`, `bucket`, `n_tokens`."""
    if not thresholds:
        raise ValueError("no candidate target lengths")
    for column in ("problem_id", "bucket", "n_tokens"):
        if column not in monitor.columns:
            raise ValueError(f"monitor table: column '{column}' is missing")
    ordered = sorted(int(t) for t in thresholds)
    targets = {}
    for bucket in BUCKETS:
        lengths = monitor.loc[monitor["bucket"] == bucket, "n_tokens"].astype(int).tolist()
        need = lower_n(bucket, n_rollouts)
        targets[bucket] = next((t for t in ordered if int(coverage(lengths, t) * need) >= expected_correct),
                               ordered[-1])
    return targets


def repetition_start(tokens: Sequence[int], n: int = 4) -> int:
    """Where a loop starts, scanning from the end (LASER's
    detect_token_ngram_repetition_optimized_reversed); len(tokens) when none is found.

    n-gram size and repeat count follow the length: bigrams under 30 tokens, trigrams under 100,
    else `n`-grams; two close occurrences are a loop under 200 tokens, three from there. Close:
    apart by less than a third of the response. Then a repeated 2n-token pattern (ABAB)."""
    tokens = list(tokens)
    size = len(tokens)
    if size <= n * 2:
        return size
    if size < 30:
        n = 2
    elif size < 100:
        n = 3
    else:
        n = min(4, n)
    repeat_threshold = 2 if size < 200 else 3
    positions: dict[tuple, list[int]] = defaultdict(list)
    for i in range(size - n, -1, -1):
        ngram = tuple(tokens[i:i + n])
        if len(set(ngram)) == 1 and len(ngram) > 2:
            continue  # one token repeated: skipped, as theirs does
        positions[ngram].append(i)
        if len(positions[ngram]) >= repeat_threshold:
            seen = sorted(positions[ngram])
            for a, b in zip(seen, seen[1:], strict=False):
                if b - a < size // 3:
                    return min(seen)
    if size >= n * 4:
        patterns: dict[tuple, int] = {}
        for i in range(size - n * 2, -1, -1):
            pattern = tuple(tokens[i:i + n * 2])
            if pattern in patterns:
                return min(i, patterns[pattern])
            patterns[pattern] = i
    return size


def is_repetitive(tokens: Sequence[int], n: int = 4) -> bool:
    """Whether the response loops (LASER-DE withholds its exploration bonus then)."""
    return repetition_start(tokens, n) < len(tokens)
