"""Selection: one training response per problem out of the verified samples.

Policies (SelectConfig.policy):
- `shortest`: TOPS. The correct response with the fewest tokens, over all efforts and samples.
- `random`: the paper's baseline. A correct response of a randomly drawn effort (seeded hash).
- `laser-d`: LASER-D's difficulty-aware length budget used as a selection score.

`min_effort_accuracy` narrows the candidates of every policy to the correct responses of
efforts that solved at least that share of their samples of the problem. Why: "shortest
correct" rewards lucky guesses. A 135M model answering a long chain directly is right a few
percent of the time (small answer space), and one such guess beats every correct working
on length; sampling the cheap low effort several times tells a guess from a skill.

Everything is vectorised: each policy is one lexsort of integer keys followed by taking the
first row of each problem, so a million samples take about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tops.artifacts import SELECTED_COLUMNS, VERIFIED_COLUMNS
from tops.config import EFFORT_ORDER, LaserConfig, SelectConfig
from tops.errors import UserError

# Verification columns that say nothing once a response is selected (all selected are correct).
VERIFY_ONLY_COLUMNS = ("finish_reason", "pred", "correct", "verify_status")
SEED_COLUMNS = ("problem_id", "question", "answer", "response", "n_tokens", "effort")
LASER_BUCKETS = ("easy", "medium", "hard")
UNKNOWN_DIFFICULTY = "unknown"


def require_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str], source: str) -> None:
    """Fail with one line naming the first missing column (a UserError: the input is wrong)."""
    for name in columns:
        if name not in df.columns:
            raise UserError(f"{source}: column '{name}' is missing")


def effort_sort_key(effort: str) -> tuple[int, str]:
    """low < medium < high, then efforts outside EFFORT_ORDER (e.g. "none") alphabetically."""
    if effort in EFFORT_ORDER:
        return EFFORT_ORDER.index(effort), ""
    return len(EFFORT_ORDER), effort


def first_per_problem(problem: np.ndarray, rows: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """The best of `rows` for each problem: smallest by `keys`, most significant key first.

    Returns row indices ordered by problem code (problems without a row in `rows` are absent).
    """
    sort_keys = [key[rows] for key in reversed(keys)] + [problem[rows]]
    ordered = rows[np.lexsort(sort_keys)]
    grouped = problem[ordered]
    is_first = np.ones(len(ordered), dtype=bool)
    is_first[1:] = grouped[1:] != grouped[:-1]
    return ordered[is_first]


@dataclass(frozen=True)
class SampleKeys:
    """Integer sort keys of verified samples, computed once and shared by the policies."""

    problem: np.ndarray  # problem code, numbered in order of first appearance
    n_problems: int
    n_tokens: np.ndarray
    effort: np.ndarray  # rank by effort_sort_key
    sample_idx: np.ndarray
    correct: np.ndarray
    efforts: list[str]  # the input's efforts in rank order

    @classmethod
    def of(cls, verified: pd.DataFrame) -> SampleKeys:
        problem, problem_ids = pd.factorize(verified["problem_id"])
        effort_codes, effort_names = pd.factorize(verified["effort"])
        efforts = sorted(effort_names, key=effort_sort_key)
        rank_of_code = np.array([efforts.index(name) for name in effort_names], dtype=np.int64)
        return cls(
            problem=problem.astype(np.int64),
            n_problems=len(problem_ids),
            n_tokens=verified["n_tokens"].to_numpy(dtype=np.int64),
            effort=rank_of_code[effort_codes],
            sample_idx=verified["sample_idx"].to_numpy(dtype=np.int64),
            correct=verified["correct"].to_numpy(dtype=bool),
            efforts=efforts,
        )

    def shortest(self, rows: np.ndarray, *before: np.ndarray) -> np.ndarray:
        """Per problem, the best row by the `before` keys (if any), ties by the TOPS rule:
        fewest tokens, then lower effort, then lower sample_idx."""
        return first_per_problem(self.problem, rows, *before, self.n_tokens, self.effort,
                                 self.sample_idx)

    def longest(self, rows: np.ndarray) -> np.ndarray:
        """Per problem, the row with most tokens; ties go to the lower effort, then sample_idx."""
        return first_per_problem(self.problem, rows, -self.n_tokens, self.effort, self.sample_idx)

    def by_problem(self, rows: np.ndarray) -> np.ndarray:
        """Spread one-row-per-problem indices over all problem codes; -1 where a problem has none."""
        spread = np.full(self.n_problems, -1, dtype=np.int64)
        spread[self.problem[rows]] = rows
        return spread


def random_keys(verified: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uint64 sort keys per sample: a draw per (seed, problem_id, effort), then one per
    sample within it.

    Sorting by both picks an effort uniformly among those with a candidate, then one of its
    samples, so an effort sampled 4 times is not 4 times as likely as one sampled once.
    Hashing the sample's identity instead of drawing from a generator makes the choice
    independent of row order and of which other rows are present.
    """
    identity = pd.DataFrame({
        "seed": np.full(len(verified), seed, dtype=np.int64),
        "problem_id": verified["problem_id"].to_numpy(),
        "effort": verified["effort"].to_numpy(),
    })
    per_effort = pd.util.hash_pandas_object(identity, index=False).to_numpy()
    identity["sample_idx"] = verified["sample_idx"].to_numpy(dtype=np.int64)
    per_sample = pd.util.hash_pandas_object(identity, index=False).to_numpy()
    return per_effort, per_sample


