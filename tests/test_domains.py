import json
import re

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tops.config import ArithLevel, ArithSource, FileSource, ProblemsConfig
from tops.domains import load_problems
from tops.domains.arith import teacher_response
from tops.domains.tabular import gold_answer
from tops.errors import UserError


def test_arith_is_deterministic_and_exact():
    cfg = ProblemsConfig(n=30)
    first, again = load_problems(cfg, seed=3), load_problems(cfg, seed=3)
    pd.testing.assert_frame_equal(first, again)
    assert first["problem_id"].is_unique
    for _, row in first.iterrows():
        a, b = row["operands"]
        assert int(row["answer"]) == a + b
        assert len(str(max(a, b))) <= {"easy": 1, "medium": 2, "hard": 3}[row["difficulty"]]
    assert set(first["difficulty"]) == {"easy", "medium", "hard"}


def test_arith_other_seed_gives_other_problems():
    cfg = ProblemsConfig(source=ArithSource(), n=30)
    a, b = load_problems(cfg, seed=0), load_problems(cfg, seed=1)
    assert set(a["problem_id"]) != set(b["problem_id"])


@pytest.mark.parametrize("solution, fmt, gold", [
    ("She has 3 apples.\n#### 1,234", "gsm8k", "1234"),
    ("so $x = \\boxed{\\frac{1}{2}}$.", "boxed", "\\frac{1}{2}"),
    ("#### 42", "auto", "42"),
    ("The area is \\boxed{12\\pi}", "auto", "12\\pi"),
    (" 17 ", "plain", "17"),
])
def test_gold_conventions(solution, fmt, gold):
    assert gold_answer(solution, fmt) == gold


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_file_source_all_formats(tmp_path, suffix):
    rows = [{"q": f"What is {i}+1?", "a": f"#### {i + 1}", "lvl": "easy"} for i in range(5)]
    path = tmp_path / f"problems{suffix}"
    frame = pd.DataFrame(rows)
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        frame.to_csv(path, index=False)
    cfg = ProblemsConfig(n=5, source=FileSource(path=path, columns={"question": "q", "answer": "a",
                                                                    "difficulty": "lvl"}))
    problems = load_problems(cfg)
    assert sorted(problems["answer"].astype(int)) == [1, 2, 3, 4, 5]
    assert problems["problem_id"].is_unique and set(problems["difficulty"]) == {"easy"}


def test_file_source_missing_column(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"question": ["x"]}).to_csv(path, index=False)
    cfg = ProblemsConfig(source=FileSource(path=path))
    with pytest.raises(UserError, match="column 'answer'"):
        load_problems(cfg)


def test_hf_source_loads_a_local_dataset_folder(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"problem": ["1+1?", "2+2?"], "solution": ["\\boxed{2}", "\\boxed{4}"]}
                               ).save_to_disk(str(folder))
    # `datasets.load_dataset` reads a folder of data files; export one for it.
    datasets.load_from_disk(str(folder)).to_parquet(str(tmp_path / "data" / "train.parquet"))
    from tops.config import HFSource

    cfg = ProblemsConfig(n=2, source=HFSource(path=str(tmp_path / "data"), split="train",
                                              columns={"question": "problem", "answer": "solution"}))
    problems = load_problems(cfg)
    assert sorted(problems["answer"]) == ["2", "4"]


_EQUATION = re.compile(r"^(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\.$")


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 999), min_size=2, max_size=6), data=st.data())
def test_arith_teacher_working_lines_are_true_and_end_at_the_answer(values, data):
    """Every "a op b = c." line of every effort is arithmetic truth (operator precedence
    included), the medium working's last line reaches the answer, and high effort's check
    undoes a +/- chain back to the first number."""
    ops = data.draw(st.lists(st.sampled_from(["+", "-", "*"]), min_size=len(values) - 1,
                             max_size=len(values) - 1))
    expression = " ".join([str(values[0]), *(f"{op} {v}" for op, v in zip(ops, values[1:], strict=True))])
    result = eval(expression)
    for effort in ("low", "medium", "high"):
        text = teacher_response(values, ops, effort)
        assert text.endswith(f"\\boxed{{{result}}}.")
        lines = text.splitlines()
        equations = [m.groups() for m in map(_EQUATION.match, lines) if m]
        for a, op, b, c in equations:
            assert eval(f"{a} {op} {b}") == int(c), (effort, text)
        column_sum = ops == ["+"] and min(values) >= 10  # written as digit columns instead
        if effort == "medium" and not column_sum:
            assert int(equations[-1][3]) == result, text
        if effort == "high" and "*" not in ops and not column_sum:
            assert f"That is the first number, {values[0]}. Correct." in text, text
            assert int(equations[-1][3]) == values[0]


def test_arith_chains_difficulty_is_chain_length():
    source = ArithSource(levels={"easy": ArithLevel(digits=[2, 1]),
                                 "hard": ArithLevel(digits=[2, 1, 1, 1, 1], operands=5)})
    problems = load_problems(ProblemsConfig(source=source, n=20), seed=0)
    for _, row in problems.iterrows():
        assert len(row["operands"]) == {"easy": 2, "hard": 5}[row["difficulty"]]
        assert int(row["answer"]) == sum(row["operands"])
        assert len(teacher_response(list(row["operands"]), list(row["ops"]), "medium").splitlines()) == (
            len(row["operands"]) + 2)
