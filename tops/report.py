"""The run report: one Markdown page with the results table (with bootstrap intervals over
problems), the paper's shape goals, the selection's effort shares and two plots (accuracy vs mean
tokens; effort share per difficulty), built only from artifacts. The README's results section is
written from it (`update_readme_results`)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tops.bootstrap import Interval, accuracy_intervals, paired_difference
from tops.config import EFFORT_ORDER
from tops.evaluate import markdown_table, ordered_difficulties, summarize

MODEL_COLORS = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666", "#17becf"]  # apart from the efforts' colours
EFFORT_COLORS = {"low": "#4c9be8", "medium": "#f0a030", "high": "#d9534f", "none": "#888888"}


def effort_shares(selected: pd.DataFrame, difficulty_order: list[str] | None = None) -> pd.DataFrame:
    """Share of each effort among selected responses, per difficulty (rows) — the TOPS signature:
    low effort should dominate easy problems."""
    frame = selected.assign(difficulty=selected["difficulty"].fillna("all"))
    shares = pd.crosstab(frame["difficulty"], frame["effort"], normalize="index")
    cols = [e for e in EFFORT_ORDER if e in shares.columns] + [c for c in shares.columns if c not in EFFORT_ORDER]
    return shares.loc[ordered_difficulties(shares.index, difficulty_order), cols]


def plot_accuracy_vs_tokens(evals: pd.DataFrame, path: Path) -> Path:
    """One point per model and effort; error bars are the bootstrap interval over problems."""
    table = summarize(evals)
    intervals = accuracy_intervals(evals)
    table["err_low"] = [row.accuracy - intervals[(row.model, row.effort)].low for row in table.itertuples()]
    table["err_high"] = [intervals[(row.model, row.effort)].high - row.accuracy for row in table.itertuples()]
    return plot_points(table, path, "accuracy (bars: 95% interval over problems)")


def plot_points(table: pd.DataFrame, path: Path, ylabel: str, title: str | None = None) -> Path:
    """Accuracy vs mean tokens, one point per (model, effort) row with asymmetric error bars
    (`err_low`, `err_high`), named in the legend: labels next to points collide when two models
    sit close."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = iter(zip(["s", "D", "^", "v", "P", "X", "*"] * 3, MODEL_COLORS, strict=False))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row in table.itertuples():
        if row.effort in EFFORT_ORDER:
            marker, color = "o", EFFORT_COLORS[row.effort]
        else:
            marker, color = next(others, ("o", "#333333"))
        label = row.model if row.effort == "none" else f"{row.model} ({row.effort})"
        yerr = [[max(row.err_low, 0)], [max(row.err_high, 0)]]
        ax.errorbar(row.mean_tokens, row.accuracy, yerr=yerr, fmt=marker, capsize=3, color=color, label=label,
                    markersize=7)
    ax.set_xlabel("mean tokens per response (held-out)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Accuracy vs tokens: up and to the left is better")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_effort_shares(shares: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = pd.Series(0.0, index=shares.index)
    for effort in shares.columns:
        ax.bar(shares.index.astype(str), shares[effort], bottom=bottom, label=effort,
               color=EFFORT_COLORS.get(effort, "#333333"))
        bottom += shares[effort]
    ax.set_ylabel("share of selected responses")
    ax.set_xlabel("difficulty")
    ax.set_title("Which effort was shortest-correct, per difficulty")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def shape_checks(evals: pd.DataFrame, selected: pd.DataFrame | None,
                 difficulty_order: list[str] | None = None) -> list[tuple[str, bool, str]]:
    """The paper's shape on one run's eval rows; goal 3 also shows the paired bootstrap interval
    of TOPS minus the best effort over the held-out problems."""
    shares = effort_shares(selected, difficulty_order) if selected is not None and len(selected) else None
    return goal_checks(summarize(evals), shares, lambda a, b: paired_difference(evals, a, b), "seed spread")


def goal_checks(table: pd.DataFrame, shares: pd.DataFrame | None,
                difference: Callable[[tuple[str, str], tuple[str, str]], Interval] | None = None,
                spread_name: str = "seed spread") -> list[tuple[str, bool, str]]:
    """(goal, met, the numbers behind it) from a model x effort table (accuracy, acc_std,
    mean_tokens): the tag model follows the efforts; low effort is picked more on easy than hard
    problems; TOPS is as accurate as the best single effort (within `acc_std`) at <= 0.8x the
    tokens of high effort, and shorter than random-correct."""
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
        detail = f"{tops['accuracy']:.3f} vs {best['accuracy']:.3f} ({spread_name} {spread:.3f})"
        if difference is not None:
            d = difference(("tops", "none"), ("tag", best_effort))
            detail += (f"; TOPS − {best_effort}: {d.estimate:+.3f}, 95% CI {d.low:+.3f} to {d.high:+.3f} "
                       f"over {d.n_problems} problems")
        checks.append((f"TOPS accuracy >= best single effort ({best_effort}) within the {spread_name}",
                       tops["accuracy"] >= best["accuracy"] - spread, detail))
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


def write_report(run_dir: Path, evals: pd.DataFrame, selected: pd.DataFrame | None, model_order: list[str],
                 notes: list[str] | None = None, difficulty_order: list[str] | None = None,
                 stage_times: list[tuple[str, float | None, bool]] | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# TOPS run `{run_dir.name}`", "", "## Held-out evaluation", "",
             markdown_table(evals, model_order, difficulty_order), "",
             "Accuracy is the mean over problems and seeds (± standard deviation of per-seed accuracy); the "
             "95% CI resamples the held-out problems within each difficulty (percentile bootstrap, 2000 draws), "
             "which also covers which problems happened to be drawn; tokens are counted with each model's "
             "tokenizer.", ""]
    plot_accuracy_vs_tokens(evals, run_dir / "accuracy_vs_tokens.png")
    parts += ["![accuracy vs tokens](accuracy_vs_tokens.png)", ""]
    if selected is not None and "policy" in selected.columns:
        selected = selected[selected["policy"] != "seed-low"]  # appended seed rows were not chosen
    checks = shape_checks(evals, selected, difficulty_order)
    if checks:
        parts += ["## The TOPS shape", "", checks_markdown(checks), ""]
    if selected is not None and len(selected):
        shares = effort_shares(selected, difficulty_order)
        plot_effort_shares(shares, run_dir / "effort_shares.png")
        parts += ["## Effort share of the shortest-correct selection", "",
                  _shares_markdown(shares), "",
                  "![effort shares](effort_shares.png)", ""]
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if stage_times and any(minutes is not None for _, minutes, _ in stage_times):
        parts += ["## Time per stage", "", _stage_times_markdown(stage_times), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(parts))
    return path


def _stage_times_markdown(stage_times: list[tuple[str, float | None, bool]]) -> str:
    """Where the run's time went; a reused stage shows what it cost when it ran."""
    lines = ["| stage | minutes | this run |", "|---|---|---|"]
    for label, minutes, reused in stage_times:
        lines.append(f"| {label} | {'—' if minutes is None else f'{minutes:.2f}'} | "
                     f"{'reused' if reused else 'computed'} |")
    total = sum(m for _, m, _ in stage_times if m is not None)
    lines.append(f"| **all stages** | **{total:.1f}** | {sum(not r for _, _, r in stage_times)} computed, "
                 f"{sum(r for _, _, r in stage_times)} reused |")
    return "\n".join(lines)


def _shares_markdown(shares: pd.DataFrame) -> str:
    lines = ["| difficulty | " + " | ".join(shares.columns) + " |", "|---|" + "---|" * len(shares.columns)]
    for difficulty, row in shares.iterrows():
        lines.append(f"| {difficulty} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


README_START = "<!-- demo-results:start -->"
README_END = "<!-- demo-results:end -->"


def run_time_line(result: dict) -> str:
    """How long one run took, honest about stages reused from an earlier run's cache."""
    name, wall = Path(result["run_dir"]).name, result.get("minutes", 0.0)
    stages, reused = result.get("stages", 0), result.get("stages_reused", 0)
    if not reused:
        return f"`{name}` {wall:.1f} min, all {stages} stages computed"
    recorded = result.get("stage_minutes", 0.0)
    when_ran = f"{recorded:.1f} min when they ran" if recorded else "their time was not recorded"
    return f"`{name}` {wall:.1f} min with {reused} of {stages} stages reused from an earlier run ({when_ran})"


def update_readme_results(readme: Path, runs: list[dict], comparison: str | None = None) -> None:
    """Put the demo's own report (tables, shape checks, plots; the across-runs table when the loop
    ran with several seeds) between README's markers, so the numbers there always come from a
    run, never from a hand. `runs` are the flow results, the first one's report in full."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    import shutil

    report = Path(runs[0]["report"])
    rel = os.path.relpath(report.parent, readme.parent)
    plots = readme.parent / "docs" / "demo"  # run folders are git-ignored; the plots are kept here
    plots.mkdir(parents=True, exist_ok=True)
    for png in [*report.parent.glob("*.png"), *report.parent.parent.glob("*-seeds*.png")]:
        shutil.copy2(png, plots / png.name)
    # without the report's title; its sections one level down when the runs together come first
    body = _readme_markdown(report.read_text().split("\n", 1)[1], "####" if comparison else "###")
    if comparison:  # the runs together first: the goals are judged there
        body = (f"### Across whole-loop seeds\n\n{_readme_markdown(comparison, '####')}\n\n"
                f"### Run `{Path(runs[0]['run_dir']).name}` in detail\n{body}")
    stamp = (f"_Written by `tops demo` on {time.strftime('%Y-%m-%d')} from `{rel}/report.md` on this machine "
             f"({os.cpu_count()} cores): " + "; ".join(run_time_line(r) for r in runs) + "._")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{stamp}\n{body.strip()}\n{README_END}{tail}")


def _readme_markdown(markdown: str, heading: str) -> str:
    """Level-2 headings (report sections) at `heading`'s level; plots linked to the README's copies."""
    markdown = re.sub(r"^## ", heading + " ", markdown, flags=re.M)
    return re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m[1]}](docs/demo/{m[2]})", markdown)
