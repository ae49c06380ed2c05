"""Final-answer extraction and plain-number normalisation (tops.answers)."""

from fractions import Fraction

import pytest

from tops.answers import (
    braces_balanced,
    extract_answer,
    gold_answer,
    last_boxed,
    normalize_text,
    numbers_equal,
    parse_number,
)

EXTRACTION_CASES = [
    # boxes
    ("So the result is \\boxed{5}.", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}} is it", "\\frac{\\sqrt{3}}{2}"),
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4"),
    ("\\fbox{7}", "7"),
    ("\\boxed {5}", "5"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{ 12 }", "12"),
    ("$\\boxed{-\\dfrac{3}{4}}$", "-\\dfrac{3}{4}"),
    # text after the answer
    ("\\boxed{12}. Let me double-check: 3 * 4 = 12, yes.", "12"),
    # a box cut off by the token limit: the earlier complete one counts
    ("\\boxed{3} wait, recheck... \\boxed{4", "3"),
    # answer phrases
    ("The answer is 42.", "42"),
    ("the answer is 3.5.", "3.5"),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("Final Answer: 3.5", "3.5"),
    ("**Final Answer:** 17", "17"),
    ("The answer is **9**.", "9"),
    ("Answer: \\(x = 2\\)", "x = 2"),
    ("so the answer is $$5$$", "5"),
    ("Natalia sold 72 clips.\n#### 1,234", "1,234"),
    ("The answer is 3. Wait, no. The answer is 4.", "4"),
    ("My answer is: 8", "8"),
    ("I think the answer is 10 apples. Done.", "10 apples"),
    # the box beats a later phrase
    ("\\boxed{8}\nThe answer is above.", "8"),
    # thinking blocks
    ("<think>maybe \\boxed{3}</think>\nThe answer is \\boxed{4}.", "4"),
    ("<think>the answer is \\boxed{3}</think>So the answer is 5.", "5"),
    ("<think>so \\boxed{3}</think>\n", "3"),
    ("<think>first</think><think>then \\boxed{2}</think> Final: \\boxed{6}", "6"),
]

NO_ANSWER_CASES = [
    ("I am not sure how to solve this.", True),
    ("", True),
    ("\\boxed{}", True),
    ("Let me think... the value is \\boxed{", True),
    ("The answer is 42.", False),  # phrases switched off
    ("<think>\\boxed{3}</think> Hope this helps!", True),  # a reply follows but states no answer
    ("<think>I guess \\boxed{3}, wait let me re", True),  # cut off mid-thought
]


@pytest.mark.parametrize(("response", "expected"), EXTRACTION_CASES)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(("response", "answer_phrases"), NO_ANSWER_CASES)
def test_no_answer(response, answer_phrases):
    assert extract_answer(response, answer_phrases=answer_phrases) is None


def test_last_boxed_without_a_box_is_none():
    assert last_boxed("no box here, only {braces}") is None
    assert last_boxed("\\boxed{a}\\boxed{b{c}}") == "b{c}"


def test_braces_balanced():
    assert braces_balanced("\\frac{1}{2}")
    assert braces_balanced("\\{1,2\\}")
    assert not braces_balanced("\\frac{1}{2")
    assert not braces_balanced("a}{b")


@pytest.mark.parametrize(("answer", "gold"), [
    ("The total is $3 + 4 = \\boxed{7}$.", "7"),
    (" 12 ", "12"),
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("\\frac{1}{2}", "\\frac{1}{2}"),
])
def test_gold_answer(answer, gold):
    assert gold_answer(answer) == gold


