"""Extreme values (issue 30, items 5 and 10): bounded counts, finite temperatures, each effort once,
quotes cut to 80 characters, and one response limit shared by generate's writer and every reader.
No engine: the CLI runs in-process (`tops run --dry-run` plans and writes nothing)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tops.artifacts import MAX_TEXT_CHARS, read_artifact, write_artifact
from tops.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("setting, field", [
    ("generate.efforts=[low,low]", "generate.efforts"),
    ("flow.iterations=1000000000", "flow.iterations"),
    ("generate.n_samples=1000000000", "generate.n_samples"),
    ("flow.iter_samples=100000", "flow.iter_samples"),
    ("generate.sampling.temperature=.inf", "generate.sampling.temperature"),
    ("generate.sampling.temperature=.nan", "generate.sampling.temperature"),
    ("generate.n_samples_by_effort={low: 100000}", "generate.n_samples_by_effort"),
])
def test_an_unbounded_or_duplicate_setting_is_refused_before_planning(tmp_path, monkeypatch, capsys, setting, field):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli(capsys, "run", "--dry-run", "--config", str(SMOKE), "--set", f"run.root={tmp_path}",
                       "--set", setting)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], lines
    assert not list(tmp_path.iterdir())


def test_a_long_repo_id_is_quoted_once_and_cut(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    repo_id = "org/" + "x" * 500
    code, lines = _cli(capsys, "export", "--run", str(tmp_path), "--repo-id", repo_id, "--dry-run")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].count("x" * 70) == 1 and "x" * 80 not in lines[0] and len(lines[0]) < 400, lines[0]


def test_generate_cuts_a_response_to_the_limit_its_readers_accept(tmp_path):
    from tops.engines import Request
    from tops.engines.base import Completion
    from tops.generate import _shard_rows

    problems = pd.DataFrame({"problem_id": ["p0"], "question": ["q"], "answer": ["1"], "difficulty": [None]})
    request = Request(messages=[{"role": "user", "content": "q"}], meta={"row": 0, "effort": "low"})
    long = Completion(text="a" * (MAX_TEXT_CHARS + 10), n_tokens=5, finish_reason="stop")
    short = Completion(text="b", n_tokens=1, finish_reason="stop")
    rows = _shard_rows(problems, [request], [[long, short]], "m")
    write_artifact(rows, tmp_path / "samples.parquet", "samples")
    back = read_artifact(tmp_path / "samples.parquet", "samples")  # the reader refuses anything longer
    assert back["response"].str.len().tolist() == [MAX_TEXT_CHARS, 1]
    assert back["finish_reason"].tolist() == ["length", "stop"]
