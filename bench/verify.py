"""Verify-stage throughput: a plain single-process math-verify loop vs `verify_samples`.

Builds ~5,000 synthetic responses (integers, thousands separators, fractions in several
spellings, decimals, LaTeX expressions, wrong and missing answers, thinking blocks), then prints
checks/s for the plain loop, the one-off start-up of the worker server, checks/s for
verify_samples with 1 and 2 workers, the ratios, and the wall time one pathological answer adds
to a batch next to its timeout, and the time per row of hostile 1 MB responses (unclosed boxes,
open braces, runs of spaces after an answer phrase, ...) next to the per-item timeout, with the
quadratic extraction this replaced as the baseline. The machine's load average is printed too:
timings taken beside other jobs move by seconds.

Run: .venv/bin/python bench/verify.py
"""

from __future__ import annotations

import logging
import os
import random
import time

import pandas as pd

from tops.answers import extract_answer, gold_answer
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


MB = 1 << 20
HOSTILE = {
    "unclosed \\boxed{": "\\boxed{" * (MB // 7),
    "open braces in a box": "\\boxed{" + "{" * MB,
    "a 1 MB box": "\\boxed{" + "1" * MB + "}",
    "answer phrase + 1 MB of spaces": "The answer is" + " " * MB,
    "answer phrase + 1 MB of $": "The answer is " + "$" * MB,
    "1 MB of joined boxes": "\\boxed{1} and \\boxed{2} and " * (MB // 28),
    "'= 1 Wait' repeated": "= 1 Wait " * (MB // 9),
    "1 MB of newlines": "\n" * MB,
}


def _old_last_boxed(text: str) -> str | None:
    """The extraction this replaced: a brace scan from every box to the end (quadratic)."""
    import re

    def group(open_index: int) -> str | None:  # the old _balanced_group, verbatim
        depth = 0
        i = open_index
        while i < len(text):
            char = text[i]
            if char == "\\":
                i += 2
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[open_index + 1 : i]
            i += 1
        return None

    for match in reversed(list(re.finditer(r"\\boxed\s*\{", text))):
        content = group(match.end() - 1)
        if content is not None:
            return content
    return None


def hostile_rows(cfg: VerifyConfig) -> None:
    """Hostile 1 MB responses through verify_samples: time per row against the per-item timeout."""
    frame = pd.DataFrame({
        "problem_id": [f"h{i}" for i in range(len(HOSTILE))], "question": "q", "answer": "7", "difficulty": None,
        "effort": "low", "sample_idx": 0, "response": list(HOSTILE.values()), "n_tokens": 1, "finish_reason": "stop",
    })
    seconds, summary = timed_verify(frame, cfg)
    slowest = max((_extraction_seconds(text), name) for name, text in HOSTILE.items())
    print(f"hostile 1 MB responses: {len(frame)} rows in {seconds:.2f} s = {seconds / len(frame):.3f} s/row "
          f"(per-item timeout {cfg.timeout_s:.1f} s); slowest extraction {slowest[0]:.3f} s ({slowest[1]}); "
          f"statuses ok={summary['ok']} no_answer={summary['no_answer']} timeout={summary['timeout']} "
          f"error={summary['error']}")
    unclosed = "\\boxed{" * 2000
    start = time.perf_counter()
    _old_last_boxed(unclosed)
    old_s = time.perf_counter() - start
    new_s = _extraction_seconds(unclosed)
    print(f"2,000 unclosed \\boxed{{ (14 KB): quadratic scan {old_s:.2f} s, now {new_s:.4f} s "
          f"({old_s / max(new_s, 1e-9):.0f}x)")


def _extraction_seconds(text: str) -> float:
    start = time.perf_counter()
    extract_answer(text)
    gold_answer(text)
    return time.perf_counter() - start


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
    hostile_rows(cfg)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