NUMBER_CASES = [
    ("1,234", Fraction(1234)),
    ("1,234,567.5", Fraction(2469135, 2)),
    ("1{,}234", Fraction(1234)),
    ("1\\,234", Fraction(1234)),
    ("5.0", Fraction(5)),
    ("5.", Fraction(5)),
    ("$5$", Fraction(5)),
    ("\\$5.50", Fraction(11, 2)),
    ("5 \\text{ cm}", Fraction(5)),
    ("5\\mathrm{kg}", Fraction(5)),
    ("12 dollars", Fraction(12)),
    ("10 m/s", Fraction(10)),
    ("90^\\circ", Fraction(90)),
    ("50\\%", Fraction(50)),
    ("50%", Fraction(50)),
    ("-3", Fraction(-3)),
    ("−3", Fraction(-3)),
    (".5", Fraction(1, 2)),
    ("3/4", Fraction(3, 4)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("\\dfrac34", Fraction(3, 4)),
    ("\\tfrac{3}{4}", Fraction(3, 4)),
    ("-\\frac{1}{2}", Fraction(-1, 2)),
    ("\\frac{-1}{2}", Fraction(-1, 2)),
    ("1.5 \\times 10^{3}", Fraction(1500)),
    ("2 \\times 10^{-7}", Fraction(2, 10**7)),
    ("\\text{5}", Fraction(5)),
    ("\\boxed{7}", Fraction(7)),
]


@pytest.mark.parametrize(("answer", "value"), NUMBER_CASES)
def test_parse_number(answer, value):
    number = parse_number(answer)
    assert number is not None and number.value == value


@pytest.mark.parametrize("answer", [
    "2x", "1,23", "1 2", "x=5", "\\sqrt{2}", "1/0", "\\frac{1}{0}", "(1, 2)", "", "\\pi",
    "9^{9^{9^{9}}}", "5 \\text{ or } 6", "1" * 200, "3 \\times 10^{99999}",
])
def test_not_a_plain_number(answer):
    assert parse_number(answer) is None


@pytest.mark.parametrize(("a", "b", "equal"), [
    ("1,234", "1234", True),
    ("5.0", "5", True),
    ("0.10", "0.1", True),
    ("\\frac{1}{2}", "0.5", True),
    ("1/3", "0.333", True),
    ("2/3", "0.667", True),
    ("2/3", "0.666", True),
    ("-2/3", "-0.667", True),
    ("1/3", "0.33", False),  # too few places to stand for 1/3
    ("1/3", "0.334", False),  # neither rounded nor truncated
    ("1/4", "0.251", False),  # 1/4 terminates: only 0.25 is 1/4
    ("0.0000001", "0.0000002", False),
    ("123456789", "123456788", False),
    ("3", "-3", False),
])
def test_numbers_equal(a, b, equal):
    assert numbers_equal(parse_number(a), parse_number(b)) is equal
    assert numbers_equal(parse_number(b), parse_number(a)) is equal


@pytest.mark.parametrize(("answer", "canonical"), [
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("\\dfrac{1}{2}.", "\\frac{1}{2}"),
    ("$x + 1$", "x+1"),
    ("\\text{ Monday }", "Monday"),
    ("1 2", "1 2"),  # digits apart stay apart: "1 2" is not "12"
])
def test_normalize_text(answer, canonical):
    assert normalize_text(answer) == canonical


@pytest.mark.parametrize(("text", "expected"), [
    (r"so \boxed 5.", "5"),
    (r"$\boxed5$", "5"),
    (r"\fbox  -3.5,", "-3.5"),
    (r"\boxed x", "x"),
    (r"\boxed{12} then \boxed 7", "7"),
    (r"\boxed 7 then \boxed{12}", "12"),
    ("\\boxed\n{9}", "9"),
    (r"\boxed{7} use \boxed to mark", "7"),  # a word after a bare box is not an answer
    (r"\boxed{4} and \boxed{5", "4"),
])
def test_last_boxed_reads_bare_boxes(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text", [r"\boxedx", r"use \boxed to mark", "put it in \\boxed\n5", r"\boxed \frac{1}{2}"])
def test_bare_box_without_a_token_is_no_answer(text):
    assert last_boxed(text) is None
