"""`tops demo --laser`: the demo's TOPS model continues with LASER-D (configs/laser-demo.yaml).

Three commands, each the stage command a user would type, run one after another as child
processes (so training memory is returned before the engines start): draw training problems no
demo split used, GRPO from the demo's TOPS model, and the evaluation of both models on the demo's
held-out problems. The report puts accuracy and tokens before and after side by side, with the
GRPO run's tokens and accuracy per step.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tops.config import TopsConfig
from tops.errors import UserError
from tops.launch import tops_command
from tops.layout import RunLayout

SOURCE_RUN = "demo"  # the run folder whose TOPS model LASER-D starts from
LABELS = ("tops", "laser-d")
SPLITS = ("seed", "train", "iter1", "eval")
PROBLEM_SEED_OFFSET = 26  # the GRPO problems' draw: far from the demo's split seeds


def laser_demo_commands(config: Path, cfg: TopsConfig, source: Path, sets: list[str] | None = None) -> list[list[str]]:
    """The demo's three `tops` command lines (arguments after `tops`); raises UserError when the
    source run has no TOPS model or held-out problems yet."""
    src, out = RunLayout(source), RunLayout(cfg.run.dir)
    tops_model, eval_problems = src.model("tops"), src.published("problems/eval.parquet")
    for needed in (tops_model, eval_problems):
        if not needed.exists():
            raise UserError(f"{needed}: not found; run `tops demo` first (the LASER demo starts from its TOPS model)")
    common = ["--config", str(config), *[a for s in sets or [] for a in ("--set", s)]]
    problems = out.published("problems/grpo.parquet")
    used = [a for split in SPLITS if (p := src.published(f"problems/{split}.parquet")).exists()
            for a in ("--exclude", str(p))]
    laser = out.model(LABELS[1])
    return [
        ["problems", *common, "--n", str(cfg.flow.iter_problems), "--seed", str(cfg.run.seed + PROBLEM_SEED_OFFSET),
         *used, "--out", str(problems)],
        ["train", "grpo", *common, "--problems", str(problems), "--base", str(tops_model), "--out", str(laser)],
        ["eval", *common, "--model", str(tops_model), "--model", str(laser), "--label", LABELS[0], "--label",
         LABELS[1], "--problems", str(eval_problems), "--out", str(out.eval), "--quiet"],
    ]


def run_laser_demo(config: Path, cfg: TopsConfig, sets: list[str] | None = None) -> Path:
    """Run the three commands (a finished step is reused: each command resumes or returns its
    finished output), then write the report; returns its path."""
    source = cfg.run.root / SOURCE_RUN
    commands = laser_demo_commands(config, cfg, source, sets)
    for args in commands:
        if args[0] == "problems" and Path(args[-1]).exists():
            continue  # drawn already: a rerun trains on the same problems
        code = subprocess.call(tops_command(*args))
        if code != 0:
            raise SystemExit(code)
    return write_laser_report(cfg.run.dir)


def write_laser_report(run_dir: Path) -> Path:
    """report.md: the held-out table of both models and the GRPO section (tokens, accuracy and
    targets per training step)."""
    from tops.artifacts import read_artifact
    from tops.evaluate import markdown_table
    from tops.train.grpo_report import report_section

    layout = RunLayout(run_dir)
    evals = read_artifact(layout.eval, "eval")
    summary = evals.groupby("model", sort=False).agg(accuracy=("correct", "mean"), mean_tokens=("n_tokens", "mean"))
    summary = summary.reindex([m for m in LABELS if m in summary.index])
    lines = [f"# LASER-D after TOPS (`{run_dir.name}`)", "",
             "| model | held-out accuracy | mean tokens |", "|---|---|---|",
             *[f"| {m} | {row.accuracy:.3f} | {row.mean_tokens:.1f} |" for m, row in summary.iterrows()], "",
             markdown_table(evals, list(LABELS)), "", *report_section(run_dir, [LABELS[1]])]
    path = layout.report
    path.write_text("\n".join(lines) + "\n")
    return path
