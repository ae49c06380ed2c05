"""`tops eval`: held-out problems, spread over seeds, per-difficulty table, contamination check."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tops.artifacts import read_artifact, write_artifact
from tops.config import load_config
from tops.domains import load_problems
from tops.evaluate import contamination, markdown_table, summarize
from tops.stages import run_eval

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_eval_excludes_training_problems_and_reports(tmp_path, tiny_model_dir):
    cfg = load_config(SMOKE, [f"model.base={tiny_model_dir}", "eval.n_problems=4", "eval.seeds=[0, 1]",
                              "eval.efforts=[low, none]"])
    train = load_problems(cfg.problems, n=40, seed=cfg.run.seed + 7919)  # the very draw eval would make
    train_path = write_artifact(train, tmp_path / "train.parquet", "problems")
    table = run_eval(cfg, tmp_path / "eval.parquet", [str(tiny_model_dir)], [train_path], progress=False)
    evals = read_artifact(tmp_path / "eval.parquet", "eval")
    assert len(evals) == 4 * 2 * 2
    assert not set(evals["problem_id"]) & set(train["problem_id"])
    assert set(evals["seed"]) == {0, 1} and set(evals["effort"]) == {"low", "none"}
    assert "| tiny | low |" in table and "contamination:" in table
    assert (tmp_path / "eval.md").read_text().startswith("| model | effort |")


def test_summary_spread_and_contamination():
    evals = pd.DataFrame({
        "model": ["m"] * 4, "problem_id": ["a", "b", "a", "b"], "difficulty": ["easy"] * 4,
        "effort": ["none"] * 4, "seed": [0, 0, 1, 1], "n_tokens": [10, 20, 30, 40],
        "correct": [True, True, False, True]})
    row = summarize(evals).iloc[0]
    assert row["accuracy"] == 0.75 and row["acc_std"] == 0.25 and row["mean_tokens"] == 25
    assert row["mean_tokens_correct"] == (10 + 20 + 40) / 3
    assert "0.750 ± 0.250" in markdown_table(evals)
    never_right = evals.assign(model="base", correct=False)
    assert "| base | none | 0.000 ± 0.000 | 0.00–0.00 | 25.0 | — |" in markdown_table(never_right)
    one_seed = evals[evals["seed"] == 0]  # one sample per problem: no spread over seeds to show
    assert "| m | none | 1.000 | 1.00–1.00 | 15.0 | 15.0 |" in markdown_table(one_seed)
    problems = pd.DataFrame({"problem_id": ["x", "y"],
                             "question": ["Natalia sold clips to 48 of her friends in April and then",
                                          "A totally different question about trains"]})
    flagged = contamination(problems, ["She said Natalia sold clips to 48 of her friends in April, then May"])
    assert flagged == ["x"]
