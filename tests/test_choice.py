"""Multiple-choice extraction on phrasings the way Llama, Qwen and R1-style models end their
replies (and ways they fail to choose), the gold letter reader and the option layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from bounds import within

from tops.choices import extract_choice, gold_choice, options_text
from tops.errors import UserError

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"

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


# ---------------------------------------------------------------- multiple-choice benchmarks


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mc_files(tmp_path: Path) -> dict[str, Path]:
    """Local files in each dataset's own layout (GPQA's CSV, MMLU-Pro's and lighteval LSAT's rows)."""
    gpqa = pd.DataFrame([{"Question": f"Which particle {i}?", "Correct Answer": f"right {i}",
                          "Incorrect Answer 1": f"wrong {i}a", "Incorrect Answer 2": f"wrong {i}b",
                          "Incorrect Answer 3": f"wrong {i}c", "Record ID": f"rec{i}",
                          "High-level domain": "Physics" if i < 3 else "Chemistry"} for i in range(5)])
    gpqa.to_csv(tmp_path / "gpqa_diamond.csv", index=False)
    return {
        "gpqa_diamond": tmp_path / "gpqa_diamond.csv",
        "mmlu_pro": _jsonl(tmp_path / "mmlu_pro.jsonl", [
            {"question_id": 70 + i, "question": f"MMLU question {i}", "options": ["1", "2", "3", "4", "N/A", "N/A"],
             "answer": "BD"[i % 2], "answer_index": [1, 3][i % 2], "cot_content": "", "category": ["law", "math"][i % 2],
             "src": "ori"} for i in range(4)]),
        "lsat": _jsonl(tmp_path / "lsat.jsonl", [
            {"passage": f"Seven people sit in a row ({i}).", "question": "Which must be true?",
             "references": ["F", "G", "H", "J", "K"], "gold_index": i % 5} for i in range(3)]),
    }


def test_multiple_choice_presets_load_their_own_layouts(tmp_path):
    from tops.benchmarks import PRESETS, held_out_problems, in_domain
    from tops.config import load_config

    files = mc_files(tmp_path)
    math500 = _jsonl(tmp_path / "math500.jsonl", [
        {"problem": "What is 1+1?", "solution": "\\boxed{2}", "answer": "2", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/1.json"}])
    benches = [{"name": "math500", "path": str(math500)}] + [{"name": n, "path": str(p)} for n, p in files.items()]
    cfg = load_config(SMOKE, [f"eval.benchmarks={json.dumps(benches)}"])
    problems = held_out_problems(cfg, n=1, seed=0)
    by = {name: part.set_index("problem_id") for name, part in problems.groupby("benchmark")}
    assert {name: len(part) for name, part in by.items()} == {"math500": 1, "gpqa_diamond": 5, "mmlu_pro": 4, "lsat": 3}
    assert problems["problem_id"].is_unique
    # maths rows keep verify.checker (None); the multiple-choice rows are checked by `choice`
    assert by["math500"]["checker"].isna().all()
    assert {name: set(by[name]["checker"]) for name in files} == {name: {"choice"} for name in files}
    assert [in_domain(n) for n in ("math500", "gpqa_diamond", "mmlu_pro", "lsat", "held-out")] == [
        True, False, False, False, True]
    assert all(PRESETS[n].split for n in files)

    gpqa = by["gpqa_diamond"]
    for rid, row in gpqa.iterrows():
        i = rid.removeprefix("gpqa_diamond/rec")
        assert f"({row['answer']}) right {i}" in row["question"]  # the gold letter labels the correct answer
        assert row["question"].count("\n(") == 4
    assert len(set(gpqa["answer"])) > 1  # the correct answer is not always (A)
    assert sorted(gpqa["subject"]) == ["Chemistry", "Chemistry", "Physics", "Physics", "Physics"]
    again = held_out_problems(cfg, n=1, seed=7)  # placement is the record's, not the run's
    assert again.set_index("problem_id").loc[gpqa.index, "answer"].tolist() == gpqa["answer"].tolist()

    mmlu = by["mmlu_pro"]
    assert mmlu.loc["mmlu_pro/70", "question"].endswith("(A) 1\n(B) 2\n(C) 3\n(D) 4")  # padding dropped
    assert mmlu["answer"].tolist() == ["B", "D", "B", "D"] and mmlu["subject"].tolist() == ["law", "math"] * 2
    lsat = by["lsat"]
    assert lsat["answer"].tolist() == ["A", "B", "C"] and lsat["subject"].isna().all()
    assert lsat["question"].iloc[0].startswith("Seven people sit in a row (0).\n\nWhich must be true?\n\n(A) F")

    wrong = load_config(SMOKE, [f"eval.benchmarks=[{{name: mmlu_pro, path: {files['lsat']}}}]"])
    with pytest.raises(UserError, match=r"benchmark mmlu_pro .*column 'question_id' is missing"):
        held_out_problems(wrong, n=1, seed=0)


def test_benchmark_files_keep_answers_as_written_and_refuse_duplicate_ids(tmp_path):
    """JSON numbers are not type-inferred (issue 30, item 6); a repeated id exits 2 (item 5)."""
    from tops.benchmarks import held_out_problems
    from tops.config import load_config

    path = tmp_path / "aime25.jsonl"
    answers = ['"007"', "1e3", '"3.10"', "12345678901234567890", "9" * 400, "[1, 2.5]", '{"x": 1}', "true"]
    path.write_text("".join(f'{{"problem": "p{i}", "answer": {a}, "id": {i}}}\n' for i, a in enumerate(answers)))
    cfg = load_config(SMOKE, [f"eval.benchmarks=[{{name: aime25, path: {path}}}]"])
    got = held_out_problems(cfg, n=1, seed=0).set_index("problem_id")["answer"]
    assert [got[f"aime25/{i}"] for i in range(len(answers))] == [
        "007", "1e3", "3.10", "12345678901234567890", "9" * 400, "[1, 2.5]", '{"x": 1}', "true"]

    path.write_text('{"problem": "a", "answer": "1", "id": 1}\n{"problem": "b", "answer": "2", "id": 1}\n')
    with pytest.raises(UserError, match=r"problem id '1' \(column 'id'\) appears more than once \(rows 0 and 1\)"):
        held_out_problems(cfg, n=1, seed=0)
    gsm = tmp_path / "gsm8k.jsonl"  # no id column: the same question twice with two answers
    gsm.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": "#### 2"}\n')
    with pytest.raises(UserError, match="same question appears with different answers"):
        held_out_problems(load_config(SMOKE, [f"eval.benchmarks=[{{name: gsm8k, path: {gsm}}}]"]), n=1, seed=0)


@pytest.mark.slow
def test_flow_evaluates_a_maths_and_a_choice_benchmark_and_reports_both(harness, tmp_path, tiny_model_dir):
    """The flow's own steps on the smoke profile: held-out problems from a MATH-500 and an MMLU-Pro
    file, the evaluation child process, the report with both sides."""
    from prefect import flow

    from tops.artifacts import read_artifact
    from tops.config import load_config
    from tops.flow import steps
    from tops.flow.stage_loop import Loop
    from tops.report import write_report

    math500 = _jsonl(tmp_path / "math500.jsonl", [
        {"problem": f"What is {a}+{a}?", "solution": f"\\boxed{{{2 * a}}}", "answer": str(2 * a), "subject": "Algebra",
         "level": 1, "unique_id": f"test/algebra/{a}.json"} for a in (1, 2)])
    benches = [{"name": "math500", "path": str(math500)}, {"name": "mmlu_pro", "path": str(mc_files(tmp_path)["mmlu_pro"])}]
    overrides = [f"run.root={tmp_path / 'runs'}", f"model.base={tiny_model_dir}", f"eval.benchmarks={json.dumps(benches)}",
                 "eval.seeds=[0, 1]", "eval.sampling.max_tokens=16"]

    @flow(name="tops-eval-benchmarks")
    def evaluate_benchmarks() -> tuple[str, str]:
        loop = Loop(load_config(SMOKE, overrides))
        loop.dir.mkdir(parents=True, exist_ok=True)
        held_out = steps.problems(loop, "eval", None, None, [], heldout=True)
        part = steps.evaluate(loop, "base", str(tiny_model_dir), ["none"], held_out)
        return part, str(write_report(loop.dir, read_artifact(part, "eval"), None, ["base"]))

    part, report = evaluate_benchmarks()
    evals = read_artifact(part, "eval")
    assert evals.groupby("benchmark").size().to_dict() == {"math500": 2 * 2, "mmlu_pro": 4 * 2}
    assert evals.groupby("benchmark")["checker"].unique().map(list).to_dict() == {"math500": ["math"],
                                                                                   "mmlu_pro": ["choice"]}
    text = Path(report).read_text()
    for row in ("| base | none | math500 | all |", "| base | none | mmlu_pro | all |", "| base | none | mmlu_pro | law |",
                "| base | none | mmlu_pro | math |"):
        assert row in text
    assert "maj@2" in text and "## In domain and out of domain" in text
    inside, outside = evals[evals["benchmark"] == "math500"], evals[evals["benchmark"] == "mmlu_pro"]
    assert (f"| base | none | {inside['correct'].mean():.3f} | {inside['n_tokens'].mean():.1f} | "
            f"{outside['correct'].mean():.3f} | {outside['n_tokens'].mean():.1f} |") in text
