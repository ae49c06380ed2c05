"""A synthetic arithmetic world: exact answers, difficulty levels, a programmatic teacher.

Difficulty is the number of digits per operand: carries make column arithmetic genuinely
harder for a small model, so written working should help on hard problems and add nothing
on easy ones — the shape TOPS needs.
"""

from __future__ import annotations

import hashlib
import random

import pandas as pd

from tops.config import ArithLevel, ArithSource


def problem_id_for(question: str) -> str:
    """Ids are content hashes: the same question always has the same id, whatever its seed,
    so held-out sets can be checked for overlap by id."""
    return "arith-" + hashlib.sha1(question.encode()).hexdigest()[:12]


def _operands(level: ArithLevel, rng: random.Random) -> list[int]:
    low = 0 if level.digits == 1 else 10 ** (level.digits - 1)
    return [rng.randint(low, 10**level.digits - 1) for _ in range(level.operands)]


def make_problem(level_name: str, level: ArithLevel, rng: random.Random) -> dict:
    values = _operands(level, rng)
    ops = [rng.choice(level.ops) for _ in range(len(values) - 1)]
    expression = str(values[0])
    for op, value in zip(ops, values[1:], strict=True):
        expression += f" {op} {value}"
    question = f"What is {expression}?"
    answer = eval(expression)  # the expression is built from ints and + - * only
    return {"problem_id": problem_id_for(question), "question": question, "answer": str(answer),
            "difficulty": level_name, "operands": values, "ops": ops}


def make_problems(source: ArithSource, n: int, seed: int) -> pd.DataFrame:
    """`n` distinct problems spread evenly over the levels (round-robin), reproducible by seed."""
    rng = random.Random(f"arith:{seed}")
    names = list(source.levels)
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n:
        name = names[len(rows) % len(names)]
        row = make_problem(name, source.levels[name], rng)
        attempts += 1
        if row["problem_id"] in seen:
            if attempts > 50 * n:
                raise ValueError(f"arith: cannot draw {n} distinct problems from these levels")
            continue
        seen.add(row["problem_id"])
        rows.append(row)
    return pd.DataFrame(rows)
