"""A synthetic arithmetic world: exact answers, difficulty levels, a programmatic teacher.

Difficulty is the number of digits per operand: carries make column arithmetic genuinely
harder for a small model, so written working should help on hard problems and add nothing
on easy ones — the shape TOPS needs.
"""

from __future__ import annotations

import hashlib
import numbers
import operator
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
    answer = evaluate(values, ops)
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


_APPLY = {"+": operator.add, "-": operator.sub}
_MAX_OPERANDS = 12
_MAX_OPERAND_DIGITS = 18


def checked_expression(values, ops) -> tuple[list[int], list[str]]:
    """Operands and operators read from a problems file, as plain ints and "+", "-", "*".

    Raises ValueError for anything else: these come from data, and data is never run as code.
    """
    try:
        values, ops = list(values), list(ops)
    except TypeError:
        raise ValueError("operands and ops must be lists") from None
    if not 2 <= len(values) <= _MAX_OPERANDS or len(ops) != len(values) - 1:
        raise ValueError(f"needs 2 to {_MAX_OPERANDS} operands and one op between each two")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise ValueError("operands must be integers")
    values = [int(v) for v in values]
    if any(abs(v) >= 10**_MAX_OPERAND_DIGITS for v in values):
        raise ValueError(f"operands must have at most {_MAX_OPERAND_DIGITS} digits")
    if not all(isinstance(op, str) and op in ("+", "-", "*") for op in ops):
        raise ValueError("ops must each be '+', '-' or '*'")
    return values, [str(op) for op in ops]


def evaluate(values, ops) -> int:
    """The value of `v0 op v1 op v2 ...` with products first, then left to right: the
    arithmetic itself, computed on checked operands (no eval)."""
    values, ops = checked_expression(values, ops)
    terms, term_ops = [values[0]], []
    for op, value in zip(ops, values[1:], strict=True):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            term_ops.append(op)
    result = terms[0]
    for op, value in zip(term_ops, terms[1:], strict=True):
        result = _APPLY[op](result, value)
    return result


def _is_column_sum(values: list[int], ops: list[str]) -> bool:
    """Two multi-digit addends: the case column addition (with carries) is for."""
    return len(values) == 2 and ops == ["+"] and min(values) >= 10


def _working(values: list[int], ops: list[str]) -> list[str]:
    """Column addition for two multi-digit addends; otherwise one line per operation.

    The running form ("47 + 5 = 52.", "52 + 8 = 60.", ...) turns a long chain into a row of
    easy problems the model already solves directly: that is where working pays. The header
    opens with "To", the word SmolLM2-Instruct itself starts most answers with (p~0.7), so a
    model fine-tuned without effort prompts does not have to overcome its prior to work: with
    a "Work ..." header (p~0) the TOPS model answered directly on 38% of 5-number chains it
    had been taught to work through.
    """
    if _is_column_sum(values, ops):
        return ["To add these, go column by column, from the right.", *_column_addition(*values)]
    lines = []
    terms, term_ops = [values[0]], []
    for op, value in zip(ops, values[1:], strict=True):  # products first: 12 - 7 * 3 = 12 - 21
        if op == "*":
            lines.append(f"{terms[-1]} * {value} = {terms[-1] * value}.")
            terms[-1] *= value
        else:
            terms.append(value)
            term_ops.append(op)
    if lines and term_ops:
        lines.insert(0, "To solve this, multiply first, then work left to right.")
    elif not lines:
        lines.append("To solve this, work left to right, one number at a time.")
    running = terms[0]
    for op, value in zip(term_ops, terms[1:], strict=True):
        result = _APPLY[op](running, value)
        lines.append(f"{running} {op} {value} = {result}.")
        running = result
    return lines


_INVERSE = {"+": "-", "-": "+"}


def _check_lines(values: list[int], ops: list[str], result: int) -> list[str]:
    """A verification round: undo each step back to the first number, or redo the sum."""
    if _is_column_sum(values, ops):
        return [f"Check: {result} - {values[1]} = {values[0]}. Correct."]
    if all(op in _INVERSE for op in ops):
        lines, running = ["Let me double-check by undoing each step:"], result
        for op, value in reversed(list(zip(ops, values[1:], strict=True))):
            previous = _APPLY[_INVERSE[op]](running, value)
            lines.append(f"{running} {_INVERSE[op]} {value} = {previous}.")
            running = previous
        lines.append(f"That is the first number, {values[0]}. Correct.")
        return lines
    return [f"Check: recomputing {_expression(values, ops)} gives {result} again. Correct."]


def teacher_response(values: list[int], ops: list[str], effort: str) -> str:
    """The arith teacher's answer at one effort.

    low: the result only. medium: written working (columns for two multi-digit addends, one
    line per operation otherwise). high: the working, then a verification round that undoes
    every step; for a column sum, a quick first attempt comes first and, when it forgot a
    carry, is caught and redone (a wrong round for the masking stage to find).
    """
    values, ops = checked_expression(values, ops)
    expr = _expression(values, ops)
    result = evaluate(values, ops)
    final = f"The answer is \\boxed{{{result}}}."
    if effort == "low":
        return f"{expr} = {result}.\n{final}"
    working = _working(values, ops)
    if effort == "medium":
        return "\n".join([*working, f"So {expr} = {result}.", final])
    lines = []
    if _is_column_sum(values, ops):
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
    lines += _check_lines(values, ops, result)
    lines.append(final)
    return "\n".join(lines)
