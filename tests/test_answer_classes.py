"""Answers as real models write them (issue 20, item 9), through the whole verify stage.

Each class has several phrasings in the styles of Llama (MATH "Final Answer: ... I hope it is
correct."), Qwen ("**Final Answer:**", boxed), DeepSeek-R1 (a `</think>` then a "**Final
Answer**" heading) and GSM8K ("####", money). Strictness stays: no marker, no answer.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tops.answers import extract_answer, gold_answer
from tops.config import VerifyConfig
from tops.verify import verify_samples

THINK = "<think>\nLet me work through it. Maybe 33? No.\n</think>\n\n"

# (class, gold, response, correct, status)
CASES = [
    # the phrase is followed by a sentence that names the answer
    ("sentence", "120", "Final Answer: The volume of $X$ is 120.", True, "ok"),
    ("sentence", "120", "Final Answer: The volume of the box is 120 cubic units.", True, "ok"),
    ("sentence", "34", "So $n \\le 34$.\n\n**Final Answer:** The largest $n$ is 34.", True, "ok"),
    ("sentence", "34", THINK + "**Final Answer**\nThe largest possible value of $n$ is 34.", True, "ok"),
    ("sentence", "34", "Final Answer: The final answer is $34$. I hope it is correct.", True, "ok"),
    ("sentence", "18", "She sells 9 eggs at $2 each.\nThe answer is: Janet makes $18 every day.", True, "ok"),
    ("sentence", "42", "**Answer:** The total number of apples is 42.", True, "ok"),
    ("sentence", "120", "Final Answer: The volume of $X$ is 121.", False, "ok"),
    # a thousands separator inside math or money
    ("thousands", "10455", "The answer is $10,455$.", True, "ok"),
    ("thousands", "10455", "Therefore, the total is $\\boxed{10,455}$.", True, "ok"),
    ("thousands", "10455", "He pays 10,455 dollars in all.\n#### 10,455", True, "ok"),
    ("thousands", "10455", "The final answer is: $\\boxed{10{,}455}$", True, "ok"),
    ("thousands", "10455", "The answer is $10,455.", True, "ok"),
    ("thousands", "10455", "Final Answer: The final answer is \\$10,455.00. I hope it is correct.", True, "ok"),
    ("thousands", "10455", "The answer is $10,545$.", False, "ok"),
    # several boxes that together state one answer (and a gold written as two boxes)
    ("boxes", "-2, 1", "The solutions are $\\boxed{-2}$ and $\\boxed{1}$.", True, "ok"),
    ("boxes", "$\\boxed{-2}$ and $\\boxed{1}$", "So $x \\in \\boxed{-2, 1}$.", True, "ok"),
    ("boxes", "-3, 3", "x = \\boxed{3} \\text{ or } x = \\boxed{-3}", True, "ok"),
    ("boxes", "-2, 1", THINK + "**Final Answer**\nThe roots are \\(\\boxed{-2}\\) and \\(\\boxed{1}\\).", True, "ok"),
    ("boxes", "6", "First I guessed \\boxed{5}, but recomputing the whole sum carefully from the start "
                   "gives a different total.\nThe answer is \\boxed{6}.", True, "ok"),
    ("boxes", "-2, 1", "The solutions are $\\boxed{-2}$ and $\\boxed{2}$.", False, "ok"),
    ("boxes", "5", "The answer is $\\boxed{5}$\n\n\\boxed{5}", True, "ok"),
    # a comma inside a box is a list separator when a space follows it
    ("list", "10, 100", "The two numbers are \\boxed{10100}.", False, "ok"),
    ("list", "10100", "The two numbers are $\\boxed{10, 100}$.", False, "ok"),
    ("list", "1, 2, 3", "The values are \\boxed{1,2,3}.", True, "ok"),
    ("list", "2, 4", "So the pair is \\boxed{4, 2}.", True, "ok"),
    ("list", "1,234", "The total is \\boxed{1234}.", True, "ok"),
    # strictness: no marker, no answer
    ("strict", "34", "I think it's 34.", False, "no_answer"),
    ("strict", "34", "The largest $n$ is 34.", False, "no_answer"),
    ("strict", "34", THINK + "I hope this helps!", False, "no_answer"),
]


@pytest.fixture(scope="module")
def verified() -> pd.DataFrame:
    frame = pd.DataFrame({
        "problem_id": [f"p{i}" for i in range(len(CASES))], "question": "q",
        "answer": [gold for _, gold, _, _, _ in CASES], "difficulty": None, "effort": "none", "sample_idx": 0,
        "response": [response for _, _, response, _, _ in CASES], "n_tokens": 10, "finish_reason": "stop",
    })
    out, _ = verify_samples(frame, VerifyConfig(workers=1, timeout_s=20), progress=False)
    return out


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_real_output_is_read_as_meant(verified, index):
    kind, gold, response, correct, status = CASES[index]
    row = verified.iloc[index]
    assert (row["verify_status"], bool(row["correct"])) == (status, correct), (row["pred"], gold)


@pytest.mark.parametrize(("response", "pred"), [
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("The answer is: Janet makes $18 every day.", "18"),
    ("The answer is $10,455.", "10,455"),
    ("The answer is $10,455$.", "10,455"),
    ("The solutions are $\\boxed{-2}$ and $\\boxed{1}$.", "-2, 1"),
    ("x = \\boxed{3} \\text{ or } x = \\boxed{-3}", "3, -3"),
    ("Answer: x is 5 cm.", "5 cm"),
    ("**Final Answer**\n\n34", "34"),
    ("The answer is x = 2.", "x = 2"),
])
def test_extracted_text(response, pred):
    assert extract_answer(response) == pred


def test_gold_written_as_two_boxes_is_one_answer():
    assert gold_answer("The roots are $\\boxed{-2}$ and $\\boxed{1}$.") == "-2, 1"
    assert gold_answer("First \\boxed{5}; much later, after a long correction, \\boxed{6}") == "6"
