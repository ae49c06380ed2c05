"""Segmentation: a response cut into steps (lines or paragraphs) and reasoning rounds.

A round ends where the response states an answer (`MaskConfig.answer_patterns`, or a weak
pattern such as "= 41" when a reflection cue like "Wait" follows); the last round is the final
one. The configured patterns run on `regex` with a deadline per response, so a pattern that
backtracks catastrophically fails the stage naming itself instead of stalling it. Judging the
rounds is tops.masking's job.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import regex

from tops.config import MaskConfig
from tops.errors import UserError

# Where steps are cut: after the last newline of a whitespace run, never before a word's
# leading space. BPE tokenizers glue that space to the word (" Wait"), so cutting before it
# keeps a token from straddling a wrong step and the reflection after it.
_STEP_SEPARATORS = {
    "line": r"\n(?:[^\S\n]*\n)*",
    "paragraph": r"\n[^\S\n]*\n(?:[^\S\n]*\n)*",
}
# What may follow an answer before its round really ends: closing delimiters, punctuation, and
# the line break when the line ends there ("\boxed{41}$.\n" or "= 41." before " Wait").
_ANSWER_TAIL = re.compile(r"[$)\]]*[.,;:!?]*(?:\s*\n)?")
_LINE_TAIL = re.compile(r"(?:[^\S\n]*\n)*")
_SPACE = re.compile(r"\s*")



@dataclass(frozen=True)
class Segmentation:
    """Steps of one response, the round each belongs to, and each round's stated answer."""

    bounds: list[tuple[int, int]]  # [start, end) of each step; they tile the text
    round_of: list[int]  # round index of each step
    reflection: list[bool]  # the step is the reflection clause opening its round
    round_answers: list[str | None]  # one per round; the last one is the final round's

    @property
    def n_rounds(self) -> int:
        return len(self.round_answers)


@dataclass(frozen=True)
class Matchers:
    separator: re.Pattern
    answers: tuple[regex.Pattern, ...]
    weak_answers: tuple[regex.Pattern, ...]
    reflection: regex.Pattern
    names: Mapping[regex.Pattern, str]  # the config field each configured pattern came from
    timeout_s: float


class PatternTimeout(UserError):
    """A configured pattern took longer than mask.pattern_timeout_s on one response."""


@lru_cache(maxsize=16)
def _compile(step_split: str, answers: tuple[str, ...], weak: tuple[str, ...],
             reflection: str, timeout_s: float) -> Matchers:
    # A weak answer counts only before a reflection cue. Checking that in a lookahead avoids
    # two Python-level matches per "= N" of the working; the atomic group stops it retrying
    # every shorter tail (an atomic group around the answer pattern itself would cost the
    # engine its fast scan for the leading "=", hence possessive quantifiers there instead).
    # Configured patterns run on `regex`, which can stop a match after timeout_s (`re` cannot);
    # on these patterns it is as fast as `re` and reads them the same way.
    before_cue = rf"(?=(?>{_ANSWER_TAIL.pattern}\s*)(?:{reflection}))"
    answer_patterns = tuple(regex.compile(p) for p in answers)
    weak_patterns = tuple(regex.compile(f"(?:{p}){before_cue}") for p in weak)
    reflection_pattern = regex.compile(reflection)
    names = {**{p: f"mask.answer_patterns[{i}] {answers[i]!r}" for i, p in enumerate(answer_patterns)},
             **{p: f"mask.weak_answer_patterns[{i}] {weak[i]!r} (with mask.reflection_pattern)"
                for i, p in enumerate(weak_patterns)},
             reflection_pattern: f"mask.reflection_pattern {reflection!r}"}
    return Matchers(
        separator=re.compile(_STEP_SEPARATORS[step_split]),
        answers=answer_patterns,
        weak_answers=weak_patterns,
        reflection=reflection_pattern,
        names=names,
        timeout_s=timeout_s,
    )


