"""The long run on the embedded default (SmolLM2-135M-Instruct): the whole loop with 3 loop seeds,
~28 min each on 2 cores.

Not in `make test`; run it with `.venv/bin/pytest -m demo`. It checks what the README's results
section claims, on the runs' own artifacts: the paper's shape on the means over the 3 runs
(accuracy tolerance: the spread over runs), and the goals that hold run by run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tops.compare import load_run, pooled_checks

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]


@pytest.mark.demo
def test_demo_shows_the_tops_shape(tmp_path):
    seeds = [arg for s in SEEDS for arg in ("--loop-seed", str(s))]
    result = subprocess.run([sys.executable, "-m", "tops.cli", "demo", "--no-readme", *seeds,
                             "--set", f"run.root={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=4 * 3600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [load_run(tmp_path / ("demo" if s == 0 else f"demo-seed{s}")) for s in SEEDS]
    assert (tmp_path / "demo-seeds.md").exists()
    checks, met_in = pooled_checks(runs)
    assert len(checks) == 5
    failed = [(goal, detail) for goal, met, detail in checks if not met]
    assert not failed, failed
    # every run on its own: the efforts are followed, low effort is for easy problems, TOPS is short
    for i in (0, 1, 3, 4):
        assert met_in[i] == len(SEEDS), (checks[i][0], met_in[i])
