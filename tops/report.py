"""The run report: one Markdown page with the results table (with bootstrap intervals over
problems), the paper's shape goals, the selection's effort shares and two plots (accuracy vs mean
tokens; effort share per difficulty), built only from artifacts. `tops demo` writes the README's
results section from it (tops.demo)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tops.bootstrap import accuracy_intervals
from tops.config import EFFORT_ORDER
from tops.evaluate import markdown_table, plot_budget_accuracy, summarize
from tops.goals import checks_markdown, effort_shares, shape_checks
from tops.layout import ACCURACY_PLOT, BUDGET_PLOT, SHARES_PLOT, RunLayout

MODEL_COLORS = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666", "#17becf"]  # apart from the efforts' colours
EFFORT_COLORS = {"low": "#4c9be8", "medium": "#f0a030", "high": "#d9534f", "none": "#888888"}


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


def write_report(run_dir: Path, evals: pd.DataFrame, selected: pd.DataFrame | None, model_order: list[str],
                 notes: list[str] | None = None, difficulty_order: list[str] | None = None,
                 stage_times: list[tuple[str, float | None, bool]] | None = None,
                 pass_ks: list[int] | None = None, budgets: list[int] | None = None,
                 maj_ks: list[int] | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# TOPS run `{run_dir.name}`", "", "## Held-out evaluation", "",
             markdown_table(evals, model_order, difficulty_order, pass_ks, budgets, maj_ks), "",
             "Accuracy is the mean over problems and seeds (± standard deviation of per-seed accuracy, "
             "where there are several seeds); the "
             "95% CI resamples the held-out problems within each difficulty (percentile bootstrap, 2000 draws), "
             "which also covers which problems happened to be drawn; tokens are counted with each model's "
             "tokenizer. maj@k: the most frequent answer of a problem's first k samples (a tie goes to the "
             "answer given first), scored as that answer was.", ""]
    domains = domain_markdown(evals, model_order)
    if domains:
        parts += ["## In domain and out of domain", "", domains, "",
                  "In domain: the maths held-out problems and benchmarks; out of domain: the multiple-choice "
                  "benchmarks (GPQA Diamond, MMLU-Pro, LSAT). Does thinking less on maths cost accuracy "
                  "elsewhere?", ""]
    plot_accuracy_vs_tokens(evals, run_dir / ACCURACY_PLOT)
    parts += [f"![accuracy vs tokens]({ACCURACY_PLOT})", ""]
    plot_budget_accuracy(evals, run_dir / BUDGET_PLOT, budgets)
    parts += [f"![accuracy within a token budget]({BUDGET_PLOT})", ""]
    # GRPO models: tokens and accuracy per training step
    from tops.train.grpo_report import report_section

    parts += report_section(run_dir, model_order)
    if selected is not None and "policy" in selected.columns:
        selected = selected[selected["policy"] != "seed-low"]  # appended seed rows were not chosen
    checks = shape_checks(evals, selected, difficulty_order)
    if checks:
        parts += ["## The TOPS shape", "", checks_markdown(checks), ""]
    if selected is not None and len(selected):
        shares = effort_shares(selected, difficulty_order)
        plot_effort_shares(shares, run_dir / SHARES_PLOT)
        parts += ["## Effort share of the shortest-correct selection", "",
                  _shares_markdown(shares), "",
                  f"![effort shares]({SHARES_PLOT})", ""]
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if stage_times and any(minutes is not None for _, minutes, _ in stage_times):
        parts += ["## Time per stage", "", _stage_times_markdown(stage_times), ""]
    path = RunLayout(run_dir).report
    path.write_text("\n".join(parts))
    return path


def domain_markdown(evals: pd.DataFrame, model_order: list[str] | None = None) -> str | None:
    """Accuracy and mean tokens in and out of the training domain side by side, one row per
    model and effort; None when every row is in domain."""
    from tops.benchmarks import in_domain

    bench = evals["benchmark"].fillna("held-out") if "benchmark" in evals.columns else pd.Series("held-out",
                                                                                                 index=evals.index)
    inside = bench.map(in_domain).astype(bool)
    if inside.all():
        return None
    order = {m: i for i, m in enumerate(model_order or dict.fromkeys(evals["model"]))}
    lines = ["| model | effort | in-domain accuracy | in-domain tokens | out-of-domain accuracy | "
             "out-of-domain tokens |", "|---|---|---|---|---|---|"]
    groups = sorted(evals.groupby(["model", "effort"], sort=False).groups,
                    key=lambda key: (order.get(key[0], len(order)), _effort_rank(key[1])))
    for model, effort in groups:
        mine = (evals["model"] == model) & (evals["effort"] == effort)
        cells = [model, effort]
        for side in (mine & inside, mine & ~inside):
            part = evals[side]
            cells += ([f"{part['correct'].mean():.3f}", f"{part['n_tokens'].mean():.1f}"] if len(part) else ["–", "–"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _effort_rank(effort: str) -> tuple[int, str]:
    return (EFFORT_ORDER.index(effort), effort) if effort in EFFORT_ORDER else (9, effort)


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
