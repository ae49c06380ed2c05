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
from tops.errors import UserError


def problem_id_for(question: str) -> str:
    """Ids are content hashes: the same question always has the same id, whatever its seed,
    so held-out sets can be checked for overlap by id."""
    return "arith-" + hashlib.sha1(question.encode()).hexdigest()[:12]


def _operands(level: ArithLevel, rng: random.Random) -> list[int]:
    return [rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1) for d in level.digits_per_operand]


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


def make_problems(source: ArithSource, n: int, seed: int, exclude=frozenset()) -> pd.DataFrame:
    """`n` distinct problems spread evenly over the levels (round-robin), reproducible by seed."""
    rng = random.Random(f"arith:{seed}")
    names = list(source.levels)
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n:
        name = names[len(rows) % len(names)]
        row = make_problem(name, source.levels[name], rng)
        attempts += 1
        if row["problem_id"] in seen or row["problem_id"] in exclude:
            if attempts > 50 * n:
                raise UserError(f"arith: cannot draw {n} distinct unused problems from these levels")
            continue
        seen.add(row["problem_id"])
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the programmatic teacher

_PLACES = ["Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands", "Hundred-thousands"]


def _expression(values: list[int], ops: list[str]) -> str:
    text = str(values[0])
    for op, value in zip(ops, values[1:], strict=True):
        text += f" {op} {value}"
    return text


def _column_addition(a: int, b: int) -> list[str]:
    """One line per digit column, right to left, with the carry written out."""
    lines, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        place = _PLACES[i] if i < len(_PLACES) else f"Column {i + 1}"
        lines.append(f"{place}: {terms} = {total}, write {total % 10}, carry {total // 10}.")
        carry = total // 10
    if carry:
        lines.append(f"Final carry: write {carry}.")
    return lines


def _no_carry_sum(a: int, b: int) -> int:
    """The classic slip: add each column and forget the carries."""
    da, db = str(a)[::-1], str(b)[::-1]
    digits = [((int(da[i]) if i < len(da) else 0) + (int(db[i]) if i < len(db) else 0)) % 10
              for i in range(max(len(da), len(db)))]
    return int("".join(str(d) for d in reversed(digits)))


def _working(values: list[int], ops: list[str]) -> list[str]:
    if len(values) == 2 and ops == ["+"]:
        return ["Add column by column, from the right.", *_column_addition(*values)]
    lines, running = [], values[0]
    for step, (op, value) in enumerate(zip(ops, values[1:], strict=True), start=1):
        result = eval(f"{running} {op} {value}")
        lines.append(f"Step {step}: {running} {op} {value} = {result}.")
        running = result
    return lines


def teacher_response(values: list[int], ops: list[str], effort: str) -> str:
    """The arith teacher's answer at one effort.

    low: the result only. medium: written working, one line per column or step. high: a quick
    first attempt that is checked (and, when it forgot a carry, caught and redone), then the
    working and a verification by the inverse operation — longer, with a reflection round.
    """
    expr = _expression(values, ops)
    result = eval(expr)
    final = f"The answer is \\boxed{{{result}}}."
    if effort == "low":
        return f"{expr} = {result}.\n{final}"
    working = _working(values, ops)
    if effort == "medium":
        return "\n".join([*working, f"So {expr} = {result}.", final])
    lines = []
    if len(values) == 2 and ops == ["+"]:
        a, b = values
        guess = _no_carry_sum(a, b)
        lines.append(f"First try: {expr} = {guess}.")
        if guess != result:
            lines.append(f"Wait, let me check: {guess} - {b} = {guess - b}, not {a}. "
                         "I dropped a carry, so I will redo it carefully.")
        else:
            lines.append("Let me verify this carefully, column by column.")
    lines += working
    lines.append(f"So {expr} = {result}.")
    if len(values) == 2 and ops == ["+"]:
        lines.append(f"Check: {result} - {values[1]} = {values[0]}. Correct.")
    else:
        lines.append(f"Check: recomputing {expr} gives {result} again. Correct.")
    lines.append(final)
    return "\n".join(lines)
