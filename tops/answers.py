"""Final-answer extraction from model responses and the plain-number normalisation behind the
fallback checker.

Extraction is a linear scan (no backtracking regex over the whole response), so it is safe to
run in the parent process on every row; only the symbolic comparison needs a sandboxed worker.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import NamedTuple

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# `\boxed 5` / `\boxed5`: TeX boxes the next token; models mean the number that follows.
# Only a number or a single letter counts, on the same line: "use \boxed to mark" is no answer.
_BOX_ANY = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*")
_BARE_TOKEN = re.compile(r"[+-]?[\d.][^\s{}$\\]*|[A-Za-z](?![A-Za-z])")
_OPEN_BRACE = re.compile(r"\s*\{")
# "The final answer is $5$", "Final Answer: 5", "the answer is: 5", "**Answer:** 5", "#### 5".
_ANSWER_PHRASE = re.compile(r"(?:\banswer\s*(?:is\b|:)|####)[\s:*]*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")

# Longest answer text the number parser looks at: keeps Fraction/int work bounded.
_MAX_NUMBER_TEXT = 120
_MAX_EXPONENT = 400


# ---------------------------------------------------------------- extraction


def _balanced_group(text: str, open_index: int) -> str | None:
    """Content of the brace group opening at text[open_index], or None if it never closes.

    Escaped braces (`\\{`, `\\}`) do not count, so `\\boxed{\\{1, 2\\}}` is read whole.
    """
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


def braces_balanced(text: str) -> bool:
    """True when every unescaped `{` in `text` is closed, in order (safe to wrap in a group)."""
    return _balanced_group("{" + text + "}", 0) == text


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` or `\\fbox{...}`, nested braces included;
    `\\boxed 5` without braces gives the token after it.

    A box cut off before its closing brace (a truncated response) is skipped in favour of an
    earlier complete one.
    """
    for match in reversed(list(_BOX_ANY.finditer(text))):
        brace = _OPEN_BRACE.match(text, match.end())
        if brace:
            content = _balanced_group(text, brace.end() - 1)
            if content is not None:
                return content
            continue
        bare = _BARE_TOKEN.match(text, match.end())
        if bare and bare.group().rstrip(".,;:"):
            return bare.group().rstrip(".,;:")
    return None


def strip_math_delimiters(text: str) -> str:
    """`$x$`, `$$x$$`, `\\(x\\)`, `\\[x\\]` -> `x` (repeatedly, for `$\\(x\\)$`)."""
    text = text.strip()
    while True:
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : -len(right)].strip()
                break
        else:
            return text


