"""Benchmark presets load local fixtures in each dataset's own column layout; held-out
evaluation comes from them (or another source); pass@k, budget accuracy and the
per-benchmark / per-difficulty table are checked on hand-made eval rows."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pandas as pd
import pytest

from tops.benchmarks import PRESETS, held_out_problems
from tops.config import load_config
from tops.errors import UserError
from tops.evaluate import markdown_table, metrics, metrics_table, pass_at_k, plot_budget_accuracy

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def fixtures(tmp_path) -> dict[str, Path]:
    """Three problems per benchmark, columns and answer formats as on the Hub."""
    return {
        "gsm8k": _jsonl(tmp_path / "gsm8k.jsonl", [
            {"question": f"Tom has {a} apples and buys {a} more. How many now?",
             "answer": f"He has {a} + {a} = <<{a}+{a}={2 * a}>>{2 * a} apples.\n#### {2 * a}"} for a in (3, 4, 5)]),
        "math500": _jsonl(tmp_path / "math500.jsonl", [
            {"problem": f"What is $\\frac{{{a}}}{{2}}$?", "solution": f"It is $\\boxed{{\\frac{{{a}}}{{2}}}}$.",
             "answer": f"\\frac{{{a}}}{{2}}", "subject": "Algebra", "level": level,
             "unique_id": f"test/algebra/{a}.json"} for a, level in ((1, 1), (3, 2), (5, 2))]),
        "aime24": _jsonl(tmp_path / "aime24.jsonl", [
            {"id": 60 + i, "problem": f"AIME 2024 problem {i}", "solution": "...", "answer": str(100 + i),
             "url": "https://artofproblemsolving.com", "year": "2024"} for i in range(3)]),
        "aime25": _jsonl(tmp_path / "aime25.jsonl", [
            {"problem": f"AIME 2025 problem {i}", "answer": str(200 + i), "id": str(i)} for i in range(3)]),
    }


def test_each_preset_loads_its_own_columns(fixtures):
    benches = [{"name": name, "path": str(path)} for name, path in fixtures.items()]
    cfg = load_config(SMOKE, [f"eval.benchmarks={json.dumps(benches)}"])
    problems = held_out_problems(cfg, n=1, seed=0)  # every benchmark problem; n is for other sources
    assert len(problems) == 12 and problems["problem_id"].is_unique
    by = {name: part for name, part in problems.groupby("benchmark")}
    assert sorted(by) == sorted(name for name, preset in PRESETS.items() if preset.in_domain)  # maths sets
    assert sorted(by["gsm8k"]["answer"]) == ["10", "6", "8"]  # "#### N"
    math = by["math500"].set_index("problem_id")
    assert math.loc["math500/test/algebra/3.json", "answer"] == "\\frac{3}{2}"
    assert sorted(math["difficulty"]) == ["level 1", "level 2", "level 2"]
    assert sorted(by["aime24"]["problem_id"]) == ["aime24/60", "aime24/61", "aime24/62"]
    assert sorted(by["aime25"]["answer"]) == ["200", "201", "202"]
    assert by["gsm8k"]["difficulty"].isna().all()
    subset = load_config(SMOKE, [f"eval.benchmarks=[{{name: aime25, path: {fixtures['aime25']}, n: 2}}]"])
    assert len(held_out_problems(subset, n=1, seed=0)) == 2


def test_a_file_in_another_layout_is_refused(fixtures):
    cfg = load_config(SMOKE, [f"eval.benchmarks=[{{name: math500, path: {fixtures['gsm8k']}}}]"])
    with pytest.raises(UserError, match=r"benchmark math500 .*column 'problem'"):
        held_out_problems(cfg, n=1, seed=0)


def test_held_out_from_another_source_or_the_training_source(fixtures):
    other = load_config(SMOKE, [f"eval.source={{kind: file, path: {fixtures['aime25']}, "
                                "columns: {question: problem, answer: answer, problem_id: id}}"])
    assert sorted(held_out_problems(other, n=2, seed=0, exclude={"1"})["problem_id"]) == ["0", "2"]
    default = load_config(SMOKE)
    drawn = held_out_problems(default, n=5, seed=3)
    from tops.domains import load_problems

    assert drawn.equals(load_problems(default.problems, n=5, seed=3))
    with pytest.raises(UserError, match="exclusive"):
        load_config(SMOKE, ["eval.benchmarks=[gsm8k]", f"eval.source={{kind: file, path: {fixtures['gsm8k']}}}"])
    with pytest.raises(UserError, match="pass_k"):
        load_config(SMOKE, ["eval.seeds=[0, 1]", "eval.pass_k=[4]"])


def test_pass_at_k_matches_the_closed_form():
    for n, c, k in [(5, 2, 2), (10, 3, 4), (8, 0, 3), (4, 4, 4), (6, 5, 3), (16, 1, 1)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    # A hand-made table: problem a 1 of 4 right, b 0 of 4, c 4 of 4, d 2 of 4.
    correct = {"a": [1, 0, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 1, 1], "d": [0, 1, 1, 0]}
    tokens = {"a": [10, 20, 30, 40], "b": [50, 60, 70, 80], "c": [5, 15, 25, 35], "d": [45, 55, 65, 75]}
    evals = pd.DataFrame([
        {"model": "m", "effort": "none", "problem_id": p, "seed": s, "difficulty": "easy" if p in "ac" else "hard",
         "correct": bool(correct[p][s]), "n_tokens": tokens[p][s], "benchmark": "bench"}
        for p in correct for s in range(4)])
    row = metrics(evals, ["model"], pass_ks=[1, 2, 4], budgets=[20, 50]).iloc[0]
    assert row["pass@1"] == pytest.approx(row["accuracy"]) == pytest.approx(7 / 16)
    expected2 = [1 - comb(3, 2) / comb(4, 2), 0.0, 1.0, 1 - comb(2, 2) / comb(4, 2)]
    assert row["pass@2"] == pytest.approx(sum(expected2) / 4)
    assert row["pass@4"] == pytest.approx(3 / 4)
    # correct within 20 tokens: a@10, c@5, c@15; within 50: + c@25, c@35
    assert row["acc@20"] == pytest.approx(3 / 16) and row["acc@50"] == pytest.approx(5 / 16)
    assert row["mean_tokens_correct"] == pytest.approx((10 + 5 + 15 + 25 + 35 + 55 + 65) / 7)


def test_eval_table_has_benchmark_and_difficulty_rows_pass_at_k_and_budgets(tmp_path):
    rows = []
    for bench, levels in (("math500", ["level 1", "level 2"]), ("aime24", [None])):
        for i, level in enumerate(levels * 2):
            for seed in (0, 1):
                rows.append({"model": "tops", "effort": "none", "problem_id": f"{bench}/{i}", "seed": seed,
                             "difficulty": level, "correct": (i + seed) % 2 == 0, "n_tokens": 10 * (i + 1) + seed,
                             "benchmark": bench})
    evals = pd.DataFrame(rows)
    table = metrics_table(evals, pass_ks=[1, 2], budgets=[15, 40])
    header = table.splitlines()[0]
    assert "pass@1" in header and "pass@2" in header and "acc ≤15 tok" in header and "acc ≤40 tok" in header
    lines = [line for line in table.splitlines()[2:]]
    assert [line.split(" | ")[2:4] for line in lines] == [
        ["math500", "all"], ["math500", "level 1"], ["math500", "level 2"], ["aime24", "all"]]
    # math500 level 1: problems 0 and 2, each right on one seed of two
    level1 = lines[1].split(" | ")
    assert level1[5] == level1[8] == "0.500" and level1[9] == "1.000"  # accuracy = pass@1; pass@2
    # the report's table carries it (k and budgets from the data when not given)
    full = markdown_table(evals)
    assert "| tops | none | math500 | level 2 |" in full and "pass@2" in full
    assert plot_budget_accuracy(evals, tmp_path / "budget.png", [15, 40]).stat().st_size > 0


def test_run_eval_on_benchmarks_with_the_tiny_model(fixtures, tmp_path, tiny_model_dir):
    from tops.artifacts import read_artifact
    from tops.stages import run_eval

    benches = [{"name": "math500", "path": str(fixtures["math500"])}, {"name": "aime24", "path": str(fixtures["aime24"])}]
    cfg = load_config(SMOKE, [f"model.base={tiny_model_dir}", f"eval.benchmarks={json.dumps(benches)}",
                              "eval.seeds=[0, 1]", "eval.token_budgets=[8, 32]", "eval.sampling.max_tokens=8"])
    table = run_eval(cfg, tmp_path / "eval.parquet", [str(tiny_model_dir)], [], progress=False)
    evals = read_artifact(tmp_path / "eval.parquet", "eval")
    assert len(evals) == 6 * 2 and set(evals["benchmark"]) == {"math500", "aime24"}
    for row in ("| tiny | none | math500 | all |", "| tiny | none | math500 | level 2 |", "| tiny | none | aime24 | all |"):
        assert row in table
    assert "pass@2" in table and "acc ≤8 tok" in table and "acc ≤32 tok" in table
