"""Whole runs side by side: the spread of the loop itself.

One run's ± covers k samples of one set of trained models on one problem set. A run with another
`run.seed` draws new seed, training and held-out problems and retrains every model: the spread a
user sees when they run the loop themselves. This pools the runs' own artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from tops.artifacts import read_artifact
from tops.config import EFFORT_ORDER
from tops.errors import UserError
from tops.evaluate import default_ks, maj_at_k, ordered_difficulties, summarize
from tops.goals import checks_markdown, effort_shares, goal_checks, shape_checks
from tops.layout import SELECTED, RunLayout
from tops.report import plot_points


@dataclass
class RunResult:
    name: str
    evals: pd.DataFrame
    selected: pd.DataFrame | None
    difficulty_order: list[str] | None
    seed: int | None = None


def load_run(run_dir: Path) -> RunResult:
    """A finished run folder: its eval rows, its TOPS selection (without appended seed rows) and
    the difficulty order of its config."""
    run = RunLayout(run_dir)
    if not run.eval.exists():
        raise UserError(f"{run.dir}: no {run.eval.name} here; is this a finished `tops run` folder?")
    evals = read_artifact(run.eval, "eval")
    selected = None
    if run.published(SELECTED).exists():
        selected = read_artifact(run.published(SELECTED), "selected")
        selected = selected[selected["policy"] != "seed-low"]
    levels, seed = None, None
    if run.config.exists():
        config = yaml.safe_load(run.config.read_text()) or {}
        levels = list(config.get("problems", {}).get("source", {}).get("levels") or {}) or None
        seed = config.get("run", {}).get("seed")
    return RunResult(run.dir.name, evals, selected, levels, seed)


def _majority(evals: pd.DataFrame, table: pd.DataFrame, by: list[str]) -> list[float]:
    """maj@k (k = samples per problem) of each row of `table`, grouped by `by`; NaN with 1 sample."""
    ks = default_ks(evals)
    if not ks:
        return [float("nan")] * len(table)
    values = {key if isinstance(key, tuple) else (key,): maj_at_k(group, ks[0])
              for key, group in evals.groupby(by, dropna=False, sort=False)}
    return [values.get(tuple(row[c] for c in by), float("nan")) for _, row in table.iterrows()]


def per_run_table(runs: list[RunResult]) -> pd.DataFrame:
    """One row per run, model and effort: accuracy, maj@k (k = samples per problem) and mean
    tokens, overall and per difficulty."""
    parts = []
    for run in runs:
        overall = summarize(run.evals).assign(difficulty="all")
        overall["maj"] = _majority(run.evals, overall, ["model", "effort"])
        by_level = summarize(run.evals, ("model", "effort", "difficulty"))
        by_level["maj"] = _majority(run.evals, by_level, ["model", "effort", "difficulty"])
        parts.append(pd.concat([overall, by_level], ignore_index=True).assign(run=run.name))
    return pd.concat(parts, ignore_index=True)[["run", "model", "effort", "difficulty", "accuracy", "maj",
                                                 "mean_tokens"]]


def across_runs(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean over runs and the standard deviation over runs (population, as the seed spread is)."""
    grouped = per_run.groupby(["model", "effort", "difficulty"], dropna=False)
    table = grouped[["accuracy", "maj", "mean_tokens"]].mean()
    table["acc_std"] = grouped["accuracy"].std(ddof=0)
    table["tokens_std"] = grouped["mean_tokens"].std(ddof=0)
    table["runs"] = grouped.size()
    return table.reset_index()


def pooled_checks(runs: list[RunResult], overall: pd.DataFrame | None = None
                  ) -> tuple[list[tuple[str, bool, str]], list[int]]:
    """The shape goals on the means over runs (accuracy tolerance: the standard deviation over
    runs), and for each goal the number of runs that meet it on their own."""
    if overall is None:
        table = across_runs(per_run_table(runs))
        overall = table[table["difficulty"] == "all"]
    selections = [run.selected for run in runs if run.selected is not None and len(run.selected)]
    shares = effort_shares(pd.concat(selections, ignore_index=True), runs[0].difficulty_order) if selections else None
    pooled = goal_checks(overall, shares, None, "whole-loop spread")
    each = [shape_checks(run.evals, run.selected, run.difficulty_order) for run in runs]
    return pooled, [sum(1 for checks in each if i < len(checks) and checks[i][1]) for i in range(len(pooled))]


def plot_across_runs(runs: list[RunResult], path: Path) -> Path:
    """Accuracy vs tokens, the mean over runs with ± one standard deviation over runs."""
    table = across_runs(per_run_table(runs))
    table = table[table["difficulty"] == "all"].assign(err_low=lambda t: t["acc_std"], err_high=lambda t: t["acc_std"])
    return plot_points(table, Path(path), "accuracy (mean over runs, bars: ± sd over runs)",
                       f"Accuracy vs tokens over {len(runs)} runs of the loop")