def _phrase_answer(text: str) -> str | None:
    """The answer stated after the last "answer is" style phrase, up to the end of its sentence."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip()
    line = rest.split("\n", 1)[0].strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if line.startswith(left):
            close = line.find(right, len(left))
            if close > 0:
                line = line[len(left) : close]
            break
    else:
        end = _SENTENCE_END.search(line)
        if end:
            line = line[: end.start()]
    answer = line.strip().strip("*").strip()
    return answer or None


def _answer_in(text: str, answer_phrases: bool) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    if answer_phrases:
        return _phrase_answer(text)
    return None


def extract_answer(response: str, answer_phrases: bool = True) -> str | None:
    """The response's final answer: the last `\\boxed{}`, else (when `answer_phrases`) the text
    after the last "The final answer is" / "Final Answer:" / "the answer is" / "####" phrase.

    Thinking blocks: the answer is read from the text after the last `</think>`. Only when
    nothing at all follows a closed block is the block's own answer used (the model put its
    whole reply inside the thinking). A block that never closes was cut off mid-thought, so a
    tentative answer inside it is not an answer.
    """
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        after = response[close + len(THINK_CLOSE) :]
        if after.strip():
            return _answer_in(after, answer_phrases)
        return _answer_in(response[:close], answer_phrases)
    if THINK_OPEN in response:
        return None
    return _answer_in(response, answer_phrases)


def gold_answer(answer: str) -> str:
    """The gold answer to compare against: a full solution is reduced to its last box (MATH)
    or to what follows its last "####" (GSM8K)."""
    boxed = last_boxed(answer)
    if boxed and boxed.strip():
        return boxed.strip()
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip()
    return answer.strip()


# ---------------------------------------------------------------- normalisation

_SPACING = re.compile(r"\\[,;:! ]|~")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}$")
_TRAILING_UNIT = re.compile(
    r"(?:\s*\\(?:text|textrm|mathrm|mbox|unit)\s*\{[^{}]*\}"  # \text{ cm}, \mathrm{kg}
    r"|\s*\^\s*\{?\\circ\}?|\s*\\circ|\s*\\degree|°"  # degrees
    r"|\s*\\?%"  # percent: the number before it is the answer
    r"|\s+[a-zA-Z]{2,}\.?(?:\^\{?\d\}?)?"  # " cm", " dollars", " m^2" (two letters or more)
    r"|\s+[a-zA-Z]+/[a-zA-Z]+"  # " m/s", " km/h"
    r")$"
)

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_DECIMAL = rf"[+-]?(?:{_DIGITS}(?:\.\d*)?|\.\d+)"
_PLAIN = re.compile(rf"({_DECIMAL})")
_SLASH = re.compile(rf"({_DECIMAL})/({_DECIMAL})")
_FRAC = re.compile(rf"([+-]?)\\frac(?:\{{({_DECIMAL})\}}|(\d))(?:\{{({_DECIMAL})\}}|(\d))")
_SCIENTIFIC = re.compile(rf"({_DECIMAL})(?:\\times|\\cdot|\*)10\^(?:\{{([+-]?\d+)\}}|(\d))")


def _unbox(text: str) -> str:
    """`\\boxed{x}` -> `x` when one box spans the whole text; anything else unchanged."""
    match = _BOX_START.match(text)
    if match:
        content = _balanced_group(text, match.end() - 1)
        if content is not None and match.end() + len(content) + 1 == len(text):
            return content.strip()
    return text


def normalize_text(answer: str) -> str:
    """Canonical spelling for exact comparison: no delimiters, spacing, sizing or whitespace;
    `\\dfrac`/`\\tfrac` are `\\frac`; a whole `\\text{...}` is unwrapped."""
    text = strip_math_delimiters(answer)
    text = _unbox(text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SIZING.sub("", _SPACING.sub("", text))
    text = re.sub(r"(?<=\w)\s+(?=\w)", " ", text)  # "1 2" must not become "12"
    text = re.sub(r"(?<!\w)\s+|\s+(?!\w)", "", text).rstrip(".")
    wrapped = _TEXT_WRAPPER.match(text)
    return wrapped.group(1) if wrapped else text


class Number(NamedTuple):
    """A plain number: its exact value, and how many decimal places it was written with
    (None when written exactly: an integer or a fraction)."""

    value: Fraction
    decimals: int | None


def _decimal_value(literal: str) -> Fraction:
    return Fraction(literal.replace(",", ""))


def _decimal_places(literal: str) -> int | None:
    if "." not in literal:
        return None
    places = len(literal.split(".", 1)[1])
    return places or None


def parse_number(answer: str) -> Number | None:
    """The answer as a plain number, or None when it is anything else.

    Accepts "1,234", "5.0", "$5$", "\\$5", "5 \\text{ cm}", "50\\%", "-3", ".5", "3/4",
    "\\frac{3}{4}", "\\dfrac34", "-\\tfrac{1}{2}", "1.5 \\times 10^{3}". Units and percent signs
    are dropped: the number is the answer.
    """
    text = strip_math_delimiters(answer)
    if len(text) > _MAX_NUMBER_TEXT:
        return None
    text = _unbox(text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("−", "-")
    text = text.replace("{,}", ",").replace("\\$", "").replace("$", "")
    text = _SIZING.sub("", _SPACING.sub("", text)).strip().rstrip(".")
    wrapped = _TEXT_WRAPPER.match(text)
    if wrapped:
        text = wrapped.group(1).strip()
    while (unit := _TRAILING_UNIT.search(text)) and unit.start() > 0:
        text = text[: unit.start()].rstrip()
    if re.search(r"\d\s+\d", text):
        return None
    text = re.sub(r"\s+", "", text)
    return _number_from_canonical(text)


def _number_from_canonical(text: str) -> Number | None:
    if match := _PLAIN.fullmatch(text):
        literal = match.group(1)
        return Number(_decimal_value(literal), _decimal_places(literal))
    if match := _SLASH.fullmatch(text):
        numerator, denominator = (_decimal_value(g) for g in match.groups())
        return Number(numerator / denominator, None) if denominator else None
    if match := _FRAC.fullmatch(text):
        sign, numerator = match.group(1), match.group(2) or match.group(3)
        denominator = _decimal_value(match.group(4) or match.group(5))
        if not denominator:
            return None
        value = _decimal_value(numerator) / denominator
        return Number(-value if sign == "-" else value, None)
    if match := _SCIENTIFIC.fullmatch(text):
        exponent = int(match.group(2) or match.group(3))
        if abs(exponent) > _MAX_EXPONENT:
            return None
        return Number(_decimal_value(match.group(1)) * Fraction(10) ** exponent, None)
    return None


def _written_to(value: Fraction, places: int) -> set[Fraction]:
    """`value` rounded (half away from zero) and truncated to `places` decimals."""
    scaled = abs(value) * 10**places
    sign = -1 if value < 0 else 1
    return {Fraction(sign * int(scaled + Fraction(1, 2)), 10**places),
            Fraction(sign * int(scaled), 10**places)}


def numbers_equal(a: Number, b: Number) -> bool:
    """Exact equality, with one allowance: a decimal written to 3 or more places matches an
    exact value whose expansion does not end by then (0.333 or 0.3333 for 1/3, 0.667 or 0.666
    for 2/3) when it is that value rounded or truncated. Two terminating numbers must be equal."""
    if a.value == b.value:
        return True
    for approx, exact in ((a, b), (b, a)):
        places = approx.decimals
        if places is not None and places >= 3 and exact.decimals is None:
            terminates = (exact.value * 10**places).denominator == 1
            if not terminates and approx.value in _written_to(exact.value, places):
                return True
    return False
