"""Verify-stage throughput: a plain single-process math-verify loop vs `verify_samples`.

Builds ~5,000 synthetic responses (integers, thousands separators, fractions in several
spellings, decimals, LaTeX expressions, wrong and missing answers, thinking blocks), then prints
checks/s for the plain loop, the one-off start-up of the worker server, checks/s for
verify_samples with 1 and 2 workers, the ratios, and the wall time one pathological answer adds
to a batch next to its timeout. The machine's load average is printed too: timings taken beside
other jobs move by seconds.

Run: .venv/bin/python bench/verify.py
"""

from __future__ import annotations

import logging
import os
import random
import time

import pandas as pd

from tops.config import VerifyConfig
from tops.verify import verify_samples

PROBLEMS = 1000
SAMPLES_PER_PROBLEM = 5
PATHOLOGICAL = r"\boxed{9^{9^{9^{9}}}}"


def _gold_and_spellings(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """One gold answer, equivalent spellings of it, and wrong answers of the same kind."""
    kind = rng.choice(["int", "big_int", "fraction", "decimal", "sqrt", "pi", "expr", "tuple"])
    n = rng.randint(2, 99)
    if kind == "int":
        return str(n), [str(n), f"{n}.0", f"{n} \\text{{ cm}}"], [str(n + 1), str(-n)]
    if kind == "big_int":
        big = rng.randint(1000, 999_999)
        return str(big), [f"{big:,}", str(big)], [str(big + 10), f"{big // 10:,}"]
    if kind == "fraction":
        den = rng.choice([3, 7, 9, 11, 13])
        return (f"\\frac{{{n}}}{{{den}}}", [f"\\dfrac{{{n}}}{{{den}}}", f"{n}/{den}", f"\\tfrac{{{n}}}{{{den}}}"],
                [f"\\frac{{{n + 1}}}{{{den}}}", f"{den}/{n}"])
    if kind == "decimal":
        value = n / 8
        return str(value), [str(value), f"{value}0", f"\\frac{{{n}}}{{8}}"], [str(value + 0.5), str(round(value) + 0.01)]
    if kind == "sqrt":
        return (f"{n}\\sqrt{{2}}", [f"{n}\\sqrt{{2}}", f"\\sqrt{{{2 * n * n}}}", f"{n} \\sqrt 2"],
                [f"{n}\\sqrt{{3}}", f"\\sqrt{{{2 * n}}}"])
    if kind == "pi":
        return (f"\\frac{{\\pi}}{{{n}}}", [f"\\frac{{\\pi}}{{{n}}}", f"\\pi/{n}", f"\\frac{{1}}{{{n}}}\\pi"],
                [f"\\frac{{\\pi}}{{{n + 1}}}", f"{n}\\pi"])
    if kind == "expr":
        return (f"x^2 + {n}x", [f"x^2+{n}x", f"x({n}+x)", f"{n}x + x^2"], [f"x^2 - {n}x", f"x^2 + {n + 1}x"])
    return f"({n}, {n + 1})", [f"({n},{n + 1})", f"\\left({n}, {n + 1}\\right)"], [f"({n + 1}, {n})", f"({n}, {n + 2})"]


def _response(rng: random.Random, answer: str | None) -> str:
    reasoning = " ".join(rng.choice(["First,", "we compute", "the sum", "so that", "hence", "$x = 2$",
                                     "by symmetry", "which gives", "\\frac{a}{b}", "and"])
                         for _ in range(rng.randint(40, 160)))
    if answer is None:
        return reasoning + " I am not sure."
    ending = rng.choice([f"So the answer is \\boxed{{{answer}}}.",
                         f"Therefore $\\boxed{{{answer}}}$ is the result. Let me double check: yes.",
                         f"The final answer is ${answer}$."])
    if rng.random() < 0.3:
        return f"<think>{reasoning} maybe \\boxed{{0}}?</think>\n{ending}"
    return f"{reasoning}\n{ending}"


def build_samples(seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    records = []
    for problem in range(PROBLEMS):
        gold, right, wrong = _gold_and_spellings(rng)
        for sample_idx in range(SAMPLES_PER_PROBLEM):
            roll = rng.random()
            answer = rng.choice(right) if roll < 0.55 else None if roll > 0.9 else rng.choice(wrong)
            records.append({
                "problem_id": f"p{problem}", "question": "q", "answer": gold, "difficulty": None,
                "effort": "medium", "sample_idx": sample_idx, "response": _response(rng, answer),
                "n_tokens": 100, "finish_reason": "stop",
            })
    return pd.DataFrame(records)


def plain_loop(df: pd.DataFrame) -> tuple[float, int]:
    """What one would write without tops: math-verify on the raw response, one process."""
    from math_verify import parse, verify

    start = time.perf_counter()
    correct = 0
    for gold, response in zip(df["answer"], df["response"], strict=True):
        correct += verify(parse(f"${gold}$", parsing_timeout=None), parse(response, parsing_timeout=None),
                          timeout_seconds=None)
    return time.perf_counter() - start, correct


def timed_verify(df: pd.DataFrame, cfg: VerifyConfig) -> tuple[float, dict]:
    start = time.perf_counter()
    _, summary = verify_samples(df, cfg, progress=False)
    return time.perf_counter() - start, summary


def main() -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    df = build_samples()
    rows = len(df)
    print(f"rows: {rows}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    loop_s, loop_correct = plain_loop(df)
    print(f"plain math-verify loop, 1 process: {rows / loop_s:8.1f} checks/s  ({loop_s:.2f} s, {loop_correct} correct)")
    startup_s, _ = timed_verify(df.iloc[:10], VerifyConfig(workers=2))
    print(f"first verify_samples call in a process (starts the worker server), 10 rows: {startup_s:.2f} s")
    results = {}
    for workers in (1, 2):
        seconds, summary = timed_verify(df, VerifyConfig(workers=workers))
        results[workers] = seconds
        print(f"verify_samples, {workers} worker(s):       {rows / seconds:8.1f} checks/s  ({seconds:.2f} s, "
              f"{summary['correct']} correct, statuses ok={summary['ok']} no_answer={summary['no_answer']} "
              f"timeout={summary['timeout']} error={summary['error']})")
    print(f"ratio verify_samples(2 workers) / plain loop: {loop_s / results[2]:.2f}x")
    print(f"ratio verify_samples 2 workers / 1 worker:    {results[1] / results[2]:.2f}x")

    # One pathological answer in the middle of 2,000 rows; best of two runs each, since other
    # jobs on the machine move single timings by seconds.
    cfg = VerifyConfig(workers=2)
    subset = df.iloc[:2000]
    bad = subset.iloc[[1000]].assign(response=f"So {PATHOLOGICAL}.")
    with_bad = pd.concat([subset.iloc[:1000], bad, subset.iloc[1000:]], ignore_index=True)
    clean_s = min(timed_verify(subset, cfg)[0] for _ in range(2))
    bad_runs = [timed_verify(with_bad, cfg) for _ in range(2)]
    bad_s = min(seconds for seconds, _ in bad_runs)
    print(f"one pathological answer in {len(with_bad)} rows: {bad_s - clean_s:+.2f} s wall "
          f"({clean_s:.2f} s -> {bad_s:.2f} s) vs its timeout {cfg.timeout_s:.1f} s; "
          f"marked timeout: {[summary['timeout'] for _, summary in bad_runs]}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
