"""The long run on the embedded default (SmolLM2-135M-Instruct, ~30 min on 2 cores).

Not in `make test`; run it with `.venv/bin/pytest -m demo`. It checks the paper's shape on the
run's own artifacts: the goals of the README's results section.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tops.artifacts import read_artifact
from tops.report import shape_checks

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.demo
def test_demo_shows_the_tops_shape(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tops.cli", "demo", "--no-readme", "--set", f"run.root={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=7200)  # ~25 min normally; a slow host took 61
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "demo"
    evals = read_artifact(run_dir / "eval.parquet", "eval")
    selected = read_artifact(run_dir / "selected.parquet", "selected")
    checks = shape_checks(evals, selected[selected["policy"] != "seed-low"], ["easy", "medium", "hard"])
    assert len(checks) == 5
    failed = [(goal, detail) for goal, met, detail in checks if not met]
    assert not failed, failed
