"""Tampered campaign records (issue 30, items 2 and 9): rounds.json and the ledger are validated,
and every path they name must lie inside the run folder, before a round writes anything.

Each case builds a finished round 1 by hand (as tests/test_rounds.py does), tampers with one
record and runs the CLI in-process: `tops run --dry-run` and the checks `tops run` makes before
Prefect starts (tops.flow.pipeline.check_run_folder). Exit 2, one `error:` line naming the field,
the folder byte-identical, nothing written outside it. No engine, no Prefect server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tops import rounds
from tops.artifacts import write_artifact
from tops.cli import main
from tops.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


def _problems(start: int, stop: int) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(start, stop)],
                         "question": [f"What is {i} + 1?" for i in range(start, stop)],
                         "answer": [str(i + 1) for i in range(start, stop)], "difficulty": None})


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    """A run folder whose round 1 finished; (overrides for the CLI, run folder, a file outside)."""
    monkeypatch.chdir(tmp_path)
    sets = [f"run.root={tmp_path / 'runs'}", "run.name=camp", "flow.continue_rounds=true", "flow.iterations=1"]
    cfg = load_config(SMOKE, sets)
    run = cfg.run.dir
    files = {role: str(write_artifact(_problems(a, a + 3), run / "stages" / f"problems-{role}-k.parquet", "problems"))
             for role, a in {"seed": 0, "train": 3, "iter1": 6, "eval": 9}.items()}
    rounds.record_first_round(run, files, "base", "sft", iterations=1)
    model = run / "stages" / "train-iter1-k"
    model.mkdir()
    evals = pd.DataFrame({"model": "iter1", "problem_id": ["p9"], "difficulty": None, "effort": "none", "seed": 0,
                          "n_tokens": [5], "correct": [True]})
    rounds.finish_round(run, 1, str(model), evals)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "SECRET.txt").write_text("secret\n")
    return sets, run, elsewhere


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tamper_round(run: Path, **changes) -> None:
    data = json.loads((run / "rounds.json").read_text())
    data["rounds"][0].update(changes)
    (run / "rounds.json").write_text(json.dumps(data))


def _refused(capsys, sets: list[str], root: Path, *needles: str) -> str:
    """Both entry points refuse with exit 2 and one last line; nothing in `root` changes."""
    from tops.flow.pipeline import check_run_folder

    before = _snapshot(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dry-run", "--config", str(SMOKE), *[a for s in sets for a in ("--set", s)]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    from tops.errors import UserError

    with pytest.raises(UserError):  # what `tops run` checks before Prefect starts
        check_run_folder(load_config(SMOKE, sets))
    assert _snapshot(root) == before
    return lines[0]


@pytest.mark.parametrize("changes, needles", [
    ({"number": "1"}, ["rounds.0.number", "valid integer"]),
    ({"number": 1e308}, ["rounds.0.number"]),
    ({"number": -1}, ["rounds.0.number"]),
    ({"iteration": "x"}, ["rounds.0.iteration"]),
    ({"problems": None}, ["rounds.0.problems"]),
    ({"model_label": "../../x"}, ["rounds.0.model_label"]),
    ({"status": "done"}, ["rounds.0.status"]),
])
def test_a_mistyped_round_record_names_its_field(campaign, capsys, changes, needles):
    sets, run, _ = campaign
    _tamper_round(run, **changes)
    _refused(capsys, sets, run.parent.parent, *needles)


@pytest.mark.parametrize("model", ["../../elsewhere", "ABSOLUTE", "/etc", "stages/missing"])
def test_a_recorded_model_outside_the_run_folder_or_missing_is_refused(campaign, capsys, model):
    sets, run, elsewhere = campaign
    _tamper_round(run, model=str(elsewhere) if model == "ABSOLUTE" else model)
    line = _refused(capsys, sets, run.parent.parent, "rounds.json: round 1: model")
    assert ("outside the run folder" in line) != (model == "stages/missing")


def test_a_recorded_problems_path_outside_is_refused(campaign, capsys):
    sets, run, elsewhere = campaign
    write_artifact(_problems(0, 3), elsewhere / "p.parquet", "problems")
    _tamper_round(run, problems={**json.loads((run / "rounds.json").read_text())["rounds"][0]["problems"],
                                 "eval": str(elsewhere / "p.parquet")})
    _refused(capsys, sets, run.parent.parent, "problems.eval", "outside the run folder")


def test_a_second_round_one_or_unordered_rounds_are_refused(campaign, capsys):
    sets, run, _ = campaign
    data = json.loads((run / "rounds.json").read_text())
    data["rounds"].append(dict(data["rounds"][0]))
    (run / "rounds.json").write_text(json.dumps(data))
    _refused(capsys, sets, run.parent.parent, "not unique and increasing")


@pytest.mark.parametrize("damage", ["truncated", "no round column", "string rounds"])
def test_a_damaged_ledger_is_refused(campaign, capsys, damage):
    sets, run, _ = campaign
    ledger = run / "rounds" / "problems.parquet"
    if damage == "truncated":
        ledger.write_bytes(ledger.read_bytes()[:40])
    else:
        table = pq.read_table(ledger)
        table = (table.drop_columns(["round"]) if damage == "no round column"
                 else table.set_column(1, "round", pa.array(["1"] * len(table))))
        pq.write_table(table, ledger)
    _refused(capsys, sets, run.parent.parent, str(ledger))


def test_the_untampered_folder_plans_round_two(campaign, capsys):
    sets, run, _ = campaign
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dry-run", "--config", str(SMOKE), *[a for s in sets for a in ("--set", s)]])
    assert exc.value.code == 0 and "1. generate-iter2: to run" in capsys.readouterr().out


def test_export_never_publishes_a_recorded_model_outside_the_run_folder(campaign, capsys, monkeypatch):
    sets, run, elsewhere = campaign
    _tamper_round(run, model="../../elsewhere")
    write_artifact(pd.DataFrame({"model": "iter1", "problem_id": ["p9"], "difficulty": None, "effort": "none",
                                 "seed": 0, "n_tokens": [5], "correct": [True]}), run / "eval.parquet", "eval")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    before = _snapshot(run.parent.parent)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["export", "--run", str(run), "--repo-id", "me/data", "--model-repo-id", "me/model",
              "--local-dir", str(run.parent.parent / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert "rounds.json" in lines[0] and "outside the run folder" in lines[0], lines[0]
    assert _snapshot(run.parent.parent) == before and not (run.parent.parent / "out").exists()