def reliable_efforts(keys: SampleKeys, min_accuracy: float) -> np.ndarray:
    """Per sample: did its (problem, effort) get at least `min_accuracy` of its samples right?"""
    group = keys.problem * len(keys.efforts) + keys.effort
    n = np.bincount(group, minlength=keys.n_problems * len(keys.efforts))
    n_correct = np.bincount(group, weights=keys.correct, minlength=len(n))
    # A small tolerance so that 3 of 4 passes 0.75 despite float rounding.
    return (n_correct[group] >= min_accuracy * n[group] - 1e-9)


def candidates(keys: SampleKeys, min_effort_accuracy: float | None) -> np.ndarray:
    """Per sample: may a policy select it? Correct, and from a reliable enough effort if asked."""
    if min_effort_accuracy is None:
        return keys.correct
    return keys.correct & reliable_efforts(keys, min_effort_accuracy)


def laser_buckets(keys: SampleKeys) -> np.ndarray:
    """Per problem, 0/1/2 = easy/medium/hard from its pass rate (>= 2/3, >= 1/3, < 1/3)."""
    n = np.bincount(keys.problem, minlength=keys.n_problems)
    n_correct = np.bincount(keys.problem, weights=keys.correct, minlength=keys.n_problems)
    # Integer comparisons so a pass rate of exactly 2/3 or 1/3 lands in the easier bucket.
    return np.where(3 * n_correct >= 2 * n, 0, np.where(3 * n_correct >= n, 1, 2))


