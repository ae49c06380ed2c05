"""Confidence intervals by resampling held-out problems.

Which problems are drawn for evaluation moves accuracy more than the k samples per problem do:
on the demo, a second 90-problem set reversed the order of TOPS and high effort. Resampling the
problems (within each difficulty, as the eval set is drawn; the same draws for every model, so
differences between models are paired) puts that noise into the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

System = tuple[str, str]  # (model, effort)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_problems: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def per_problem_accuracy(evals: pd.DataFrame) -> pd.DataFrame:
    """Rows: (difficulty, problem_id); columns: (model, effort); values: share of seeds correct."""
    frame = evals.assign(difficulty=evals["difficulty"].fillna("all"), correct=evals["correct"].astype(float))
    return frame.pivot_table(index=["difficulty", "problem_id"], columns=["model", "effort"], values="correct",
                             aggfunc="mean")


def _resample_rows(strata: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_rows) row indices: each row redrawn with replacement within its stratum."""
    rng = np.random.default_rng(seed)
    rows = np.empty((n_resamples, len(strata)), dtype=np.int64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        rows[:, members] = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
    return rows


def _interval(values: np.ndarray, draws: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return Interval(float(np.nanmean(values)), float(low), float(high), int(np.isfinite(values).sum()))


def accuracy_intervals(evals: pd.DataFrame, n_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> dict[System, Interval]:
    """Percentile bootstrap interval of each (model, effort)'s accuracy over problems."""
    table = per_problem_accuracy(evals)
    values = table.to_numpy()
    rows = _resample_rows(table.index.get_level_values("difficulty").to_numpy(), n_resamples, seed)
    draws = np.nanmean(values[rows], axis=1)  # (n_resamples, n_systems)
    return {tuple(system): _interval(values[:, i], draws[:, i], level) for i, system in enumerate(table.columns)}


def paired_difference(evals: pd.DataFrame, a: System, b: System, n_resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> Interval:
    """Accuracy of `a` minus accuracy of `b` on the problems both answered, with the problems
    resampled together: shared problem difficulty cancels, so this is tighter than two intervals."""
    table = per_problem_accuracy(evals)
    for system in (a, b):
        if system not in table.columns:
            raise KeyError(f"no eval rows for model {system[0]!r} at effort {system[1]!r}")
    both = table[[a, b]].dropna()
    diff = (both[a] - both[b]).to_numpy()
    rows = _resample_rows(both.index.get_level_values("difficulty").to_numpy(), n_resamples, seed)
    return _interval(diff, diff[rows].mean(axis=1), level)


def paired_difference_over_runs(evals_per_run: list[pd.DataFrame], a: System, b: System, n_resamples: int = 2000,
                                level: float = 0.95, seed: int = 0) -> tuple[Interval, list[float]]:
    """`a` minus `b` over several whole-loop runs (each its own seed, training and held-out problems):
    the mean of the runs' paired differences, and an interval that resamples the runs and, inside
    each drawn run, its problems within each difficulty, so both the loop's spread and the draw of
    problems are in it. Also returns each run's own difference."""
    per_run = []
    for evals in evals_per_run:
        table = per_problem_accuracy(evals)
        for system in (a, b):
            if system not in table.columns:
                raise KeyError(f"no eval rows for model {system[0]!r} at effort {system[1]!r}")
        both = table[[a, b]].dropna()
        per_run.append(((both[a] - both[b]).to_numpy(), both.index.get_level_values("difficulty").to_numpy()))
    if not per_run:
        raise ValueError("no runs to compare")
    # (runs, n_resamples): each run's mean difference over its resampled problems
    run_draws = np.stack([diff[_resample_rows(strata, n_resamples, seed + i)].mean(axis=1)
                          for i, (diff, strata) in enumerate(per_run)])
    picks = np.random.default_rng(seed).integers(0, len(per_run), size=(n_resamples, len(per_run)))
    draws = run_draws[picks, np.arange(n_resamples)[:, None]].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    means = [float(diff.mean()) for diff, _ in per_run]
    return Interval(float(np.mean(means)), float(low), float(high), sum(len(d) for d, _ in per_run)), means
