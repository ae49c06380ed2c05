"""What a GRPO run shows: one row per training step (rollout tokens, accuracy, reward per kind,
LASER-D's targets), the plot of tokens and accuracy over the steps, and the run report's section
on the GRPO models (tops/report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tops.rewards import BUCKETS, KINDS

PLOT = "grpo.png"

STEP_COLUMNS = ("step", "loss", "reward", "completions/mean_length", "laser/accuracy", "laser/no_answer",
                *(f"reward_kind/{k}" for k in KINDS), *(f"laser/target_{b}" for b in BUCKETS))


def step_table(log_history: list[dict]) -> pd.DataFrame:
    """One row per logged training step with the columns the summary and the plot read."""
    rows = [{k: entry[k] for k in STEP_COLUMNS if k in entry} for entry in log_history
            if "completions/mean_length" in entry and "step" in entry]
    return pd.DataFrame(rows, columns=[c for c in STEP_COLUMNS if any(c in r for r in rows)] or ["step"])


def plot_training(summary: dict, path: Path, title: str = "") -> Path | None:
    """Mean rollout tokens and rollout accuracy over the training steps (LASER-D's targets as
    dashed lines on the tokens); None when the run logged no step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = pd.DataFrame(summary.get("step_log") or []).apply(pd.to_numeric, errors="coerce")
    if steps.empty or "completions/mean_length" not in steps:
        return None
    fig, (tokens, accuracy) = plt.subplots(1, 2, figsize=(10, 3.5))
    tokens.plot(steps["step"], steps["completions/mean_length"], marker="o", markersize=3, label="mean tokens")
    for bucket, style in (("easy", ":"), ("medium", "--"), ("hard", "-.")):
        column = f"laser/target_{bucket}"
        if column in steps:
            tokens.plot(steps["step"], steps[column], linestyle=style, label=f"target {bucket}")
    tokens.set_xlabel("step")
    tokens.set_ylabel("tokens per rollout")
    tokens.legend(fontsize=7)
    if "laser/accuracy" in steps:
        accuracy.plot(steps["step"], steps["laser/accuracy"], marker="o", markersize=3, color="tab:green")
    accuracy.set_xlabel("step")
    accuracy.set_ylabel("rollout accuracy")
    accuracy.set_ylim(0, 1)
    for ax in (tokens, accuracy):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} ({summary.get('reward')})".strip())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report_section(run_dir: Path, labels: list[str]) -> list[str]:
    """The report's lines on the run's GRPO models: rollout tokens and accuracy over the training
    steps (a plot each) and LASER-D's last targets; nothing when the run trained none."""
    from tops.layout import TRAIN_SUMMARY, RunLayout

    layout, rows, plots = RunLayout(run_dir), [], []
    for label in labels:
        path = layout.model(label) / TRAIN_SUMMARY
        summary = json.loads(path.read_text()) if path.exists() else {}
        if summary.get("kind") != "grpo":
            continue
        tokens, accuracy = summary.get("tokens_per_step") or [], summary.get("accuracy_per_step") or []
        last = (summary.get("targets") or [{}])[-1]
        cells = [label, summary.get("reward", "?"), str(summary.get("steps", 0)),
                 f"{tokens[0]:.1f} → {tokens[-1]:.1f}" if tokens else "–",
                 f"{accuracy[0]:.2f} → {accuracy[-1]:.2f}" if accuracy else "–",
                 " / ".join(str(last[b]) for b in ("easy", "medium", "hard")) if "easy" in last else "–"]
        rows.append("| " + " | ".join(cells) + " |")
        plot = plot_training(summary, run_dir / f"grpo_{label}.png", title=label)
        if plot is not None:
            plots += [f"![{label}: rollout tokens and accuracy over training steps]({plot.name})", ""]
    if not rows:
        return []
    return ["## Reinforcement learning (GRPO, LASER rewards)", "",
            "| model | reward | steps | rollout tokens (first → last step) | rollout accuracy | "
            "targets easy / medium / hard (last) |", "|---|---|---|---|---|---|", *rows, "", *plots]
