"""Held-out evaluation: accuracy and tokens per model, effort and difficulty.

k samples per problem from an engine seeded once (sample k is "seed k"), verified with the
same checker as training data. Problems used for seed data or training are excluded by id,
and an n-gram overlap check reports near-duplicates that ids cannot catch.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from tops.bootstrap import accuracy_intervals
from tops.config import EFFORT_ORDER, GenerateConfig, SamplingConfig, VerifyConfig

_WORD = re.compile(r"\w+")


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < n:  # short questions are compared whole
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def contamination(eval_problems: pd.DataFrame, train_questions: list[str], n: int = 8) -> list[str]:
    """problem_ids of eval questions sharing any word n-gram with a training question
    (open-r1's decontamination rule)."""
    seen: set[tuple[str, ...]] = set()
    for question in train_questions:
        seen |= _ngrams(question, n)
    return [pid for pid, q in zip(eval_problems["problem_id"], eval_problems["question"], strict=True)
            if _ngrams(q, n) & seen]


def evaluate_model(problems: pd.DataFrame, engine, label: str, efforts: list[str], seeds: list[int],
                   sampling: SamplingConfig, prompts: dict[str, str], verify_cfg: VerifyConfig,
                   work_dir: Path, progress: bool = True) -> pd.DataFrame:
    """Eval rows for one model: one row per (problem, effort, seed)."""
    from tops.generate import generate_samples
    from tops.verify import verify_samples

    gen_cfg = GenerateConfig(efforts=efforts, n_samples=len(seeds), sampling=sampling)
    samples, _ = generate_samples(problems, engine, gen_cfg, prompts, work_dir / f"eval-samples-{label}.parquet",
                                  model_name=label, progress=progress)
    verified, _ = verify_samples(samples, verify_cfg, progress=progress)
    verified["seed"] = np.asarray(seeds)[verified["sample_idx"].to_numpy()]
    verified["model"] = label
    keep = ["model", "problem_id", "difficulty", "effort", "seed", "n_tokens", "correct", "pred",
            "verify_status", "finish_reason", "response"]
    return verified[keep].reset_index(drop=True)


def summarize(evals: pd.DataFrame, by: tuple[str, ...] = ("model", "effort")) -> pd.DataFrame:
    """Accuracy (mean and spread over seeds), mean tokens, mean tokens of correct answers,
    accuracy per 1K tokens."""
    by = list(by)
    per_seed = evals.groupby([*by, "seed"], dropna=False)["correct"].mean().reset_index()
    spread = per_seed.groupby(by, dropna=False)["correct"].std(ddof=0).rename("acc_std")
    grouped = evals.groupby(by, dropna=False)
    table = pd.DataFrame({
        "accuracy": grouped["correct"].mean(),
        "mean_tokens": grouped["n_tokens"].mean(),
        "n": grouped.size(),
    })
    correct_tokens = evals[evals["correct"]].groupby(by, dropna=False)["n_tokens"].mean()
    table["mean_tokens_correct"] = correct_tokens
    table = table.join(spread)
    table["acc_per_1k_tokens"] = table["accuracy"] / (table["mean_tokens"] / 1000)
    return table.reset_index()


def ordered_difficulties(present, preferred: list[str] | None) -> list:
    """The configured order (e.g. easy, medium, hard) first, then any other level sorted."""
    present = list(present)
    return [d for d in preferred or [] if d in present] + sorted(d for d in present if d not in (preferred or []))


def _tokens_cell(value: float) -> str:
    """A model with no correct answer has no correct-answer length: a dash, not "nan"."""
    return "—" if pd.isna(value) else f"{value:.1f}"


def markdown_table(evals: pd.DataFrame, order: list[str] | None = None,
                   difficulty_order: list[str] | None = None) -> str:
    """Model x effort rows: overall accuracy ± spread over seeds, its bootstrap interval over
    problems, mean tokens, then per difficulty."""
    overall = summarize(evals)
    by_diff = summarize(evals, ("model", "effort", "difficulty"))
    difficulties = ordered_difficulties(by_diff["difficulty"].dropna().unique(), difficulty_order)
    intervals = accuracy_intervals(evals)
    order = order or list(dict.fromkeys(evals["model"]))
    header = ["model", "effort", "accuracy", "95% CI (problems)", "mean tokens", "tokens (correct)"]
    header += [f"{d} acc / tok" for d in difficulties]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    overall["_order"] = overall["model"].map({m: i for i, m in enumerate(order)})
    overall["_effort"] = overall["effort"].map(lambda e: (EFFORT_ORDER.index(e), e) if e in EFFORT_ORDER else (9, e))
    for _, row in overall.sort_values(["_order", "_effort"]).iterrows():
        ci = intervals[(row["model"], row["effort"])]
        cells = [row["model"], row["effort"], f"{row['accuracy']:.3f} ± {row['acc_std']:.3f}",
                 f"{ci.low:.2f}–{ci.high:.2f}", f"{row['mean_tokens']:.1f}", _tokens_cell(row["mean_tokens_correct"])]
        for d in difficulties:
            hit = by_diff[(by_diff["model"] == row["model"]) & (by_diff["effort"] == row["effort"])
                          & (by_diff["difficulty"] == d)]
            cells.append(f"{hit['accuracy'].iloc[0]:.2f} / {hit['mean_tokens'].iloc[0]:.0f}" if len(hit) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
