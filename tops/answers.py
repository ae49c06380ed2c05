"""Final-answer extraction from model responses and the plain-number normalisation behind the
fallback checker. The answer rules live here once: verify, the dataset readers and the masking
stage all read answers through this module.

Every function here is linear in its input (brace matching is one pass, no regex backtracks
over an unbounded span twice), so it is safe to run in the parent process on every row, on
hostile text too; only the symbolic comparison needs a sandboxed worker.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from tops.thinking import answer_part

# An extracted answer longer than this is not an answer anyone wrote by hand: it is not
# normalised or checked (verify gives it status "error").
MAX_ANSWER_CHARS = 2000

# The answer grammar, as pattern text: the extractor below compiles it, and the masking stage's
# default answer patterns (BOXED_ANSWER_PATTERN, PHRASE_ANSWER_PATTERN) are built from it, so
# masking and verification agree on where an answer is stated.
BOX_COMMAND = r"\\(?:boxed|fbox)"
# `\boxed 5` / `\boxed5`: TeX boxes the next token; models mean the number that follows.
# Only a number or a single letter counts, on the same line: "use \boxed to mark" is no answer.
BARE_BOX = r"(?![A-Za-z])[ \t]*+"
BARE_TOKEN = r"[+-]?[\d.][^\s{}$\\]*|[A-Za-z](?![A-Za-z])"
# Answer markers: "The final answer is $5$", "Final Answer: 5", "the answer is: 5", "**Answer:** 5",
# "#### 5" (the last four of a run of #: a wall of # stays linear for the mask patterns), and a
# "**Final Answer**" heading with the answer on the next line (any case).
ANSWER_MARKER = r"(?:\banswer\s*(?:is\b|:)|\bfinal\s+answer\b\**[^\S\n]*\n|####(?!#))[\s:*]*+"

_BOX_START = re.compile(BOX_COMMAND + r"\s*\{")
_BOX_ANY = re.compile(BOX_COMMAND + BARE_BOX)
_BARE_TOKEN = re.compile(BARE_TOKEN)
_OPEN_BRACE = re.compile(r"\s*\{")
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.S)  # an escaped character, or a brace
# What may stand between two boxes that together state one answer: "$\boxed{-2}$ and
# $\boxed{1}$", "\boxed{3}, \boxed{5}", "x = \boxed{2} or x = \boxed{-2}".
_BOX_JOINER = re.compile(
    r"(?:\s|\$|\\[()\[\]]|[,;]|\band\b|\bor\b|\\quad|\\qquad|\\text\{\s*(?:and|or)\s*\}"
    r"|\b[A-Za-z](?:_\{?\d+\}?)?\s*=)*")
_MAX_JOINER_CHARS = 40

_ANSWER_PHRASE = re.compile(ANSWER_MARKER, re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# "$18" written as money (no closing `$` right after the number), not as math.
_CURRENCY = re.compile(r"\\?\$\s?([+-]?\d[\d,]*+(?:\.\d+)?+)(?![\d$])")
# A sentence after the marker that names the answer: "The volume of $X$ is 120 cubic units."
_PROSE = re.compile(r"\b[A-Za-z]{2,}+\s++[A-Za-z]{2}")  # two words in a row: not math
_COPULA = re.compile(r"\s(?:is|are|was|were|equals|be)\s+|=\s*|:\s+", re.IGNORECASE)
_STARTS_LIKE_MATH = re.compile(r"[-+−\d.\\({\[$]|[A-Za-z](?![A-Za-z])(?!\s+[A-Za-z]{2})")
_MATH_SEGMENT = re.compile(r"\$([^$]+)\$|\\\((.{1,200}?)\\\)")
_NUMBER_TOKEN = re.compile(r"[+-]?\d[\d,]*(?:\.\d+)?")

# The same grammar as regexes with a named group `answer`, for the masking stage, which finds
# every answer a response states (MaskConfig.answer_patterns), not only the final one. The box
# reads up to three levels of nested braces (or the bare token after `\boxed`); after a marker
# the answer is math, a number, else the sentence that names it. Possessive quantifiers (*+, ++)
# keep a long run of spaces from being rescanned (quadratic).
BOXED_ANSWER_PATTERN = (BOX_COMMAND + r"(?:\s*+\{(?P<answer>(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"
                        + "|" + BARE_BOX + "(?P<answer>" + BARE_TOKEN + "))")
PHRASE_ANSWER_PATTERN = ("(?i:" + ANSWER_MARKER + ")"
                         r"(?P<answer>\$[^$\n]{1,80}\$|-?[\d\\][\w\\^/.,{}()+\-]{0,60}"
                         r"|\S[^\n]{0,119}?(?=\.(?:\s|$)|\n|$))")

# Longest answer text the number parser looks at: keeps Fraction/int work bounded.
_MAX_NUMBER_TEXT = 120
_MAX_EXPONENT = 400


# ---------------------------------------------------------------- extraction


def _closing_braces(text: str, start: int = 0) -> dict[int, int]:
    """Index of each unescaped `{` from `start` on -> index of the `}` that closes it (unclosed
    ones absent). `start` must not fall inside an escape (a box's brace never does).

    One pass with a stack: escaped braces (`\\{`, `\\}`) do not count, so
    `\\boxed{\\{1, 2\\}}` is read whole.
    """
    closes: dict[int, int] = {}
    stack: list[int] = []
    for token in _BRACE_TOKENS.finditer(text, start):
        char = token.group()
        if char == "{":
            stack.append(token.start())
        elif char == "}":
            if stack:
                closes[stack.pop()] = token.start()
            # an unmatched `}` closes nothing
    return closes


def _balanced_group(text: str, open_index: int) -> str | None:
    """Content of the brace group opening at text[open_index], or None if it never closes."""
    depth = 0
    for token in _BRACE_TOKENS.finditer(text, open_index):
        char = token.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : token.start()]
    return None


def braces_balanced(text: str) -> bool:
    """True when every unescaped `{` in `text` is closed, in order (safe to wrap in a group)."""
    depth = 0
    for token in _BRACE_TOKENS.finditer(text):
        char = token.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete box, in order; a box cut off before its closing
    brace (a truncated response) is left out."""
    found = []
    closes: dict[int, int] | None = None
    for match in _BOX_ANY.finditer(text):
        brace = _OPEN_BRACE.match(text, match.end())
        if brace:
            if closes is None:  # computed once, from the first braced box on
                closes = _closing_braces(text, brace.end() - 1)
            close = closes.get(brace.end() - 1)
            if close is not None:
                found.append((match.start(), close + 1, text[brace.end() : close]))
            continue
        bare = _BARE_TOKEN.match(text, match.end())
        if bare and bare.group().rstrip(".,;:"):
            token = bare.group().rstrip(".,;:")
            found.append((match.start(), bare.start() + len(token), token))
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` or `\\fbox{...}`, nested braces included;
    `\\boxed 5` without braces gives the token after it.

    A box cut off before its closing brace (a truncated response) is skipped in favour of an
    earlier complete one.
    """
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


def final_boxed(text: str) -> str | None:
    """The answer the last boxes state: the last box's content, or, when boxes right before it
    are joined to it only by "and" / "," / "or" / math delimiters ("$\\boxed{-2}$ and
    $\\boxed{1}$"), all of their contents as one comma-separated answer."""
    boxes = [box for box in _boxes(text) if box[2].strip()]
    if not boxes:
        return None
    parts = [boxes[-1][2].strip()]
    for (_, end, content), (next_start, _, _) in zip(reversed(boxes[:-1]), reversed(boxes[1:]),
                                                       strict=True):
        if next_start - end > _MAX_JOINER_CHARS or _BOX_JOINER.fullmatch(text, end, next_start) is None:
            break
        if content.strip() != parts[-1]:  # "$\boxed{5}$\n\n\boxed{5}" states 5 once
            parts.append(content.strip())
    return ", ".join(reversed(parts))


def strip_math_delimiters(text: str) -> str:
    """`$x$`, `$$x$$`, `\\(x\\)`, `\\[x\\]` -> `x` (repeatedly, for `$\\(x\\)$`)."""
    start, end = 0, len(text)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    while True:
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if (end - start > len(left) + len(right) and text.startswith(left, start)
                    and text.endswith(right, start, end)):
                start, end = start + len(left), end - len(right)
                while start < end and text[start].isspace():
                    start += 1
                while end > start and text[end - 1].isspace():
                    end -= 1
                break
        else:
            return text[start:end]


def _named_in_sentence(sentence: str) -> str:
    """What a sentence after an answer marker states: the text after its last "is" / "=" ("The
    largest $n$ is 34" -> "34"), else its only math segment or only number, else all of it."""
    last = None
    for last in _COPULA.finditer(sentence):  # noqa: B007 - the last one is wanted
        pass
    if last is not None and sentence[last.end() :].strip():
        return sentence[last.end() :].strip()
    segments = _MATH_SEGMENT.findall(sentence)
    if len(segments) == 1:
        return "".join(segments[0])
    numbers = _NUMBER_TOKEN.findall(sentence)
    if len(numbers) == 1:
        return numbers[0]
    return sentence


def _money(line: str) -> str | None:
    """The amount when a line opens with money ("$18 every day", "\\$10,455."), not math: the
    `$` is escaped, never closed, or what it would enclose is prose ("$18 and then $")."""
    money = _CURRENCY.match(line)
    if money is None:
        return None
    if not line.startswith("\\"):
        close = line.find("$", money.end())
        if close >= 0 and not _PROSE.search(line, 1, close):
            return None
    return money.group(1).rstrip(",")


def _phrase_answer(text: str) -> str | None:
    """The answer stated after the last "answer is" style phrase, up to the end of its sentence."""
    last = None
    for last in _ANSWER_PHRASE.finditer(text):  # noqa: B007 - the last one is wanted
        pass
    if last is None:
        return None
    newline = text.find("\n", last.end())
    line = text[last.end() : newline if newline >= 0 else len(text)].strip()
    if money := _money(line):
        return money
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
        line = line.strip().strip("*").strip()
        if line and len(line) <= MAX_ANSWER_CHARS and not _STARTS_LIKE_MATH.match(line):
            line = _named_in_sentence(line)
    answer = line.strip().strip("*").strip().rstrip(".")
    return answer or None


def _answer_in(text: str, answer_phrases: bool) -> str | None:
    boxed = final_boxed(text)
    if boxed is not None:
        return boxed
    if answer_phrases:
        return _phrase_answer(text)
    return None


def extract_answer(response: str, answer_phrases: bool = True) -> str | None:
    """The response's final answer: the last `\\boxed{}` (with the boxes joined to it), else
    (when `answer_phrases`) what follows the last "The final answer is" / "Final Answer:" /
    "the answer is" / "####" phrase, read as the model means it ("Final Answer: The largest $n$
    is 34." -> 34; "The answer is $18." -> 18). No marker, no answer.

    Thinking blocks: the answer is read from the text after the last `</think>`. Only when
    nothing at all follows a closed block is the block's own answer used (the model put its
    whole reply inside the thinking). A block that never closes was cut off mid-thought, so a
    tentative answer inside it is not an answer.
    """
    part = answer_part(response)  # tops.thinking: after the last `</think>`
    return None if part is None else _answer_in(part, answer_phrases)


def final_answer_start(response: str) -> int | None:
    """Where, in `response`, the statement extract_answer reads its answer from begins: its last
    box (the last of boxes joined into one answer), else its last answer marker; None when it
    reads no answer. (The masking stage must find an answer statement there too.)"""
    part = answer_part(response)
    if part is None or extract_answer(response) is None:
        return None
    offset = response.rfind(part)
    boxes = [box for box in _boxes(part) if box[2].strip()]
    if boxes:
        return offset + boxes[-1][0]
    last = None
    for last in _ANSWER_PHRASE.finditer(part):  # noqa: B007 - the last one is wanted
        pass
    return offset + last.start()


def gold_answer(answer: str) -> str:
    """The gold answer to compare against: a full solution is reduced to its last box (MATH;
    several joined boxes make one answer) or to what follows its last "####" (GSM8K)."""
    boxed = final_boxed(answer)
    if boxed:
        return boxed
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
    `\\dfrac`/`\\tfrac` are `\\frac`; a whole `\\text{...}` is unwrapped. An answer over
    MAX_ANSWER_CHARS is only stripped (it is never judged)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return answer.strip()
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
    if len(answer) > MAX_ANSWER_CHARS:
        return None
    if len(answer) <= _MAX_NUMBER_TEXT and (plain := _PLAIN.fullmatch(answer)):  # "41", "1,234.5"
        return Number(_decimal_value(plain.group(1)), _decimal_places(plain.group(1)))
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
    if re.search(r"\d\s+\d|,\s", text):  # "1 2", "10, 100": a list, not one number
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


# ---------------------------------------------------------------- quick comparison

_INTEGER = re.compile(r"-?\d{1,30}")
_ASSIGNMENT = re.compile(r"[A-Za-z]\w{0,3}\s*=\s*")  # "x = 5", "n_1 = 5": the value is the answer


@lru_cache(maxsize=1 << 16)
def _reading(answer: str) -> tuple[Number | None, str]:
    """(plain number or None, loose text) of a stated answer: the content of its boxes, without
    a leading "x =", closing punctuation, case or braces (`\\sqrt{3}` = `\\sqrt3`)."""
    text = (final_boxed(answer) if "box" in answer else None) or answer
    text = text.strip().rstrip(".,;:").strip()
    if _INTEGER.fullmatch(text):  # most stated answers: no parsing needed
        return Number(Fraction(int(text)), None), text
    if assignment := _ASSIGNMENT.match(text):
        text = text[assignment.end() :]
    number = parse_number(text)
    loose = normalize_text(text).replace("{", "").replace("}", "").lower()
    return number, loose


def same_answer(a: str, b: str) -> bool | None:
    """Quick comparison with no symbolic maths: True / False when both read as plain numbers
    (exactly, `numbers_equal`) or both as text; None when one is a number and the other not,
    or either is empty (undecided)."""
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return None  # not judged (and not cached)
    return _same_reading(a, b)


@lru_cache(maxsize=1 << 16)
def _same_reading(a: str, b: str) -> bool | None:
    (a_number, a_text), (b_number, b_text) = _reading(a), _reading(b)
    if not a_text or not b_text:
        return None
    if a_number is not None and b_number is not None:
        return numbers_equal(a_number, b_number)
    if (a_number is None) != (b_number is None):
        return None
    return a_text == b_text
