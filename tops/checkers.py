"""Answer checkers by name: the contract every checker meets, the built-ins (`math`, `exact`,
`choice`) and third-party checkers registered as Python entry points (group `tops.checkers`).

Why a contract: verify, select, pairs and eval all score through the same `correct` column, so
one checker, chosen by `verify.checker`, decides correctness everywhere. A checker is installed
code, chosen by name: nothing read from data or configs is imported or run.

The contract (tops.checkers.Checker). Inputs are strings: the problems' `answer` column and the
model's whole response. The verify stage, for each row:
1. a response cut off inside its thinking is `no_answer` before any checker sees it;
2. `gold(answer)` -> the comparable gold answer (raising ValueError: status `error`);
3. `extract(response, answer_phrases)` -> the final answer, or None (status `no_answer`);
   an answer over tops.answers.MAX_ANSWER_CHARS is not judged (status `error`);
4. `quick(gold, pred)` -> True / False, or None when it cannot decide cheaply;
5. undecided rows go to `equal(gold, pred)` in a worker process with a deadline of
   `verify.timeout_s` per row: past it the worker is killed (status `timeout`); an exception or
   a crashed worker is status `error`. Errors and timeouts score incorrect.
`gold`, `extract`, `quick` and `vote_key` run in the stage's own process on every row and must
be linear in their input (the built-ins are); an exception there is that row's `error`.
`vote_key(pred)` is the normalised answer majority voting counts (maj@k in tops.evaluate).
"""

from __future__ import annotations

import re
from functools import cache
from importlib.metadata import entry_points

from tops import answers
from tops.choices import extract_choice, gold_choice
from tops.errors import UserError

ENTRY_POINT_GROUP = "tops.checkers"
NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


class Checker:
    """Base class and contract of a checker (see the module docstring); override what differs."""

    name = "checker"

    def gold(self, answer: str) -> str:
        return answers.gold_answer(answer)

    def extract(self, response: str, answer_phrases: bool = True) -> str | None:
        return answers.extract_answer(response, answer_phrases)

    def quick(self, gold: str, pred: str) -> bool | None:
        return None

    def equal(self, gold: str, pred: str) -> bool:
        raise NotImplementedError(f"checker {self.name} has no equal()")

    def vote_key(self, pred: str) -> str:
        return answers.normalize_text(pred)


# ---------------------------------------------------------------- math


def numeric_verdict(gold: str, pred: str) -> bool | None:
    """Exact numeric comparison when both answers are plain numbers; None otherwise."""
    gold_number, pred_number = answers.parse_number(gold), answers.parse_number(pred)
    if gold_number is None or pred_number is None:
        return None
    return answers.numbers_equal(gold_number, pred_number)


def fallback_verdict(gold: str, pred: str) -> bool:
    """The plain checker on its own (second_checker "numeric"): numbers, else exact text."""
    verdict = numeric_verdict(gold, pred)
    return verdict if verdict is not None else answers.normalize_text(gold) == answers.normalize_text(pred)


def _as_latex(answer: str) -> str:
    """An extracted answer in the form math-verify extracts from: a box, or `$...$` when its
    braces do not balance."""
    text = answers.strip_math_delimiters(answer)
    return f"\\boxed{{{text}}}" if answers.braces_balanced(text) else f"${text}$"


def math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify's verdict, with no timeout of its own: run it where a hang can be killed.

    Raises when math-verify fails or finds nothing in the gold answer (the row cannot be judged).
    """
    from math_verify import parse, verify  # imported on use: sympy is slow to import

    gold_parsed = parse(_as_latex(gold), parsing_timeout=None, raise_on_error=True)
    if not gold_parsed:
        raise ValueError("math-verify found no expression in the gold answer")
    pred_parsed = parse(_as_latex(pred), parsing_timeout=None, raise_on_error=True)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True))


class MathChecker(Checker):
    """Final answers of maths problems: two plain numbers compare exactly here (math-verify is
    lenient there: tiny values round together, 50% equals 0.5), equal normalised text is equal,
    everything else goes to math-verify (`verify(parse(gold), parse(pred))`, gold first)."""

    name = "math"

    def quick(self, gold: str, pred: str) -> bool | None:
        verdict = numeric_verdict(gold, pred)
        if verdict is None and answers.normalize_text(gold) == answers.normalize_text(pred):
            return True
        return verdict

    def equal(self, gold: str, pred: str) -> bool:
        return math_verify_equal(gold, pred)

    def vote_key(self, pred: str) -> str:
        number = answers.parse_number(pred)  # 1,000 and 1000.0 are one vote
        return f"= {number.value}" if number is not None else answers.normalize_text(pred)


class ExactChecker(Checker):
    """The stated answer as text, equal after normalisation (delimiters, spacing, `\\text{}`):
    names, codes, words. No symbolic maths, so nothing to time out."""

    name = "exact"

    def gold(self, answer: str) -> str:
        return answers.normalize_text(answers.gold_answer(answer))

    def quick(self, gold: str, pred: str) -> bool:
        return answers.normalize_text(gold) == answers.normalize_text(pred)

    equal = quick


class ChoiceChecker(Checker):
    """Multiple choice: the option letter (A-J) the reply picks (tops.choices) against the gold
    letter; two options named at once is no answer."""

    name = "choice"

    def gold(self, answer: str) -> str:
        return gold_choice(answer)

    def extract(self, response: str, answer_phrases: bool = True) -> str | None:
        return extract_choice(response)

    def quick(self, gold: str, pred: str) -> bool:
        return gold == pred

    equal = quick

    def vote_key(self, pred: str) -> str:
        return pred


BUILTINS: dict[str, type[Checker]] = {"math": MathChecker, "exact": ExactChecker, "choice": ChoiceChecker}


def registered() -> dict[str, object]:
    """Entry points of group `tops.checkers` by name (installed packages only; a built-in name
    cannot be taken over)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTINS}


def available() -> list[str]:
    return [*BUILTINS, *sorted(registered())]


def check_name(name: str) -> str:
    """`name` if it names a built-in or an installed checker; ValueError naming the choices."""
    if name in BUILTINS:
        return name
    if not NAME.fullmatch(name) or name not in registered():
        raise ValueError(f"unknown checker {name[:80]!r}: built-ins are {', '.join(BUILTINS)}; installed "
                         f"(entry points '{ENTRY_POINT_GROUP}'): {', '.join(sorted(registered())) or 'none'}")
    return name


@cache
def get_checker(name: str) -> Checker:
    """The checker called `name`: a built-in, else the installed entry point of that name, which
    must load a tops.checkers.Checker subclass or instance."""
    try:
        check_name(name)
    except ValueError as exc:
        raise UserError(f"verify.checker: {exc}") from None
    if name in BUILTINS:
        return BUILTINS[name]()
    entry = registered()[name]
    try:
        loaded = entry.load()
    except Exception as exc:
        raise UserError(f"checker {name}: entry point {entry.value!r} does not load "
                        f"({exc.__class__.__name__}: {str(exc)[:200]})") from exc
    checker = loaded() if isinstance(loaded, type) and issubclass(loaded, Checker) else loaded
    if not isinstance(checker, Checker):
        raise UserError(f"checker {name}: entry point {entry.value!r} is not a tops.checkers.Checker")
    return checker
