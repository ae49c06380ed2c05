"""The campaign model (tops/rounds.py) on run folders built by hand: which round comes next, what it
learns from, how a killed round resumes, and the history table and plot. The flow's use of it is
tested end to end in tests/test_rounds_flow.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tops import rounds
from tops.artifacts import read_artifact, write_artifact
from tops.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _problems(start: int, stop: int) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(start, stop)],
                         "question": [f"What is {i} + 1?" for i in range(start, stop)],
                         "answer": [str(i + 1) for i in range(start, stop)], "difficulty": None})


def _evals(label: str, correct: list[bool], tokens: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"model": label, "problem_id": [f"e{i}" for i in range(len(correct))], "difficulty": None,
                         "effort": "none", "seed": 0, "n_tokens": tokens, "correct": correct})


def _first_round(run: Path, cfg) -> None:
    """Round 1 as the flow records it: its problems by role, then its latest model and numbers."""
    source = read_artifact(cfg.problems.source.path, "problems")
    files = {}
    for role, (a, b) in {"seed": (0, 4), "train": (4, 8), "iter1": (8, 10), "eval": (10, 13)}.items():
        files[role] = str(write_artifact(source.iloc[a:b], run / "stages" / f"problems-{role}-abc.parquet", "problems"))
    rounds.record_first_round(run, files, "base-model", "sft", iterations=1,
                              source_ids=rounds.source_problem_ids(cfg.problems))
    model = run / "stages" / "train-iter1-abc"
    model.mkdir(parents=True)
    rounds.finish_round(run, 1, str(model), pd.concat([_evals("tops", [True] * 3, [9] * 3),
                                                       _evals("iter1", [True, False, False], [30, 20, 10])]))


@pytest.fixture
def campaign(tmp_path):
    source = tmp_path / "problems.parquet"
    write_artifact(_problems(0, 16), source, "problems")
    cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "problems.source.kind=file",
                             f"problems.source.path={source}", "problems.source.columns.problem_id=problem_id",
                             "flow.iter_problems=2", "flow.continue_rounds=true"])
    run = cfg.run.dir
    run.mkdir(parents=True)
    return cfg, run, source


def test_rounds_continue_on_unused_then_exactly_the_new_rows(campaign):
    cfg, run, source = campaign
    assert rounds.plan_round(run, cfg).number == 1  # nothing finished yet: the whole loop
    _first_round(run, cfg)
    first = rounds.load_rounds(run)[0]
    assert (first.status, first.model, first.accuracy, first.mean_tokens) == (
        "finished", "stages/train-iter1-abc", pytest.approx(1 / 3), 20.0)
    assert rounds.eval_problems(run) == run / "stages" / "problems-eval-abc.parquet"

    # round 2: unused rows of the same file, from round 1's latest model
    plan = rounds.plan_round(run, cfg)
    assert (plan.number, plan.parent.number, plan.label, plan.new_rows) == (2, 1, "iter2", None)
    used = set(rounds.load_ledger(run).query("role != 'seen'")["problem_id"])
    assert len(plan.problems) == 2 and not set(plan.problems["problem_id"]) & used
    assert set(plan.problems["problem_id"]) <= {f"p{i}" for i in range(13, 16)}
    path = rounds.start_round(run, plan, "sft")
    assert path == run / "problems" / "iter2.parquet"
    running = rounds.load_rounds(run)[-1]
    assert (running.status, running.parent, running.start_model) == ("running", 1, "stages/train-iter1-abc")

    # killed here: the next run takes up round 2 with the same problems
    again = rounds.plan_round(run, cfg)
    assert again.resumed and again.number == 2
    assert again.problems["problem_id"].tolist() == plan.problems["problem_id"].tolist()
    rounds.finish_round(run, 2, str(run / "stages" / "train-iter2-def"), _evals("iter2", [True, True, False], [8, 8, 8]),
                        notes=["kept"])

    # the file grows: round 3 learns from exactly the new rows, even though an old row is unused
    write_artifact(_problems(0, 19), source, "problems")
    plan = rounds.plan_round(run, cfg)
    assert (plan.number, plan.new_rows) == (3, 3)
    assert plan.problems["problem_id"].tolist() == ["p16", "p17", "p18"]
    rounds.start_round(run, plan, "sft")
    rounds.finish_round(run, 3, str(run / "stages" / "train-iter3-ghi"), _evals("iter3", [True] * 3, [6] * 3))

    # round 4 takes the last unused row; then nothing is new and nothing changes
    plan = rounds.plan_round(run, cfg)
    assert plan.problems["problem_id"].tolist() == list(
        {f"p{i}" for i in range(13, 16)} - set(read_artifact(run / "problems/iter2.parquet", "problems")["problem_id"]))
    rounds.start_round(run, plan, "sft")
    rounds.finish_round(run, 4, str(run / "stages" / "train-iter4-jkl"), _evals("iter4", [True] * 3, [5] * 3))
    before = (run / rounds.ROUNDS_FILE).read_bytes()
    plan = rounds.plan_round(run, cfg)
    assert plan.problems is None and "no rows since round 4" in plan.nothing_new
    assert (run / rounds.ROUNDS_FILE).read_bytes() == before

    table = rounds.history(run)
    assert table["round"].tolist() == [1, 2, 3, 4] and table["parent"].tolist()[1:] == [1, 2, 3]
    assert table["problems"].tolist() == [10, 2, 3, 1] and table["new_rows"].tolist()[2] == 3
    assert table["accuracy"].round(3).tolist() == [0.333, 0.667, 1.0, 1.0]
    assert table["mean_tokens"].tolist() == [20.0, 8.0, 6.0, 5.0]
    section = rounds.history_section(run, run / "rounds.png")
    assert "| 3 | 2 | iter3 | 3 | 3 | 1.000 | 6.0 | finished |" in section
    assert "![accuracy and mean tokens per round](rounds.png)" in section
    assert (run / "rounds.png").stat().st_size > 0


def test_arith_rounds_draw_problems_no_round_used(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}", "flow.iter_problems=5", "flow.continue_rounds=true"])
    run = cfg.run.dir
    from tops.domains import load_problems

    files = {role: str(write_artifact(load_problems(cfg.problems, n=6, seed=i), run / f"{role}.parquet", "problems"))
             for i, role in enumerate(["seed", "train", "iter1", "eval"])}
    rounds.record_first_round(run, files, "base", "sft", iterations=1)
    rounds.finish_round(run, 1, str(run / "m1"), _evals("iter1", [True], [3]))
    plan = rounds.plan_round(run, cfg)
    used = set(rounds.load_ledger(run)["problem_id"])
    assert len(plan.problems) == 5 and not set(plan.problems["problem_id"]) & used
    # without continue_rounds a rerun is round 1 again: every finished stage comes from the cache
    assert rounds.plan_round(run, cfg.model_copy(update={"flow": cfg.flow.model_copy(
        update={"continue_rounds": False})})).number == 1


def test_killed_first_round_leaves_no_ledger_rows_behind(campaign):
    cfg, run, _ = campaign
    _first_round(run, cfg)
    plan = rounds.plan_round(run, cfg)
    rounds.start_round(run, plan, "sft")
    records = json.loads((run / rounds.ROUNDS_FILE).read_text())["rounds"]
    (run / rounds.ROUNDS_FILE).write_text(json.dumps({"rounds": records[:1]}))  # killed between the two writes
    assert set(rounds.load_ledger(run)["round"]) == {1}
    assert rounds.plan_round(run, cfg).number == 2 and not rounds.plan_round(run, cfg).resumed


def test_cli_lists_rounds(campaign):
    cfg, run, _ = campaign
    proc = subprocess.run([sys.executable, "-m", "tops.cli", "rounds", str(run)], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "no rounds recorded yet" in proc.stdout
    _first_round(run, cfg)
    proc = subprocess.run([sys.executable, "-m", "tops.cli", "rounds", str(run)], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "| 1 | — | iter1 | 10 | — | 0.333 | 20.0 | finished |" in proc.stdout
    assert "round 1 (finished" in proc.stdout and "sft from base-model" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "tops.cli", "rounds", str(run / "nope")], capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such run folder" in bad.stderr
