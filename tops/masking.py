"""Erroneous-step masking: keep long correct responses, but not the wrong steps inside them.

A long chain of thought often states a wrong intermediate answer and fixes it later ("... = 41.
Wait, that is wrong: ... = 42"). Training on all of it teaches the wrong steps too; the paper
masks the loss on them instead (and masking beats dropping such responses).

A response is cut into *steps* (lines or paragraphs) and into *reasoning rounds*, each ending
where the response states an answer (tops.segmentation). The last round carries the verified
answer and is never masked. A round is erroneous when its answer differs from the gold one
(judge-free mode) or when a judge model names one of its steps as the first incorrect one
(judge mode). The reflection clause that opens a round ("Wait, that is wrong:") is kept: it is
exactly what the model should learn.

Masks are character spans, so they do not depend on a tokenizer; `token_loss_mask` turns them
into per-token flags with a tokenizer's offset mapping at training time.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd

from tops.answers import same_answer
from tops.config import MaskConfig
from tops.engines.base import Engine, Request
from tops.errors import UserError
from tops.segmentation import Matchers, Segmentation, matchers, segment, segment_with
from tops.thinking import after_thinking

__all__ = ["Segmentation", "answers_differ", "erroneous_spans", "judge_free_flags", "judge_request",
           "judged_flags", "mask_responses", "parse_judge_reply", "segment", "token_loss_mask"]


# ---------------------------------------------------------------- answer comparison

def answers_differ(stated: str | None, gold: str) -> bool:
    """True only when `stated` is confidently not the gold answer.

    The rules are verify's (tops.answers.same_answer): numbers compare exactly (1,000 = 1000.0
    = \\frac{2000}{2}), other answers as normalised text. A number against a non-number, or an
    empty answer, is "unknown" and counts as not different: a false "wrong" would mask good
    reasoning.
    """
    return stated is not None and same_answer(stated, gold) is False


# ---------------------------------------------------------------- judging


def judge_free_flags(seg: Segmentation, gold: str) -> list[bool]:
    """Steps of a non-final round whose answer differs from gold, reflection clauses excepted."""
    final = seg.n_rounds - 1
    wrong_rounds = {r for r in range(final) if answers_differ(seg.round_answers[r], gold)}
    if not wrong_rounds:
        return [False] * len(seg.bounds)
    return [r in wrong_rounds and not refl for r, refl in zip(seg.round_of, seg.reflection,
                                                               strict=True)]


_PLACEHOLDER = re.compile(r"\{(question|answer|steps)\}")
_STEP_NUMBER = re.compile(r"\bsteps?\s*(?:#|no\.?|number)?\s*:?\s*(-?\d+)", re.I)
_BARE_NUMBERS = re.compile(r"^[\s\[(]*-?\d+(?:\s*(?:,|;|and)\s*-?\d+)*[\s\])\.]*$", re.I)
_NONE_REPLY = re.compile(
    r"\b(?:none|no\s+(?:incorrect|erroneous|wrong)\s+steps?|all\s+(?:the\s+)?(?:steps\s+)?"
    r"(?:are\s+)?correct|n/a|no\s+errors?)\b", re.I)


def parse_judge_reply(reply: str) -> list[int] | None:
    """Step numbers (1-based) a judge named as first incorrect; [] for "none"; None: unreadable.

    Reads "first incorrect step: 3", "Round 1: Step 3; Round 2: Step 7", "3, 7", "none", "-1".
    Numbers not tied to the word "step" count only when the reply is nothing but numbers, so
    "Step 3 is wrong: 20 + 21 is 41" yields [3], not [3, 20, 21, 41].
    """
    text = after_thinking(reply or "").strip()
    numbers = [int(n) for n in _STEP_NUMBER.findall(text)]
    if not numbers and _BARE_NUMBERS.match(text):
        numbers = [int(n) for n in re.findall(r"-?\d+", text)]
    if numbers:
        return sorted({n for n in numbers if n > 0})  # 0 / -1: "no incorrect step"
    return [] if _NONE_REPLY.search(text) else None


def judge_request(question: str, gold: str, text: str, seg: Segmentation,
                  cfg: MaskConfig) -> Request:
    """One chat asking the judge for the first incorrect step of each round."""
    lines = []
    for index, ((start, end), rnd) in enumerate(zip(seg.bounds, seg.round_of, strict=True)):
        if index == 0 or rnd != seg.round_of[index - 1]:
            final = " (final)" if rnd == seg.n_rounds - 1 else ""
            lines.append(f"Round {rnd + 1}{final}:")
        lines.append(f"  Step {index + 1}: {text[start:end].strip()}")
    values = {"question": question, "answer": gold, "steps": "\n".join(lines)}
    # One pass, so a "{answer}" inside the question is left alone; other braces (\boxed{})
    # in the template are not placeholders.
    prompt = _PLACEHOLDER.sub(lambda hit: values[hit[1]], cfg.judge_prompt)
    return Request(messages=[{"role": "user", "content": prompt}])


def judged_flags(seg: Segmentation, first_wrong: Iterable[int]) -> tuple[list[bool], int]:
    """Flags from the judge's step numbers: each marks its step to the end of its round.

    Returns the flags and how many named steps were ignored (in the final round, or out of
    range).
    """
    flags = [False] * len(seg.bounds)
    final = seg.n_rounds - 1
    ignored = 0
    for number in first_wrong:
        index = number - 1
        if not 0 <= index < len(flags) or seg.round_of[index] == final:
            ignored += 1
            continue
        rnd = seg.round_of[index]
        while index < len(flags) and seg.round_of[index] == rnd:
            flags[index] = True
            index += 1
    return flags, ignored


# ---------------------------------------------------------------- the stage


def mask_responses(
    selected: pd.DataFrame,
    cfg: MaskConfig,
    judge: Engine | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Add `steps` (tiling character spans with an `erroneous` flag), `masked_chars`,
    `n_rounds` and `n_erroneous_rounds` to the selected rows; return them and a summary.
    """
    for column in ("response", "answer"):
        if column not in selected.columns:
            raise UserError(f"mask: column '{column}' is missing (a selected artifact needs it)")
    if cfg.enabled and cfg.mode == "judge" and judge is None:
        raise UserError("mask.mode is 'judge' but no judge engine was given "
                        "(mask.judge_engine / mask.judge_model say which to start)")
    began = time.perf_counter()
    responses = ["" if r is None else str(r) for r in selected["response"].tolist()]
    golds = ["" if a is None else str(a) for a in selected["answer"].tolist()]
    with _gc_paused():
        segs = _segment_all(responses, matchers(cfg), progress)

    judge_stats = {}
    if not cfg.enabled:
        flags = [[False] * len(seg.bounds) for seg in segs]
    elif cfg.mode == "rounds":
        with _gc_paused():  # answer readings allocate small objects too
            flags = [judge_free_flags(seg, gold) for seg, gold in zip(segs, golds, strict=True)]
    else:  # the judge runs with the garbage collector on: engines make cycles
        questions = (selected["question"].astype(str).tolist() if "question" in selected
                     else [""] * len(segs))
        flags, judge_stats = _judge_flags(segs, responses, golds, questions, cfg, judge)

    with _gc_paused():
        out = _with_steps(selected, segs, flags)
    summary = _summary(out, responses, cfg)
    if judge_stats:
        summary["judge"] = judge_stats
    seconds = time.perf_counter() - began
    summary["seconds"] = round(seconds, 3)
    summary["rows_per_s"] = round(len(out) / seconds, 1) if seconds > 0 else None
    return out, summary