def write_comparison(runs: list[RunResult], path: Path) -> str:
    """The across-runs page at `path` with its plot next to it (same name, .png); returns the page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot = plot_across_runs(runs, path.with_suffix(".png"))
    text = compare_markdown(runs, plot=plot.name)
    path.write_text(text + "\n")
    return text


def compare_markdown(runs: list[RunResult], model_order: list[str] | None = None, plot: str | None = None) -> str:
    """Across-runs table, the shape goals judged on the means with the whole-loop spread, and in
    how many runs each goal was met on its own; `plot` names a plot_across_runs image to link."""
    if len(runs) < 2:
        raise UserError(f"compare needs at least 2 runs, got {len(runs)}")
    per_run = per_run_table(runs)
    table = across_runs(per_run)
    overall = table[table["difficulty"] == "all"]
    levels = ordered_difficulties([d for d in table["difficulty"].unique() if d != "all"], runs[0].difficulty_order)
    order = model_order or list(dict.fromkeys(m for run in runs for m in run.evals["model"]))
    names = [run.name for run in runs]
    ks = {k for run in runs for k in default_ks(run.evals)}
    header = ["model", "effort", "accuracy (mean ± sd over runs)", "per run",
              f"maj@{ks.pop() if len(ks) == 1 else 'k'} (mean)", "mean tokens",
              *[f"{d} acc / tok" for d in levels]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rank = {m: i for i, m in enumerate(order)}
    effort_rank = {e: i for i, e in enumerate([*EFFORT_ORDER, "none"])}
    rows = sorted(overall.itertuples(), key=lambda r: (rank.get(r.model, 99), effort_rank.get(r.effort, 9)))
    for row in rows:
        mine = per_run[(per_run["model"] == row.model) & (per_run["effort"] == row.effort)
                       & (per_run["difficulty"] == "all")].set_index("run")["accuracy"]
        cells = [row.model, row.effort, f"{row.accuracy:.3f} ± {row.acc_std:.3f}",
                 " / ".join(f"{mine[n]:.2f}" if n in mine.index else "–" for n in names),
                 "–" if pd.isna(row.maj) else f"{row.maj:.3f}", f"{row.mean_tokens:.1f} ± {row.tokens_std:.1f}"]
        for d in levels:
            hit = table[(table["model"] == row.model) & (table["effort"] == row.effort) & (table["difficulty"] == d)]
            cells.append(f"{hit['accuracy'].iloc[0]:.2f} / {hit['mean_tokens'].iloc[0]:.0f}" if len(hit) else "–")
        lines.append("| " + " | ".join(cells) + " |")

    pooled, met_in = pooled_checks(runs, overall)
    goals = checks_markdown(pooled).splitlines()
    goals[0] += " runs meeting it on their own |"
    goals[1] += "---|"
    goals[2:] = [f"{line} {k} of {len(runs)} |" for line, k in zip(goals[2:], met_in, strict=True)]
    return "\n".join([
        "Runs: " + ", ".join(f"`{run.name}` (run.seed {run.seed})" for run in runs)
        + ". A run.seed draws the seed, training and held-out problems; every model is retrained.", "",
        *lines, "",
        *([f"![accuracy vs tokens over runs]({plot})", ""] if plot else []),
        "Goals judged on the means over runs; the accuracy goal's tolerance is the standard deviation over "
        "runs (the whole-loop spread). Selection shares pool the runs' selections.", "",
        *goals, *paired_lines(runs, overall)])


def paired_lines(runs: list[RunResult], overall: pd.DataFrame) -> list[str]:
    """TOPS against random-correct SFT and against the tag model's best effort, paired per problem:
    is the difference real or the loop's spread? (tops.bootstrap.paired_difference_over_runs)"""
    from tops.bootstrap import paired_difference_over_runs
    from tops.layout import RANDOM, TAG, TOPS

    tag = overall[overall["model"] == TAG]
    others = [((RANDOM, "none"), "random-correct SFT")]
    if len(tag):
        best = tag.sort_values("accuracy", ascending=False).iloc[0]["effort"]
        others.append(((TAG, best), f"the tag model's best effort ({best})"))
    lines = []
    for other, label in others:
        try:
            interval, per_run = paired_difference_over_runs([run.evals for run in runs], (TOPS, "none"), other)
        except KeyError:  # a run without that model: nothing to pair
            continue
        verdict = "excludes 0" if interval.excludes_zero() else "includes 0"
        lines.append(f"| TOPS − {label} | {interval.estimate:+.3f} | "
                     f"{' / '.join(f'{d:+.3f}' for d in per_run)} | {interval.low:+.3f} to {interval.high:+.3f} ({verdict}) |")
    if not lines:
        return []
    return ["", "Paired differences in accuracy (the same held-out problems for both models of a run; the "
            "interval resamples the runs and, within each, its problems by difficulty: 2000 draws, 95%):", "",
            "| difference | mean over runs | per run | 95% CI (runs and problems) |", "|---|---|---|---|", *lines]
