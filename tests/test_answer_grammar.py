"""The masking stage's default answer patterns are built from the extractor's grammar
(tops.answers): on every answer class, masking ends its final round on the very statement
verification reads the answer from, and finds none where verification finds none."""

from __future__ import annotations

import pytest
from test_answer_classes import CASES

from tops.answers import extract_answer, final_answer_start
from tops.config import MaskConfig
from tops.segmentation import answer_statements, matchers

EXTRA = [  # markers the old mask patterns missed: \fbox, a bare \boxed, "####", any case
    "So the sum is \\fbox{12}.", "Adding them up: \\boxed 7", "Total cost.\n#### 45", "THE ANSWER IS 9.",
    "**Final Answer**\n\n34", "Wait.\n\nFinal answer: x = 2",
]


@pytest.mark.parametrize("response", [c[2] for c in CASES] + EXTRA,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)] + [f"extra-{i}" for i in range(len(EXTRA))])
def test_masking_and_verification_agree_on_where_the_answer_is(response):
    strong = matchers(MaskConfig(weak_answer_patterns=[]))  # the defaults built from tops.answers
    statements = answer_statements(response, strong)
    start = final_answer_start(response)
    if extract_answer(response) is None:
        assert start is None and statements == [], statements
        return
    last_start, last_end, _ = statements[-1]
    assert last_start <= start < last_end, (start, statements)


def test_the_old_mask_patterns_disagreed_on_these():
    """What this guards against: a hand-written second grammar (the previous defaults) missed
    answers that verification reads."""
    import regex

    old_box = r"\\boxed\s*\{(?P<answer>(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"
    old_phrase = (r"[Aa]nswer(?:\s++(?:is|would\s++be|should\s++be)\s*+:?|\s*+:)\s*+"
                  r"(?P<answer>\$[^$\n]{1,80}\$|-?[\d\\][\w\\^/.,{}()+\-]{0,60})")
    missed = [r for r in EXTRA if not any(regex.search(p, r) for p in (old_box, old_phrase))]
    assert len(missed) >= 3 and all(extract_answer(r) is not None for r in missed)
