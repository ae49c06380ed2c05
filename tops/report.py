"""The run report: one Markdown page with the results table, the selection's effort shares and
two plots (accuracy vs mean tokens; effort share per difficulty), built only from artifacts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tops.config import EFFORT_ORDER
from tops.evaluate import markdown_table, summarize

EFFORT_COLORS = {"low": "#4c9be8", "medium": "#f0a030", "high": "#d9534f", "none": "#888888"}


def effort_shares(selected: pd.DataFrame) -> pd.DataFrame:
    """Share of each effort among selected responses, per difficulty (rows) — the TOPS signature:
    low effort should dominate easy problems."""
    frame = selected.assign(difficulty=selected["difficulty"].fillna("all"))
    shares = pd.crosstab(frame["difficulty"], frame["effort"], normalize="index")
    cols = [e for e in EFFORT_ORDER if e in shares.columns] + [c for c in shares.columns if c not in EFFORT_ORDER]
    return shares[cols]


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


def write_report(run_dir: Path, evals: pd.DataFrame, selected: pd.DataFrame | None, model_order: list[str],
                 notes: list[str] | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# TOPS run `{run_dir.name}`", "", "## Held-out evaluation", "",
             markdown_table(evals, model_order), "",
             "Accuracy is the mean over problems and seeds (± standard deviation of per-seed accuracy); "
             "tokens are counted with each model's tokenizer.", ""]
    plot_accuracy_vs_tokens(evals, run_dir / "accuracy_vs_tokens.png")
    parts += ["![accuracy vs tokens](accuracy_vs_tokens.png)", ""]
    if selected is not None and len(selected):
        shares = effort_shares(selected)
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