@contextmanager
def _gc_paused():
    """The stage allocates millions of small acyclic objects (a dict per step); the cyclic
    garbage collector would rescan them over and over for nothing (~35% of the time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _with_steps(selected: pd.DataFrame, segs: list[Segmentation],
                flags: list[list[bool]]) -> pd.DataFrame:
    """The selected rows plus the output columns, as a new frame."""
    steps, masked, erroneous_rounds = [], [0] * len(segs), [0] * len(segs)
    for row, (seg, row_flags) in enumerate(zip(segs, flags, strict=True)):
        if not any(row_flags):
            steps.append([{"start": s, "end": e, "erroneous": False} for s, e in seg.bounds])
            continue
        steps.append([{"start": s, "end": e, "erroneous": f}
                      for (s, e), f in zip(seg.bounds, row_flags, strict=True)])
        masked[row] = sum(e - s for (s, e), f in zip(seg.bounds, row_flags, strict=True) if f)
        erroneous_rounds[row] = len({r for r, f in zip(seg.round_of, row_flags, strict=True) if f})
    return selected.assign(
        steps=steps,
        masked_chars=np.asarray(masked, dtype=np.int64),
        n_rounds=np.asarray([seg.n_rounds for seg in segs], dtype=np.int64),
        n_erroneous_rounds=np.asarray(erroneous_rounds, dtype=np.int64),
    )


def _judge_flags(segs, responses, golds, questions, cfg, judge):
    """One batched judge call for every row that has a round besides the final one."""
    flags = [[False] * len(seg.bounds) for seg in segs]
    asked = [i for i, seg in enumerate(segs) if seg.n_rounds > 1]
    requests = [judge_request(questions[i], golds[i], responses[i], segs[i], cfg) for i in asked]
    fits = _fits_context(judge, requests)
    too_long = fits.count(False)
    asked = [i for i, ok in zip(asked, fits, strict=True) if ok]
    requests = [r for r, ok in zip(requests, fits, strict=True) if ok]
    replies = judge.generate(requests, n=1, sampling=cfg.judge_sampling) if requests else []
    unparseable, ignored = 0, 0
    for i, completions in zip(asked, replies, strict=True):
        numbers = parse_judge_reply(completions[0].text if completions else "")
        if numbers is None:
            unparseable += 1
            continue
        flags[i], skipped = judged_flags(segs[i], numbers)
        ignored += skipped
    return flags, {"requests": len(requests), "unparseable": unparseable,
                   "ignored_step_numbers": ignored, "too_long": too_long}


_MIN_REPLY_TOKENS = 16  # "Round 1: Step 3" and a little room


def _fits_context(judge, requests: list[Request]) -> list[bool]:
    """A judge prompt with no room for a reply in the judge's context is not sent: its row stays
    unmasked and is counted, instead of one long response failing the whole stage. Local engines
    (vLLM, transformers) know their tokenizer and context; remote ones decide for themselves."""
    tokenizer, limit = getattr(judge, "tokenizer", None), getattr(judge, "max_model_len", None)
    if tokenizer is None or not limit:
        return [True] * len(requests)
    from tops.engines.render import render_ids

    return [len(render_ids(tokenizer, r)) + _MIN_REPLY_TOKENS <= limit for r in requests]


_PROGRESS_MIN_ROWS = 10_000  # below this a bar only flickers
_PROGRESS_CHUNK = 2000


def _segment_all(responses: list[str], compiled: Matchers, progress: bool) -> list[Segmentation]:
    """Segment every response; the progress bar moves per chunk (per row costs ~20%)."""
    if not progress or len(responses) < _PROGRESS_MIN_ROWS:
        return [segment_with(text, compiled) for text in responses]
    from rich.console import Console
    from rich.progress import Progress

    segs: list[Segmentation] = []
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("mask: segmenting", total=len(responses))
        for begin in range(0, len(responses), _PROGRESS_CHUNK):
            chunk = responses[begin:begin + _PROGRESS_CHUNK]
            segs.extend(segment_with(text, compiled) for text in chunk)
            bar.update(task, completed=len(segs))
    return segs


def _summary(out: pd.DataFrame, responses: list[str], cfg: MaskConfig) -> dict:
    """Shares of masked responses and masked tokens, overall and per effort.

    Token shares are estimated per row as n_tokens * masked_chars / len(response), since the
    stage has no tokenizer; without `n_tokens`, characters stand in for tokens.
    """
    chars = np.asarray([len(r) for r in responses], dtype=np.float64)
    masked = out["masked_chars"].to_numpy(dtype=np.float64)
    tokens = out["n_tokens"].to_numpy(dtype=np.float64) if "n_tokens" in out else chars
    frame = pd.DataFrame({
        "effort": out["effort"].astype(str).to_numpy() if "effort" in out else "all",
        "tokens": tokens,
        "masked_tokens": np.divide(tokens * masked, chars, out=np.zeros_like(masked),
                                   where=chars > 0),
        "chars": chars,
        "masked_chars": masked,
        "masked_row": masked > 0,
        "rounds": out["n_rounds"].to_numpy(),
        "erroneous_rounds": out["n_erroneous_rounds"].to_numpy(),
    })

    def shares(part: pd.DataFrame) -> dict:
        return {
            "rows": int(len(part)),
            "masked_rows_share": _ratio(part["masked_row"].sum(), len(part)),
            "masked_token_share": _ratio(part["masked_tokens"].sum(), part["tokens"].sum()),
            "masked_char_share": _ratio(part["masked_chars"].sum(), part["chars"].sum()),
            "rounds_mean": _ratio(part["rounds"].sum(), len(part)),
            "erroneous_rounds_mean": _ratio(part["erroneous_rounds"].sum(), len(part)),
        }

    return {
        "enabled": cfg.enabled,
        "mode": cfg.mode,
        **shares(frame),
        "per_effort": {str(effort): shares(part) for effort, part in frame.groupby("effort")},
    }


def _ratio(numerator: float, denominator: float) -> float:
    return round(float(numerator) / float(denominator), 6) if denominator else 0.0


# ---------------------------------------------------------------- token alignment


def erroneous_spans(steps: Iterable[Mapping]) -> list[tuple[int, int]]:
    """[start, end) character spans of erroneous steps, touching or overlapping ones merged."""
    spans: list[tuple[int, int]] = []
    for step in sorted((s for s in steps if s["erroneous"]), key=lambda s: s["start"]):
        start, end = int(step["start"]), int(step["end"])
        if end <= start:
            continue
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def token_loss_mask(
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
    *,
    shift: int = 0,
) -> list[bool]:
    """Per token: True = exclude it from the loss (label -100).

    Boundary rule: a token is masked when any of its characters lies in a span, so no
    erroneous character is ever trained on; a token straddling a span edge is masked whole.
    Tokens that share characters with a masked token (byte-level pieces of one character,
    whose offsets overlap) are masked with it, so unmasked tokens always cover whole
    characters. A zero-width token (a special token) is masked only strictly inside a masked
    region. `shift` moves the spans into the offsets' coordinates (e.g. where the response
    starts in the chat text).
    """
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    span_array = np.asarray(spans, dtype=np.int64).reshape(-1, 2) + shift
    span_array = span_array[span_array[:, 1] > span_array[:, 0]]
    if not len(off) or not len(span_array):
        return [False] * len(off)
    starts, ends = off[:, 0], off[:, 1]
    size = int(max(ends.max(), span_array[:, 1].max())) + 1
    char_masked = _chars_in(span_array[:, 0], span_array[:, 1], size)
    zero_width = starts == ends
    while True:
        before = np.concatenate(([0], np.cumsum(char_masked)))
        masked = before[ends] - before[starts] > 0
        inside = zero_width & (starts > 0) & char_masked[np.maximum(starts - 1, 0)] & char_masked[starts]
        masked |= inside
        grown = char_masked | _chars_in(starts[masked], ends[masked], size)
        if np.array_equal(grown, char_masked):
            return masked.tolist()
        char_masked = grown


def _chars_in(starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """Boolean per character: inside any [start, end) span."""
    starts, ends = np.clip(starts, 0, size), np.clip(ends, 0, size)
    keep = ends > starts
    delta = np.zeros(size + 1, dtype=np.int64)
    np.add.at(delta, starts[keep], 1)
    np.add.at(delta, ends[keep], -1)
    return np.cumsum(delta[:-1]) > 0
