"""Multiple-choice extraction on phrasings the way Llama, Qwen and R1-style models end their
replies (and ways they fail to choose), the gold letter reader and the option layout."""

from __future__ import annotations

import pytest
from bounds import within

from tops.choices import extract_choice, gold_choice, options_text

R1 = "<think>\nOkay, the reaction is an SN2... so the product is inverted. Wait, let me check B again.\n</think>\n\n"

PHRASINGS = [
    # Llama 3 instruct
    ("The best answer is C.", "C"),
    ("Step 1: ...\nStep 2: ...\n\nThe final answer is: $\\boxed{C}$", "C"),
    ("The correct answer is: (B) 42 joules", "B"),
    ("Therefore, the answer is (D).", "D"),
    ("So the correct option is A.", "A"),
    ("## Step 3: Conclude\nThe final answer is: $\\boxed{(A)}$", "A"),
    ("The answer is: **C. Osmosis**", "C"),
    # Qwen 2.5 instruct
    ("**Answer: C**", "C"),
    ("**Answer:** B", "B"),
    ("Thus the answer is \\boxed{D}.", "D"),
    ("Answer: (H)", "H"),
    ("the answer is (J)", "J"),
    ("Final Answer: E) 3.2 m/s", "E"),
    ("Therefore, the correct choice is\n\nG", "G"),
    ("\\[\n\\boxed{\\text{B}}\n\\]", "B"),
    ("\\(\\boxed{\\textbf{(C)}}\\)", "C"),
    ("I think the answer is C, I believe, given the data.", "C"),
    # R1-style reasoning
    (R1 + "**Answer:** \\boxed{D}", "D"),
    (R1 + "The correct answer is **B**.", "B"),
    (R1 + "**Final Answer**\n\n\\boxed{A}", "A"),
    (R1 + "C) 42", "C"),
    (R1 + "After weighing both, I pick:\n\nF", "F"),
    ("<think>\nThe answer is A. No wait.\n</think>\n\nThe answer is (B).", "B"),  # the thought is not the answer
    ("<think>\nOnly thinking, it says the answer is C\n</think>", "C"),  # whole reply inside the block
    # a trailing bare option
    ("Comparing the options carefully, the only one consistent with both facts is\n\n(C)", "C"),
    ("All of them fail except one.\n\nD.", "D"),
    ("The others are ruled out.\n**A**", "A"),
    # no answer, or two answers
    ("The answer is A or C.", None),
    ("The answer is either (A) or (C), I cannot tell.", None),
    ("Answer: A, C", None),
    ("\\boxed{A} and \\boxed{C}", None),
    ("\\boxed{B/D}", None),
    ("I am not sure which option is right.", None),
    ("A good question. I think we need more data.", None),
    ("<think>\nThe answer is probably C but let me check", None),  # cut off mid-thought
    ("The answer is \\boxed{42}", None),  # a box with no option in it
    ("The answer is A or (A).", "A"),  # the same option twice is one answer
    ("Option D is wrong, and so is B. The answer is (A).", "A"),
]


@pytest.mark.parametrize(("response", "expected"), PHRASINGS)
def test_choice_phrasings(response, expected):
    assert extract_choice(response) == expected


def test_enough_phrasings_from_each_style():
    assert len(PHRASINGS) >= 30
    assert sum(expected is None for _, expected in PHRASINGS) >= 8


def test_a_hostile_response_is_read_in_linear_time():
    """No quadratic rescans: a megabyte of markers, letters and joiners (a hang guard, as in
    test_answers_property: a quadratic scan of it runs for hours)."""
    hostile = ("answer is A or " * 20_000 + "(" * 100_000 + "B, " * 100_000 + "[ " * 100_000)[:1_000_000]
    with within(30):
        assert extract_choice(hostile) == "A"  # the last marker: "answer is A or (((("
        assert extract_choice(hostile + "\n\nThe answer is (C).") == "C"


def test_gold_letters_and_option_layout():
    assert [gold_choice(a) for a in ("C", "(c)", " B) ", "J.")] == ["C", "C", "B", "J"]
    for bad in ("K", "AB", "", "42"):
        with pytest.raises(ValueError, match="option letter"):
            gold_choice(bad)
    text = options_text("Which is a noble gas?", ["Oxygen", "Neon", "Iron"])
    assert text.endswith("(A) Oxygen\n(B) Neon\n(C) Iron")
    assert extract_choice("Neon is noble. The answer is (B).") == "B"
    with pytest.raises(ValueError, match="2 to 10"):
        options_text("q", ["only one"])
