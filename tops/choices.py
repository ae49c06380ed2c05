"""Multiple-choice answers (letters A-J): which option a response picks, or none.

Why its own rules: a letter is a word too ("A man", "I think"), and a reply that names two
options ("A or C") has not chosen. The final answer is read, in order, from the last `\\boxed{}`,
else the text after the last "answer is" / "Answer:" / "correct option is" marker, else a last
line that is only an option label ("C", "(C)", "C) 42"). Within that answer the first option
letter is the choice; a second, different letter joined to it ("A or C", "A, C", "A and C") makes
the answer ambiguous: None, scored `no_answer`. Thinking blocks follow tops.answers: the answer
is read after the last `</think>`, a block that never closed gives none.

Every scan here is one regex pass with bounded lookaround: linear in the response.
"""

from __future__ import annotations

import re

from tops.answers import final_boxed
from tops.thinking import answer_part

LETTERS = "ABCDEFGHIJ"

# The last marker wins: "The answer is (C)", "**Answer: C**", "Final Answer: C", "the correct
# option is B", "answer would be D". "option" and "choice" need a copula ("Option D is wrong" names
# no answer).
_MARKER = re.compile(
    r"\b(?:answer|option|choice)\s{0,3}(?:is\b|would\s+be\b|should\s+be\b|:)[\s:*]{0,8}",
    re.IGNORECASE)
# An option letter: "(C)", "[C]", or a capital standing alone. A capital followed by a space and a
# lowercase word other than or/and/nor is a word ("A good", "I think"), not an option; so is one inside a word or a
# TeX command (`\C`), or glued to an apostrophe or hyphen ("I'd", "A-level").
_LETTER = re.compile(
    r"[(\[]\s?([A-Ja-j])\s?[)\]]"
    r"|(?<![\w\\'-])([A-J])(?![\w'-])(?!\s+(?!(?:or|and|nor)\b)[a-z])")
# What joins two options into one non-answer: "A or C", "A, C", "A and C", "A/C", "A & C".
_JOINER = re.compile(r"\s*(?:,|/|&|\bor\b|\band\b|\bnor\b|\\text\{\s*(?:or|and)\s*\})\s*(?:\\?\$\s*)?")
# A line that is only an option label, maybe with the option's text: "C", "(C)", "**C**", "C) 42".
_LABEL_LINE = re.compile(r"[\s*#$>_]*(?:\(([A-J])\)|([A-J])(?:[).:\]]|(?=[\s*$_]*$)))")
_MAX_REGION = 300  # an answer is short: the rest of a marker's line, at most this long


def _choice_in(region: str) -> str | None:
    """The option an answer text names: its first option letter, unless a second, different one
    is joined to it ("A or C" -> None). None too when it names no option."""
    region = region[:_MAX_REGION]
    first = _LETTER.search(region)
    if first is None:
        return None
    letter = (first.group(1) or first.group(2)).upper()
    joined = _JOINER.match(region, first.end())
    if joined:
        other = _LETTER.match(region, joined.end())
        if other and (other.group(1) or other.group(2)).upper() != letter:
            return None
    return letter


def _after_marker(text: str) -> tuple[bool, str | None]:
    """(a marker was found, the option it names) for the last answer marker: the rest of its
    line, or the next non-empty line when the marker ends its line ("Final answer:\\n\\nC")."""
    last = None
    for last in _MARKER.finditer(text):  # noqa: B007 - the last one is wanted
        pass
    if last is None:
        return False, None
    rest = text[last.end() : last.end() + 4 * _MAX_REGION]
    for line in rest.split("\n"):
        if line.strip(" *#:$"):
            return True, _choice_in(line)
    return True, None


def _label_line(text: str) -> str | None:
    """The option of a last line that is only an option label ("C", "(C)", "C) 42")."""
    stripped = text.rstrip()
    line = stripped[stripped.rfind("\n") + 1 :]
    match = _LABEL_LINE.match(line)
    return (match.group(1) or match.group(2)) if match else None


def _choice_from(text: str) -> str | None:
    boxed = final_boxed(text)
    if boxed is not None:
        return _choice_in(boxed)
    found, letter = _after_marker(text)
    if found and letter is not None:
        return letter
    return _label_line(text)


def extract_choice(response: str) -> str | None:
    """The option letter (A-J) a response's final answer picks, or None (no answer, or two)."""
    part = answer_part(response)  # tops.thinking: after the last `</think>`; None: cut off mid-thought
    return None if part is None else _choice_from(part)


def gold_choice(answer: str) -> str:
    """The gold option letter from a dataset's answer ("C", "(C)", "c", "C)"); ValueError else."""
    text = str(answer).strip().strip("()[]").rstrip(").:").strip().upper()
    if len(text) != 1 or text not in LETTERS:
        raise ValueError(f"not an option letter A-J: {str(answer)[:80]!r}")
    return text


def options_text(question: str, options: list[str]) -> str:
    """A question with its options labelled (A) ... (J), one per line, as the presets ask it."""
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 2 to {len(LETTERS)} options, got {len(options)}")
    lines = [f"({LETTERS[i]}) {str(option).strip()}" for i, option in enumerate(options)]
    return question.strip() + "\n\n" + "\n".join(lines)
