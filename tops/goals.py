"""The paper's shape, judged on a run's artifacts: the tag model follows the efforts, the selection
picks low effort on easy problems, TOPS is as accurate as the best single effort at fewer tokens.
These are the goals `tops demo` and `tops compare` report; the stage code does not depend on them."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from tops.bootstrap import Interval, paired_difference
from tops.config import EFFORT_ORDER
from tops.evaluate import ordered_difficulties, several_seeds, summarize


def effort_shares(selected: pd.DataFrame, difficulty_order: list[str] | None = None) -> pd.DataFrame:
    """Share of each effort among selected responses, per difficulty (rows) — the TOPS signature:
    low effort should dominate easy problems."""
    frame = selected.assign(difficulty=selected["difficulty"].fillna("all"))
    shares = pd.crosstab(frame["difficulty"], frame["effort"], normalize="index")
    cols = [e for e in EFFORT_ORDER if e in shares.columns] + [c for c in shares.columns if c not in EFFORT_ORDER]
    return shares.loc[ordered_difficulties(shares.index, difficulty_order), cols]


def shape_checks(evals: pd.DataFrame, selected: pd.DataFrame | None,
                 difficulty_order: list[str] | None = None) -> list[tuple[str, bool, str]]:
    """The paper's shape on one run's eval rows; goal 3 also shows the paired bootstrap interval
    of TOPS minus the best effort over the held-out problems. With one sample per problem there is
    no seed spread, so goal 3 asks that interval to reach zero (TOPS not shown to be less accurate)."""
    shares = effort_shares(selected, difficulty_order) if selected is not None and len(selected) else None
    one_seed = not several_seeds(evals)
    return goal_checks(summarize(evals), shares, lambda a, b: paired_difference(evals, a, b),
                       "paired 95% CI over problems" if one_seed else "seed spread", by_interval=one_seed)


def goal_checks(table: pd.DataFrame, shares: pd.DataFrame | None,
                difference: Callable[[tuple[str, str], tuple[str, str]], Interval] | None = None,
                spread_name: str = "seed spread", by_interval: bool = False) -> list[tuple[str, bool, str]]:
    """(goal, met, the numbers behind it) from a model x effort table (accuracy, acc_std,
    mean_tokens): the tag model follows the efforts; low effort is picked more on easy than hard
    problems; TOPS is as accurate as the best single effort (within `acc_std`) at <= 0.8x the
    tokens of high effort, and shorter than random-correct. `by_interval`: goal 3 is met when the
    paired interval of TOPS minus the best effort (from `difference`) reaches zero instead."""
    table = table.set_index(["model", "effort"])
    checks: list[tuple[str, bool, str]] = []
    tag = {e: table.loc[("tag", e)] for e in EFFORT_ORDER if ("tag", e) in table.index}
    if len(tag) == 3:
        tokens = [tag[e]["mean_tokens"] for e in EFFORT_ORDER]
        checks.append(("tag model follows the efforts: mean tokens low < medium < high",
                       tokens[0] < tokens[1] < tokens[2], " < ".join(f"{t:.1f}" for t in tokens)))
    if shares is not None and "low" in shares.columns and len(shares.index) >= 2:
        first, last = shares.index[0], shares.index[-1]
        checks.append((f"selection picks low effort more on '{first}' than on '{last}' problems",
                       shares.loc[first, "low"] > shares.loc[last, "low"],
                       f"{shares.loc[first, 'low']:.2f} vs {shares.loc[last, 'low']:.2f}"))
    if ("tops", "none") in table.index and len(tag) == 3:
        tops = table.loc[("tops", "none")]
        best_effort = max(tag, key=lambda e: tag[e]["accuracy"])
        best = tag[best_effort]
        spread = max(float(tops["acc_std"]), float(best["acc_std"]))
        d = difference(("tops", "none"), ("tag", best_effort)) if difference is not None else None
        if by_interval and d is None:
            raise ValueError("by_interval needs the paired difference")
        detail = f"{tops['accuracy']:.3f} vs {best['accuracy']:.3f}" + ("" if by_interval else f" ({spread_name} {spread:.3f})")
        if d is not None:
            detail += (f"; TOPS − {best_effort}: {d.estimate:+.3f}, 95% CI {d.low:+.3f} to {d.high:+.3f} "
                       f"over {d.n_problems} problems")
        met = d.high >= 0 if by_interval else tops["accuracy"] >= best["accuracy"] - spread
        checks.append((f"TOPS accuracy >= best single effort ({best_effort}) within the {spread_name}",
                       met, detail))
        ratio = tops["mean_tokens"] / tag["high"]["mean_tokens"]
        checks.append(("TOPS mean tokens <= 0.8x high effort", ratio <= 0.8,
                       f"{tops['mean_tokens']:.1f} / {tag['high']['mean_tokens']:.1f} = {ratio:.2f}x"))
        if ("random", "none") in table.index:
            random_tokens = table.loc[("random", "none")]["mean_tokens"]
            checks.append(("TOPS uses fewer tokens than random-correct SFT", tops["mean_tokens"] < random_tokens,
                           f"{tops['mean_tokens']:.1f} vs {random_tokens:.1f}"))
    return checks


def checks_markdown(checks: list[tuple[str, bool, str]]) -> str:
    return "\n".join(["| goal | met | numbers |", "|---|---|---|",
                      *[f"| {goal} | {'yes' if met else '**no**'} | {detail} |" for goal, met, detail in checks]])