def matchers(cfg: MaskConfig) -> Matchers:
    return _compile(cfg.step_split, tuple(cfg.answer_patterns), tuple(cfg.weak_answer_patterns),
                    cfg.reflection_pattern, cfg.pattern_timeout_s)


def _timed_out(m: Matchers, pattern: regex.Pattern, text: str) -> PatternTimeout:
    return PatternTimeout(
        f"{m.names[pattern]}: took over {m.timeout_s:g} s on one response of {len(text):,} "
        "characters (mask.pattern_timeout_s), so it likely backtracks catastrophically: make its "
        "repeats possessive (*+, ++) or atomic (?>...)")


def _times_out(pattern: regex.Pattern, text: str, timeout_s: float) -> bool:
    try:
        for _ in pattern.finditer(text, timeout=timeout_s):
            pass
    except TimeoutError:
        return True
    return False


def answer_statements(text: str, m: Matchers) -> list[tuple[int, int, str]]:
    """(start, end, answer) of every answer statement, overlapping statements merged."""
    events = []
    try:
        for pattern in (*m.answers, *m.weak_answers):
            events.extend((hit.start(), hit.end(), hit.group("answer"))
                          for hit in pattern.finditer(text, timeout=m.timeout_s))
    except TimeoutError:
        if pattern in m.weak_answers and _times_out(m.reflection, text, m.timeout_s):
            pattern = m.reflection  # the cue inside the weak pattern's lookahead is the culprit
        raise _timed_out(m, pattern, text) from None
    if len(events) < 2:
        return events
    events.sort()
    merged = [events[0]]
    for start, end, answer in events[1:]:
        last_start, last_end, last_answer = merged[-1]
        if start < last_end:  # "the answer is \boxed{41}": one statement, the first reading
            merged[-1] = (last_start, max(last_end, end), last_answer)
        else:
            merged.append((start, end, answer))
    return merged


def segment(text: str, cfg: MaskConfig) -> Segmentation:
    """Cut a response into steps and rounds (no judgement yet)."""
    return segment_with(text, matchers(cfg))


def segment_with(text: str, m: Matchers) -> Segmentation:
    """`segment` with the patterns compiled once (the stage segments every row with them)."""
    size = len(text)
    cuts = {hit.end() for hit in m.separator.finditer(text)}
    events = answer_statements(text, m)
    answer_cuts = [_ANSWER_TAIL.match(text, end).end() for _, end, _ in events]
    # The round of the last answer absorbs whatever trails it: it is the final round.
    last_cut = max(answer_cuts, default=0)
    round_starts = [0, *sorted({c for c in answer_cuts if 0 < c < last_cut})]
    reflection_starts = set()
    for start in round_starts[1:]:
        try:
            cue = m.reflection.match(text, _SPACE.match(text, start).end(), timeout=m.timeout_s)
        except TimeoutError:
            raise _timed_out(m, m.reflection, text) from None
        if cue and cue.end() > cue.start():
            reflection_starts.add(start)
            cue_end = cue.end()
            while text[cue_end - 1] in " \t":  # a trailing space belongs to the next word
                cue_end -= 1
            cuts.add(_LINE_TAIL.match(text, cue_end).end())
    cuts.update(round_starts)
    edges = [0, *sorted(c for c in cuts if 0 < c < size), size]
    bounds = list(pairwise(edges)) if size else []
    if len(round_starts) == 1:  # most responses: one round, nothing to look up
        round_of, reflection = [0] * len(bounds), [False] * len(bounds)
    else:
        round_of = [bisect.bisect_right(round_starts, start) - 1 for start, _ in bounds]
        reflection = [start in reflection_starts for start, _ in bounds]
    if len(events) == len(round_starts):
        round_answers: list[str | None] = [answer for _, _, answer in events]
    else:  # no answer at all, or statements whose cuts coincide
        round_answers = [None] * len(round_starts)
        for (_, _, answer), cut in zip(events, answer_cuts, strict=True):
            round_answers[bisect.bisect_left(round_starts, cut) - 1] = answer
    return Segmentation(bounds, round_of, reflection, round_answers)
