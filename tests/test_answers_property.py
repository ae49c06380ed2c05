"""Property tests: answer extraction and step splitting on random and adversarial text, each
call under a time bound (hypothesis' deadline; a quadratic step on these sizes blows it by far).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from bounds import within
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tops.answers import MAX_ANSWER_CHARS, extract_answer, gold_answer, normalize_text, parse_number
from tops.config import MaskConfig
from tops.masking import judge_free_flags, segment

# The pieces answer readers and step splitters react to.
PIECES = ["\\boxed{", "\\boxed", "\\boxed ", "\\fbox{", "{", "}", "\\{", "\\}", "\\", "\\\\", "$", "$$", "\\(",
          "\\)", "\\[", "\\]", "answer is", "Answer:", "Final Answer", "**", "####", "<think>", "</think>", "=",
          " = 41", "= 4,1", "Wait", "wait, ", "Hmm", "Let me check", "\n", "\n\n", " \n", " ", "\t", ",", ", ",
          ".", ". ", "1", "42", "10,455", "-", "x", " and ", " or ", "\\frac", "\\dfrac{1}{2}", " is ", "The ",
          "%", "\\text{", " cm", "^", "9^{9^{9}}"]

fragment = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=60).map("".join)
# Random text, and random text repeated into long runs (where quadratic scans show).
hostile = st.one_of(
    st.lists(st.sampled_from(PIECES) | st.text(max_size=8), max_size=400).map("".join),
    st.tuples(fragment, st.integers(1, 20_000)).map(lambda pair: (pair[0] * pair[1])[:300_000]),
    st.tuples(fragment, st.sampled_from(PIECES), st.integers(1, 50_000), fragment).map(
        lambda parts: (parts[0] + parts[1] * parts[2] + parts[3])[:300_000]),
)
BOUND = settings(deadline=timedelta(seconds=5), max_examples=150,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MASK = MaskConfig()


@BOUND
@given(hostile)
def test_extraction_is_bounded_and_well_formed(text):
    with within(30):
        answer = extract_answer(text)
        assert answer is None or (answer and answer == answer.strip())
        if answer is not None and len(answer) <= MAX_ANSWER_CHARS:
            parse_number(answer)
            normalize_text(answer)
        assert isinstance(gold_answer(text), str)
    # Strictness: no marker, no answer.
    if "\\boxed" not in text and "\\fbox" not in text:
        assert extract_answer(text, answer_phrases=False) is None
        if "answer" not in text.lower() and "####" not in text:
            assert answer is None


@BOUND
@given(hostile, st.sampled_from(["line", "paragraph"]))
def test_step_splitting_is_bounded_and_tiles_the_text(text, step_split):
    with within(30):
        seg = segment(text, MASK.model_copy(update={"step_split": step_split}))
    edges = [start for start, _ in seg.bounds] + [seg.bounds[-1][1]] if seg.bounds else [0]
    assert edges[0] == 0 and edges[-1] == len(text)
    assert all(start < end for start, end in seg.bounds)
    assert all(a[1] == b[0] for a, b in zip(seg.bounds, seg.bounds[1:], strict=False))
    assert len(seg.round_of) == len(seg.bounds) == len(seg.reflection)
    flags = judge_free_flags(seg, "41")
    assert len(flags) == len(seg.bounds)
    if seg.round_of:
        last = seg.n_rounds - 1
        assert not any(flag for flag, rnd in zip(flags, seg.round_of, strict=True) if rnd == last)


@pytest.mark.parametrize("piece", PIECES)
@settings(deadline=timedelta(seconds=5), max_examples=3, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(around=st.sampled_from([("", ""), ("The answer is ", ""), ("", "\\boxed{7}")]))
def test_a_quarter_megabyte_of_one_piece(piece, around):
    """Each piece repeated to 256 KB: the worst case for a scan that restarts at every match."""
    text = around[0] + piece * (262_144 // len(piece)) + around[1]
    with within(30):
        answer = extract_answer(text)
        if answer is not None and len(answer) <= MAX_ANSWER_CHARS:
            parse_number(answer)
            normalize_text(answer)
        gold_answer(text)
        segment(text, MASK)
