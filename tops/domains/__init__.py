"""Problem sources ("domains"): each turns its config into a problems frame
(problem_id, question, answer, difficulty) with the same contract."""

from __future__ import annotations

import pandas as pd

from tops.config import ProblemsConfig
from tops.errors import UserError


def load_problems(cfg: ProblemsConfig, n: int | None = None, seed: int | None = None,
                  exclude: set[str] | frozenset[str] = frozenset()) -> pd.DataFrame:
    """`n` problems from the configured source, deterministic for a given seed; ids in
    `exclude` (problems used for seed data or training) are never drawn."""
    n = cfg.n if n is None else n
    if n < 1:
        raise UserError(f"the number of problems must be at least 1 (got {n})")
    seed = cfg.seed if seed is None else seed
    source = cfg.source
    if source.kind == "arith":
        from tops.domains.arith import make_problems

        return make_problems(source, n=n, seed=seed, exclude=exclude)
    from tops.domains.tabular import load_table_problems

    return load_table_problems(source, n=n, seed=seed, exclude=exclude)