def laser_targets(keys: SampleKeys, bucket: np.ndarray, cfg: LaserConfig) -> dict[str, int | None]:
    """Target length L_A,d per bucket: the smallest multiple of length_step with ECR >= 1.

    ECR = floor(P(len <= L | d) * N_d), P being the share of bucket d's *correct* responses
    that are at most L tokens long ("expected correct responses within L" when N_d correct
    responses are drawn). ECR >= 1 means at least ceil(n_d / N_d) of the n_d correct
    lengths are <= L, so L is the ceil(n_d / N_d)-th smallest correct length rounded up to
    the step: roughly the 20th percentile for easy (N=5), the median for medium (N=2) and
    the longest correct response for hard (N=1). A bucket without correct responses has no
    target (None).
    """
    row_bucket = bucket[keys.problem]
    targets: dict[str, int | None] = {}
    for index, name in enumerate(LASER_BUCKETS):
        lengths = keys.n_tokens[keys.correct & (row_bucket == index)]
        if len(lengths) == 0:
            targets[name] = None
            continue
        needed = -(-len(lengths) // cfg.expected_correct[name])
        kth = int(np.partition(lengths, needed - 1)[needed - 1])
        targets[name] = max(1, -(-kth // cfg.length_step)) * cfg.length_step
    return targets


def _laser_pick(verified: pd.DataFrame, keys: SampleKeys, candidate: np.ndarray,
                cfg: SelectConfig) -> tuple[np.ndarray, dict]:
    """Highest LASER score among correct responses: 1 + alpha if within the bucket's target.

    Equal scores are broken by the seeded random draw, not by length: with a length
    tie-break the shortest correct response always has the top score, and laser-d would be
    `shortest` again. A step reward is indifferent to length inside the budget, so any
    response within the target is as good as another.
    """
    bucket = laser_buckets(keys)
    targets = laser_targets(keys, bucket, cfg.laser)
    target_of_bucket = np.array([-1 if targets[name] is None else targets[name]
                                 for name in LASER_BUCKETS], dtype=np.int64)
    within = candidate & (keys.n_tokens <= target_of_bucket[bucket[keys.problem]])
    score = 1.0 + cfg.laser.alpha * within
    rows = keys.shortest(np.flatnonzero(candidate), -score, *random_keys(verified, cfg.seed))
    counts = np.bincount(bucket, minlength=len(LASER_BUCKETS))
    extra = {
        "laser_targets": targets,
        "laser_problems": {name: int(counts[i]) for i, name in enumerate(LASER_BUCKETS)},
        "laser_within_target": int(within[rows].sum()),
    }
    return rows, extra


def select_responses(
    verified: pd.DataFrame,
    cfg: SelectConfig,
    seed_low: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict]:
    """One response per problem by `cfg.policy`, plus the seed set's low-effort rows if given.

    Problems without a correct response are dropped (counted in the summary), and so are
    those whose only correct responses come from efforts below `cfg.min_effort_accuracy`
    (counted as `dropped_unreliable`). Ties between
    equally long responses go to the lower effort (low < medium < high < others
    alphabetically), then the lower sample_idx, so the result does not depend on row order.
    Output: SELECTED_COLUMNS, then `difficulty`, `sample_idx` and the input's extra columns;
    rows in order of each problem's first appearance, seed rows last (policy "seed-low";
    a seed problem already selected keeps its selected row). `cfg.add_seed_low` is the
    caller's switch for passing `seed_low`. The summary's figures describe the policy's own
    selection; seed rows are only counted (seed_low_added / seed_low_skipped).
    """
    require_columns(verified, list(VERIFIED_COLUMNS), "verified input")
    keys = SampleKeys.of(verified)
    correct_rows = np.flatnonzero(keys.correct)
    candidate = candidates(keys, cfg.min_effort_accuracy)
    candidate_rows = np.flatnonzero(candidate)
    policy_summary: dict[str, Any] = {}
    if cfg.min_effort_accuracy is not None:
        policy_summary = {
            "min_effort_accuracy": cfg.min_effort_accuracy,
            "unreliable_excluded": int(len(correct_rows) - len(candidate_rows)),
            "dropped_unreliable": len(np.unique(keys.problem[correct_rows]))
                                  - len(np.unique(keys.problem[candidate_rows])),
        }
    if cfg.policy == "shortest":
        rows = keys.shortest(candidate_rows)
    elif cfg.policy == "random":
        rows = keys.shortest(candidate_rows, *random_keys(verified, cfg.seed))
    else:
        rows, laser_summary = _laser_pick(verified, keys, candidate, cfg)
        policy_summary.update(laser_summary)

    selected = _selected_frame(verified, rows, cfg.policy)
    summary = {
        "policy": cfg.policy,
        "problems_in": keys.n_problems,
        "kept": len(rows),
        "dropped": keys.n_problems - len(rows),
        "mean_tokens_selected": _mean(keys.n_tokens[rows]),
        "mean_tokens_correct": _mean(keys.n_tokens[correct_rows]),
        **_effort_shares(selected, keys.efforts),
        **policy_summary,
    }
    if seed_low is not None:
        selected, summary["seed_low_added"], summary["seed_low_skipped"] = _append_seed_low(
            selected, seed_low)
    return selected, summary


def _selected_frame(verified: pd.DataFrame, rows: np.ndarray, policy: str) -> pd.DataFrame:
    chosen = verified.iloc[rows].drop(columns=list(VERIFY_ONLY_COLUMNS)).reset_index(drop=True)
    chosen["policy"] = policy
    leading = [*SELECTED_COLUMNS, "difficulty", "sample_idx"]
    return chosen[leading + [c for c in chosen.columns if c not in leading]]


def _append_seed_low(selected: pd.DataFrame, seed_low: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Append the seed set's low-effort responses, as the paper adds them to the SFT data."""
    require_columns(seed_low, SEED_COLUMNS, "seed set")
    low = seed_low[seed_low["effort"] == "low"]
    already = low["problem_id"].isin(selected["problem_id"])
    rows = low.loc[~already, [c for c in selected.columns if c in low.columns]].assign(policy="seed-low")
    if "sample_idx" not in rows.columns:
        rows["sample_idx"] = 0
    combined = pd.concat([selected, rows], ignore_index=True)[selected.columns]
    return combined, len(rows), int(already.sum())


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 1) if len(values) else None


def _effort_shares(selected: pd.DataFrame, efforts: list[str]) -> dict[str, Any]:
    """Share of each effort among the selection, overall and per labelled difficulty."""
    if selected.empty:
        return {"effort_share": dict.fromkeys(efforts, 0.0), "effort_share_by_difficulty": {}}
    overall = selected["effort"].value_counts(normalize=True).reindex(efforts, fill_value=0.0)
    by_difficulty = pd.crosstab(selected["difficulty"].astype(object).fillna(UNKNOWN_DIFFICULTY),
                                selected["effort"], normalize="index")
    by_difficulty = by_difficulty.reindex(columns=efforts, fill_value=0.0)
    return {
        "effort_share": {e: round(float(v), 4) for e, v in overall.items()},
        "effort_share_by_difficulty": {
            str(d): {e: round(float(v), 4) for e, v in row.items()}
            for d, row in by_difficulty.iterrows()
        },
    }
