"""The run report: one Markdown page with the results table, the selection's effort shares and
two plots (accuracy vs mean tokens; effort share per difficulty), built only from artifacts."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pandas as pd

from tops.config import EFFORT_ORDER
from tops.evaluate import markdown_table, ordered_difficulties, summarize

EFFORT_COLORS = {"low": "#4c9be8", "medium": "#f0a030", "high": "#d9534f", "none": "#888888"}


def effort_shares(selected: pd.DataFrame, difficulty_order: list[str] | None = None) -> pd.DataFrame:
    """Share of each effort among selected responses, per difficulty (rows) — the TOPS signature:
    low effort should dominate easy problems."""
    frame = selected.assign(difficulty=selected["difficulty"].fillna("all"))
    shares = pd.crosstab(frame["difficulty"], frame["effort"], normalize="index")
    cols = [e for e in EFFORT_ORDER if e in shares.columns] + [c for c in shares.columns if c not in EFFORT_ORDER]
    return shares.loc[ordered_difficulties(shares.index, difficulty_order), cols]


def plot_accuracy_vs_tokens(evals: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(evals)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, row in table.iterrows():
        label = row["model"] if row["effort"] == "none" else f"{row['model']} ({row['effort']})"
        ax.errorbar(row["mean_tokens"], row["accuracy"], yerr=row["acc_std"], fmt="o", capsize=3,
                    color=EFFORT_COLORS.get(row["effort"], "#333333"))
        ax.annotate(label, (row["mean_tokens"], row["accuracy"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xlabel("mean tokens per response (held-out)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs tokens: up and to the left is better")
    ax.grid(alpha=0.3)
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
    """The paper's shape, as (goal, met, the numbers behind it): the tag model follows the
    efforts; low effort is picked more on easy than hard problems; TOPS is as accurate as the
    best single effort at <= 0.8x the tokens of high effort, and shorter than random-correct."""
    table = summarize(evals).set_index(["model", "effort"])
    checks: list[tuple[str, bool, str]] = []
    tag = {e: table.loc[("tag", e)] for e in EFFORT_ORDER if ("tag", e) in table.index}
    if len(tag) == 3:
        tokens = [tag[e]["mean_tokens"] for e in EFFORT_ORDER]
        checks.append(("tag model follows the efforts: mean tokens low < medium < high",
                       tokens[0] < tokens[1] < tokens[2], " < ".join(f"{t:.1f}" for t in tokens)))
    if selected is not None and len(selected):
        shares = effort_shares(selected, difficulty_order)
        if "low" in shares.columns and len(shares.index) >= 2:
            first, last = shares.index[0], shares.index[-1]
            checks.append((f"selection picks low effort more on '{first}' than on '{last}' problems",
                           shares.loc[first, "low"] > shares.loc[last, "low"],
                           f"{shares.loc[first, 'low']:.2f} vs {shares.loc[last, 'low']:.2f}"))
    if ("tops", "none") in table.index and len(tag) == 3:
        tops = table.loc[("tops", "none")]
        best_effort = max(tag, key=lambda e: tag[e]["accuracy"])
        best = tag[best_effort]
        spread = max(float(tops["acc_std"]), float(best["acc_std"]))
        checks.append((f"TOPS accuracy >= best single effort ({best_effort}) within the seed spread",
                       tops["accuracy"] >= best["accuracy"] - spread,
                       f"{tops['accuracy']:.3f} vs {best['accuracy']:.3f} (spread {spread:.3f})"))
        ratio = tops["mean_tokens"] / tag["high"]["mean_tokens"]
        checks.append(("TOPS mean tokens <= 0.8x high effort", ratio <= 0.8,
                       f"{tops['mean_tokens']:.1f} / {tag['high']['mean_tokens']:.1f} = {ratio:.2f}x"))
        if ("random", "none") in table.index:
            random_tokens = table.loc[("random", "none")]["mean_tokens"]
            checks.append(("TOPS uses fewer tokens than random-correct SFT", tops["mean_tokens"] < random_tokens,
                           f"{tops['mean_tokens']:.1f} vs {random_tokens:.1f}"))
    return checks


def write_report(run_dir: Path, evals: pd.DataFrame, selected: pd.DataFrame | None, model_order: list[str],
                 notes: list[str] | None = None, difficulty_order: list[str] | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# TOPS run `{run_dir.name}`", "", "## Held-out evaluation", "",
             markdown_table(evals, model_order, difficulty_order), "",
             "Accuracy is the mean over problems and seeds (± standard deviation of per-seed accuracy); "
             "tokens are counted with each model's tokenizer.", ""]
    plot_accuracy_vs_tokens(evals, run_dir / "accuracy_vs_tokens.png")
    parts += ["![accuracy vs tokens](accuracy_vs_tokens.png)", ""]
    if selected is not None and "policy" in selected.columns:
        selected = selected[selected["policy"] != "seed-low"]  # appended seed rows were not chosen
    checks = shape_checks(evals, selected, difficulty_order)
    if checks:
        parts += ["## The TOPS shape", "", "| goal | met | numbers |", "|---|---|---|",
                  *[f"| {goal} | {'yes' if met else '**no**'} | {detail} |" for goal, met, detail in checks], ""]
    if selected is not None and len(selected):
        shares = effort_shares(selected, difficulty_order)
        plot_effort_shares(shares, run_dir / "effort_shares.png")
        parts += ["## Effort share of the shortest-correct selection", "",
                  _shares_markdown(shares), "",
                  "![effort shares](effort_shares.png)", ""]
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(parts))
    return path


def _shares_markdown(shares: pd.DataFrame) -> str:
    lines = ["| difficulty | " + " | ".join(shares.columns) + " |", "|---|" + "---|" * len(shares.columns)]
    for difficulty, row in shares.iterrows():
        lines.append(f"| {difficulty} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


README_START = "<!-- demo-results:start -->"
README_END = "<!-- demo-results:end -->"


def update_readme_results(readme: Path, report: Path, minutes: float) -> None:
    """Put the demo's own report (tables, shape checks, plots) between README's markers, so the
    numbers there always come from a run, never from a hand."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    import shutil

    rel = os.path.relpath(report.parent, readme.parent)
    plots = readme.parent / "docs" / "demo"  # run folders are git-ignored; the plots are kept here
    plots.mkdir(parents=True, exist_ok=True)
    for png in report.parent.glob("*.png"):
        shutil.copy2(png, plots / png.name)
    body = report.read_text().split("\n", 1)[1]  # drop the report's title
    body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m[1]}](docs/demo/{m[2]})", body)
    body = body.replace("\n## ", "\n### ")
    stamp = (f"_Written by `tops demo` on {time.strftime('%Y-%m-%d')} from `{rel}/report.md`; "
             f"the whole loop took {minutes:.1f} minutes on this machine ({os.cpu_count()} cores)._")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{stamp}\n{body.strip()}\n{README_END}{tail}")
