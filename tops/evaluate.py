"""Held-out evaluation: accuracy and tokens per model, effort, benchmark and difficulty.

k samples per problem from an engine seeded once (sample k is "seed k"), verified with the
same checker as training data (a benchmark's own checker when it has one: `choice` for the
multiple-choice sets). Problems used for seed data or training are excluded by id,
and an n-gram overlap check reports near-duplicates that ids cannot catch. Besides accuracy
and tokens, `metrics` gives pass@k (the unbiased estimator of Chen et al. 2021 over the k
samples), maj@k (majority vote over the first k samples, `majority_correct`) and accuracy under
token budgets (a response counts only if it is correct within the budget: the accuracy-vs-budget
curve of the efficient-reasoning literature).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
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
                   work_dir: Path, progress: bool = True, *, template_kwargs: Mapping[str, dict] | None = None,
                   depth: Mapping | None = None) -> pd.DataFrame:
    """Eval rows for one model: one row per (problem, effort, seed). Native efforts bring their
    chat-template arguments and depth controls (efforts.template_kwargs, generate.depth)."""
    from tops.generate import generate_samples
    from tops.verify import verify_samples

    gen_cfg = GenerateConfig(efforts=efforts, n_samples=len(seeds), sampling=sampling,
                             depth={e: c for e, c in (depth or {}).items() if e in efforts})
    samples, _ = generate_samples(problems, engine, gen_cfg, prompts, work_dir / f"eval-samples-{label}.parquet",
                                  model_name=label, progress=progress, template_kwargs=dict(template_kwargs or {}))
    names = verify_cfg.checker if "checker" not in samples.columns else samples["checker"].fillna(verify_cfg.checker)
    names = [names] * len(samples) if isinstance(names, str) else names.astype(str).tolist()
    verified, _ = verify_samples(samples, verify_cfg, progress=progress, row_checkers=names)
    verified["seed"] = np.asarray(seeds)[verified["sample_idx"].to_numpy()]
    verified["model"] = label
    verified["checker"] = names
    verified["answer_key"] = vote_keys(verified["pred"], names)
    keep = ["model", "problem_id", "difficulty", "effort", "seed", "n_tokens", "correct", "pred", "answer_key",
            "checker", "verify_status", "finish_reason", "response"]
    keep += [c for c in ("benchmark", "subject") if c in verified.columns]
    return verified[keep].reset_index(drop=True)


def vote_keys(preds, checkers: list[str]) -> list[str | None]:
    """Each extracted answer as its checker normalises it for voting (None: no answer)."""
    from tops.checkers import get_checker

    keys: list[str | None] = []
    for pred, name in zip(preds, checkers, strict=True):
        try:
            keys.append(None if pred is None or pd.isna(pred) else get_checker(name).vote_key(pred))
        except Exception:  # a checker that cannot read its own answer casts no vote
            keys.append(None)
    return keys


# ---------------------------------------------------------------- pass@k and token budgets


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(keys: list, correct: list[bool]) -> bool:
    """maj@k of one problem's k samples (in seed order): the most frequent answer key wins, and
    the problem counts when that answer was judged correct. Samples with no answer (None) cast
    no vote; none at all scores incorrect. A tie goes to the answer whose first vote came first
    (the lowest seed): deterministic, and independent of how answers are spelled."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None or (isinstance(key, float) and math.isnan(key)):
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return False
    winner = max(counts, key=lambda key: (counts[key], -first[key]))
    return any(bool(c) for key, c in zip(keys, correct, strict=True) if key == winner)


def _answer_keys(evals: pd.DataFrame) -> pd.Series | None:
    """The vote keys of eval rows: `answer_key`, else (rows of earlier runs) the normalised pred."""
    if "answer_key" in evals.columns:
        return evals["answer_key"]
    if "pred" in evals.columns:
        from tops.answers import normalize_text

        return evals["pred"].map(lambda p: None if p is None or pd.isna(p) else normalize_text(p))
    return None


def maj_at_k(group: pd.DataFrame, k: int) -> float:
    """Mean maj@k over the problems of `group` with at least k samples (first k by seed); NaN
    when none has k, or the rows carry no answers to vote with."""
    keys = _answer_keys(group)
    if keys is None:
        return float("nan")
    frame = pd.DataFrame({"problem_id": group["problem_id"].to_numpy(), "seed": group["seed"].to_numpy(),
                          "key": keys.to_numpy(), "correct": group["correct"].to_numpy(bool)})
    scores = [majority_correct(part["key"].tolist()[:k], part["correct"].tolist()[:k])
              for _, part in frame.sort_values("seed", kind="stable").groupby("problem_id", sort=False)
              if len(part) >= k]
    return float(np.mean(scores)) if scores else float("nan")


