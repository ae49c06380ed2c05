"""`tops demo`: its results stay in the run folders (the checkout is left as it was; the README's
section is a maintainers' option), and the long run on the embedded default (SmolLM2-135M-Instruct):
the whole loop with 3 loop seeds, ~16 min each on a 2-core host with bfloat16 kernels, ~35-37 min
on an AVX2-only one (2.0 h in all there).

The long run is not in `make test`; run it with `.venv/bin/pytest -m demo`. It checks what the
README's results section claims, on the runs' own artifacts: the paper's shape on the means over
the 3 runs (accuracy tolerance: the spread over runs), and the goals that hold run by run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_report import _write_run  # runs with paper-shaped eval rows, no engine

from tops.compare import load_run, pooled_checks
from tops.demo import README_END, README_START, finish, readme_to_write
from tops.errors import UserError
from tops.layout import RunLayout, logs_for

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]


@pytest.mark.demo
def test_demo_shows_the_tops_shape(tmp_path):
    seeds = [arg for s in SEEDS for arg in ("--loop-seed", str(s))]
    result = subprocess.run([sys.executable, "-m", "tops.cli", "demo", *seeds,
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


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_demo_writes_into_its_run_folders_and_leaves_the_checkout_alone(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "docs" / "demo").mkdir(parents=True)
    (repo / "docs" / "demo" / "accuracy_vs_tokens.png").write_bytes(b"old plot")
    (repo / "README.md").write_text(f"intro\n{README_START}\nold numbers\n{README_END}\n")
    root = repo / "data" / "runs"
    dirs = [_write_run(root, "demo", 0, 0.7), _write_run(root, "demo-seed1", 1, 0.7)]
    report = RunLayout(dirs[0]).report
    report.write_text("# TOPS run `demo`\n\n## Held-out evaluation\n\n![accuracy vs tokens](accuracy_vs_tokens.png)\n")
    (dirs[0] / "accuracy_vs_tokens.png").write_bytes(b"\x89PNG new plot")
    runs = [{"run_dir": str(d), "report": str(RunLayout(d).report), "minutes": 1.0} for d in dirs]
    checkout = {k: v for k, v in _files(repo).items() if not k.startswith("data/")}

    said = finish(runs, "demo", None)  # `tops demo`, `make demo`
    assert {k: v for k, v in _files(repo).items() if not k.startswith("data/")} == checkout
    across = root / "demo-seeds.md"
    assert across.exists() and across.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert f"report {report}, plots accuracy_vs_tokens.png beside it" in said
    assert f"report {RunLayout(dirs[1]).report}" in said  # the second run has no report: named anyway
    assert f"across runs {across}, plot demo-seeds.png beside it" in said and "README" not in said

    said = finish(runs, "demo", readme_to_write(repo))  # `tops demo --write-readme`, `make demo-seeds`
    text = (repo / "README.md").read_text()
    assert "old numbers" not in text and "### Across whole-loop seeds" in text
    assert (repo / "docs" / "demo" / "accuracy_vs_tokens.png").read_bytes() == b"\x89PNG new plot"
    assert (repo / "docs" / "demo" / "demo-seeds.png").exists()
    assert f"rewrote the results section of {repo / 'README.md'}" in said


def test_write_readme_needs_the_results_section_before_any_run(tmp_path):
    with pytest.raises(UserError, match="--write-readme: .*README.md has no results section"):
        readme_to_write(tmp_path)
    (tmp_path / "README.md").write_text("a README without the markers\n")
    with pytest.raises(UserError, match="no results section"):
        readme_to_write(tmp_path)


def test_git_ignores_everything_the_demo_writes():
    """`make demo` from the checkout writes under data/ only (runs, the prepared model, caches)."""
    run = RunLayout(REPO / "data" / "runs" / "demo")
    written = [run.report, run.lineage, run.timings, run.stage_output("train-tops", "0123abcd", folder=True),
               logs_for(run.stage_output("train-tops", "0123abcd", folder=True)) / "events.out.tfevents.1",
               REPO / "data" / "runs" / "demo-seeds.md", REPO / "data" / "runs" / "demo-seeds.png",
               REPO / "data" / "models" / "smollm2-135m-instruct" / "model.safetensors", REPO / "data" / "cache" / "x"]
    paths = [str(p.relative_to(REPO)) for p in written]
    result = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", *paths], cwd=REPO,
                            capture_output=True, text=True)
    ignored = {line.split("\t")[-1] for line in result.stdout.splitlines()}
    assert ignored == set(paths), set(paths) - ignored
