"""Preference pairs for TOPS Iter-DPO, and their conversion to TRL's DPO format.

Per problem: chosen = the shortest correct response, rejected = the longest incorrect one;
plus (PairsConfig.add_short_incorrect) a second pair whose rejected is the shortest incorrect
response when it is shorter than the chosen one, so the model is not taught to under-think.
Vectorised like tops.select: one sort per role, then the first row of each problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset

from tops.artifacts import VERIFIED_COLUMNS
from tops.config import PairsConfig
from tops.select import SampleKeys, require_columns

LONGEST_INCORRECT = "longest_incorrect"
SHORTER_INCORRECT = "shorter_incorrect"
PAIR_KINDS = (LONGEST_INCORRECT, SHORTER_INCORRECT)


def build_pairs(
    verified: pd.DataFrame,
    cfg: PairsConfig,
    system_prompt: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Iter-DPO pairs: PAIR_COLUMNS + `difficulty` (+ `system_prompt` when one is given).

    Ties follow tops.select: shortest = fewest tokens, then lower effort, then lower
    sample_idx; longest = most tokens, then lower effort, then lower sample_idx. Problems
    with no correct or no incorrect response give no pair. The extra pair is skipped when
    the shortest incorrect response is the longest one too (a duplicate of the first pair).
    Rows are grouped by problem in order of first appearance, the main pair first.
    """
    require_columns(verified, list(VERIFIED_COLUMNS), "verified input")
    keys = SampleKeys.of(verified)
    correct_rows = np.flatnonzero(keys.correct)
    incorrect_rows = np.flatnonzero(~keys.correct)
    chosen = keys.by_problem(keys.shortest(correct_rows))
    longest_wrong = keys.by_problem(keys.longest(incorrect_rows))
    shortest_wrong = keys.by_problem(keys.shortest(incorrect_rows))

    paired = np.flatnonzero((chosen >= 0) & (longest_wrong >= 0))
    extra = paired[(keys.n_tokens[shortest_wrong[paired]] < keys.n_tokens[chosen[paired]])
                   & (shortest_wrong[paired] != longest_wrong[paired])]
    duplicates = int(((keys.n_tokens[longest_wrong[paired]] < keys.n_tokens[chosen[paired]])
                      & (shortest_wrong[paired] == longest_wrong[paired])).sum())
    if not cfg.add_short_incorrect:
        extra = extra[:0]

    problems = np.concatenate([paired, extra])
    kinds = np.concatenate([np.zeros(len(paired), dtype=np.int64), np.ones(len(extra), dtype=np.int64)])
    order = np.lexsort((kinds, problems))
    problems, kinds = problems[order], kinds[order]
    rejected = np.where(kinds == 0, longest_wrong[problems], shortest_wrong[problems])
    pairs = _pair_frame(verified, chosen[problems], rejected, kinds)
    if system_prompt is not None:
        pairs["system_prompt"] = system_prompt

    has_correct = np.bincount(keys.problem[correct_rows], minlength=keys.n_problems) > 0
    has_incorrect = np.bincount(keys.problem[incorrect_rows], minlength=keys.n_problems) > 0
    summary: dict[str, Any] = {
        "problems_in": keys.n_problems,
        "problems_paired": len(paired),
        "no_correct": int((~has_correct).sum()),
        "no_incorrect": int((~has_incorrect).sum()),
        "pairs": {kind: int((kinds == i).sum()) for i, kind in enumerate(PAIR_KINDS)},
        "shorter_incorrect_is_longest": duplicates,
        "mean_chosen_tokens": _mean(pairs["chosen_tokens"]),
        "mean_rejected_tokens": {kind: _mean(pairs.loc[pairs["pair_kind"] == kind, "rejected_tokens"])
                                 for kind in PAIR_KINDS},
    }
    return pairs, summary


def _pair_frame(verified: pd.DataFrame, chosen: np.ndarray, rejected: np.ndarray,
                kinds: np.ndarray) -> pd.DataFrame:
    def take(column: str, rows: np.ndarray) -> pd.Series:
        return verified[column].iloc[rows].reset_index(drop=True)

    return pd.DataFrame({
        "problem_id": take("problem_id", chosen),
        "question": take("question", chosen),
        "chosen": take("response", chosen),
        "rejected": take("response", rejected),
        "chosen_tokens": take("n_tokens", chosen).astype(np.int64),
        "rejected_tokens": take("n_tokens", rejected).astype(np.int64),
        "pair_kind": pd.Series(np.array(PAIR_KINDS, dtype=object)[kinds], dtype="str"),
        "difficulty": take("difficulty", chosen),
    })


def _mean(values: pd.Series) -> float | None:
    return round(float(values.mean()), 1) if len(values) else None


def to_trl_preference(pairs: pd.DataFrame, system_prompt: str | None = None) -> Dataset:
    """TRL's conversational preference format: prompt / chosen / rejected message lists.

    The system message is `system_prompt` when given, else each row's `system_prompt`
    column if the pairs have one, else left out (an empty prompt also leaves it out).
    """
    if system_prompt is not None:
        systems = [system_prompt] * len(pairs)
    elif "system_prompt" in pairs.columns:
        systems = pairs["system_prompt"].astype(object).where(pairs["system_prompt"].notna(), None).tolist()
    else:
        systems = [None] * len(pairs)
    prompts = [
        ([{"role": "system", "content": system}] if system else [])
        + [{"role": "user", "content": question}]
        for system, question in zip(systems, pairs["question"].tolist(), strict=True)
    ]
    return Dataset.from_dict({
        "prompt": prompts,
        "chosen": [[{"role": "assistant", "content": text}] for text in pairs["chosen"].tolist()],
        "rejected": [[{"role": "assistant", "content": text}] for text in pairs["rejected"].tolist()],
    })