def default_budgets(evals: pd.DataFrame) -> list[int]:
    """Quarters of the longest response, when no budgets are configured."""
    top = int(evals["n_tokens"].max()) if len(evals) else 0
    return sorted({max(1, math.ceil(top * q / 4)) for q in (1, 2, 3, 4)}) if top else []


def metrics(evals: pd.DataFrame, by: list[str], pass_ks: list[int], budgets: list[int],
            maj_ks: list[int] = ()) -> pd.DataFrame:
    """Per group: problems, samples, accuracy, mean tokens, mean tokens of correct answers,
    pass@k and maj@k for each k (problems with fewer than k samples left out) and accuracy at
    each budget."""
    rows = []
    for key, group in evals.groupby(by, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        per_problem = group.groupby("problem_id")["correct"].agg(["size", "sum"])
        row = dict(zip(by, key, strict=True))
        row.update(problems=len(per_problem), samples=len(group), accuracy=float(group["correct"].mean()),
                   mean_tokens=float(group["n_tokens"].mean()),
                   mean_tokens_correct=float(group.loc[group["correct"], "n_tokens"].mean())
                   if group["correct"].any() else float("nan"))
        for k in pass_ks:
            enough = per_problem[per_problem["size"] >= k]
            row[f"pass@{k}"] = (float(np.mean([pass_at_k(int(n), int(c), k) for n, c in enough.to_numpy()]))
                                if len(enough) else float("nan"))
        for k in maj_ks:
            row[f"maj@{k}"] = maj_at_k(group, k)
        for budget in budgets:
            row[f"acc@{budget}"] = float((group["correct"] & (group["n_tokens"] <= budget)).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _with_benchmark(evals: pd.DataFrame) -> pd.DataFrame:
    if "benchmark" in evals.columns:
        return evals.assign(benchmark=evals["benchmark"].fillna("held-out"))
    return evals.assign(benchmark="held-out")


def default_ks(evals: pd.DataFrame) -> list[int]:
    """k for pass@k and maj@k when none is configured: the samples per problem (when over 1)."""
    samples = int(evals.groupby(["model", "effort", "problem_id"]).size().min()) if len(evals) else 1
    return [samples] if samples > 1 else []


def metrics_table(evals: pd.DataFrame, order: list[str] | None = None, pass_ks: list[int] | None = None,
                  budgets: list[int] | None = None, difficulty_order: list[str] | None = None,
                  maj_ks: list[int] | None = None) -> str:
    """Markdown: one row per model, effort and benchmark ("all" difficulties), then one per
    difficulty and one per subject of that benchmark, with pass@k, maj@k (default: the k of
    pass@k) and accuracy at each token budget."""
    evals = _with_benchmark(evals)
    pass_ks = default_ks(evals) if pass_ks is None else pass_ks
    maj_ks = pass_ks if maj_ks is None else maj_ks
    budgets = default_budgets(evals) if budgets is None else budgets
    keys = ["model", "effort", "benchmark"]
    overall = metrics(evals, keys, pass_ks, budgets, maj_ks).assign(difficulty="all")
    by_diff = metrics(evals[evals["difficulty"].notna()], [*keys, "difficulty"], pass_ks, budgets, maj_ks)
    if "subject" in evals.columns and evals["subject"].notna().any():
        by_subject = metrics(evals[evals["subject"].notna()], [*keys, "subject"], pass_ks, budgets, maj_ks)
        by_diff = pd.concat([by_diff, by_subject.rename(columns={"subject": "difficulty"}).assign(
            _subject=True)], ignore_index=True)
    order = order or list(dict.fromkeys(evals["model"]))
    header = ["model", "effort", "benchmark", "difficulty / subject", "problems", "accuracy", "mean tokens",
              "tokens (correct)", *[f"pass@{k}" for k in pass_ks], *[f"maj@{k}" for k in maj_ks],
              *[f"acc ≤{b} tok" for b in budgets]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(row) -> list[str]:
        return [row["model"], row["effort"], row["benchmark"], str(row["difficulty"]), str(row["problems"]),
                f"{row['accuracy']:.3f}", f"{row['mean_tokens']:.1f}", _tokens_cell(row["mean_tokens_correct"]),
                *["–" if pd.isna(row[f"pass@{k}"]) else f"{row[f'pass@{k}']:.3f}" for k in pass_ks],
                *["–" if pd.isna(row[f"maj@{k}"]) else f"{row[f'maj@{k}']:.3f}" for k in maj_ks],
                *[f"{row[f'acc@{b}']:.3f}" for b in budgets]]

    overall["_model"] = overall["model"].map({m: i for i, m in enumerate(order)})
    overall["_effort"] = overall["effort"].map(_effort_rank)
    overall = overall.sort_values(["_model", "_effort"], kind="stable")
    for _, row in overall.iterrows():
        lines.append("| " + " | ".join(cells(row)) + " |")
        mine = by_diff[(by_diff["model"] == row["model"]) & (by_diff["effort"] == row["effort"])
                       & (by_diff["benchmark"] == row["benchmark"])] if len(by_diff) else by_diff
        subjects = mine["_subject"].eq(True) if "_subject" in mine.columns else pd.Series(False, index=mine.index)
        for part, preferred in ((mine[~subjects], difficulty_order), (mine[subjects], None)):
            for d in ordered_difficulties(part["difficulty"].unique() if len(part) else [], preferred):
                lines.append("| " + " | ".join(cells(part[part["difficulty"] == d].iloc[0])) + " |")
    return "\n".join(lines)


def _effort_rank(effort: str) -> tuple[int, str]:
    return (EFFORT_ORDER.index(effort), effort) if effort in EFFORT_ORDER else (9, effort)


def plot_budget_accuracy(evals: pd.DataFrame, path: Path, budgets: list[int] | None = None) -> Path:
    """Accuracy against the token budget, one curve per model and effort, one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = _with_benchmark(evals)
    benchmarks = list(dict.fromkeys(evals["benchmark"]))
    top = max(int(evals["n_tokens"].max()) if len(evals) else 1, *(budgets or [1]))
    grid = np.unique(np.linspace(0, top, 41).round().astype(int))
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(5 * len(benchmarks), 3.8), squeeze=False)
    for ax, bench in zip(axes[0], benchmarks, strict=True):
        part = evals[evals["benchmark"] == bench]
        for (model, effort), group in part.groupby(["model", "effort"], sort=False):
            tokens, correct = group["n_tokens"].to_numpy(), group["correct"].to_numpy(bool)
            curve = [(correct & (tokens <= b)).mean() for b in grid]
            ax.plot(grid, curve, label=model if effort == "none" else f"{model} ({effort})")
        for b in budgets or []:
            ax.axvline(b, color="#cccccc", lw=0.8, zorder=0)
        ax.set(title=bench, xlabel="token budget", ylabel="accuracy within budget", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def several_seeds(evals: pd.DataFrame) -> bool:
    """More than one sample per problem: only then is there a spread over seeds."""
    return evals["seed"].nunique() > 1


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
                   difficulty_order: list[str] | None = None, pass_ks: list[int] | None = None,
                   budgets: list[int] | None = None, maj_ks: list[int] | None = None) -> str:
    """Model x effort rows: overall accuracy ± spread over seeds, its bootstrap interval over
    problems, mean tokens, then per difficulty; below it the per-benchmark / per-difficulty /
    per-subject table with pass@k, maj@k and budget accuracy (`metrics_table`)."""
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
    with_spread = several_seeds(evals)
    for _, row in overall.sort_values(["_order", "_effort"]).iterrows():
        ci = intervals[(row["model"], row["effort"])]
        accuracy = f"{row['accuracy']:.3f}" + (f" ± {row['acc_std']:.3f}" if with_spread else "")
        cells = [row["model"], row["effort"], accuracy,
                 f"{ci.low:.2f}–{ci.high:.2f}", f"{row['mean_tokens']:.1f}", _tokens_cell(row["mean_tokens_correct"])]
        for d in difficulties:
            hit = by_diff[(by_diff["model"] == row["model"]) & (by_diff["effort"] == row["effort"])
                          & (by_diff["difficulty"] == d)]
            cells.append(f"{hit['accuracy'].iloc[0]:.2f} / {hit['mean_tokens'].iloc[0]:.0f}" if len(hit) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + metrics_table(evals, order, pass_ks, budgets, difficulty_order, maj_ks)
