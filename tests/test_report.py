"""Report statistics: bootstrap intervals over problems, the shape goals, runs side by side,
and the README section `tops demo` writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tops.artifacts import write_artifact
from tops.bootstrap import (
    accuracy_intervals,
    paired_difference,
    paired_difference_over_runs,
    per_problem_accuracy,
)
from tops.compare import compare_markdown, load_run
from tops.demo import README_END, README_START, update_readme_results
from tops.errors import UserError
from tops.goals import goal_checks, shape_checks

LEVELS = ["easy", "hard"]


def _evals(accuracy: dict[tuple[str, str], dict[str, float]], n_per_level: int = 30, seeds: int = 3,
           tokens: dict[tuple[str, str], int] | None = None, rng_seed: int = 0) -> pd.DataFrame:
    """Eval rows where system (model, effort) is right with the given probability per difficulty."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for (model, effort), by_level in accuracy.items():
        for level in LEVELS:
            for i in range(n_per_level):
                for seed in range(seeds):
                    rows.append({"model": model, "effort": effort, "problem_id": f"{level}-{i}", "difficulty": level,
                                 "seed": seed, "n_tokens": (tokens or {}).get((model, effort), 50),
                                 "correct": bool(rng.random() < by_level[level])})
    return pd.DataFrame(rows)


def test_stratified_intervals_hold_difficulty_fixed():
    # Perfect on easy, never right on hard, 30 of each: resampling within difficulty keeps the
    # mix at 50/50, so the interval has no width; resampling across levels would widen it.
    evals = _evals({("m", "none"): {"easy": 1.0, "hard": 0.0}})
    interval = accuracy_intervals(evals)[("m", "none")]
    assert interval.estimate == interval.low == interval.high == 0.5
    assert interval.n_problems == 60


def test_interval_shrinks_with_more_problems_and_covers_the_estimate():
    few = accuracy_intervals(_evals({("m", "none"): {"easy": 0.7, "hard": 0.4}}, n_per_level=10))[("m", "none")]
    many = accuracy_intervals(_evals({("m", "none"): {"easy": 0.7, "hard": 0.4}}, n_per_level=200))[("m", "none")]
    assert few.low <= few.estimate <= few.high and many.low <= many.estimate <= many.high
    assert (many.high - many.low) < (few.high - few.low) / 2


def test_paired_difference_is_tighter_than_the_two_intervals():
    evals = _evals({("a", "none"): {"easy": 0.8, "hard": 0.5}})
    # b: the same answers as a, except wrong on a handful of problems a got right
    b = evals.assign(model="b")
    flip = b["problem_id"].isin(["easy-1", "easy-2", "hard-3"])
    b.loc[flip, "correct"] = False
    both = pd.concat([evals, b], ignore_index=True)
    diff = paired_difference(both, ("a", "none"), ("b", "none"))
    table = per_problem_accuracy(both)
    assert diff.estimate == pytest.approx((table[("a", "none")] - table[("b", "none")]).mean())
    assert diff.low >= 0 and diff.high > 0  # b is never better on any problem
    intervals = accuracy_intervals(both)
    assert diff.high - diff.low < intervals[("a", "none")].high - intervals[("a", "none")].low
    same = paired_difference(both, ("a", "none"), ("a", "none"))
    assert (same.estimate, same.low, same.high) == (0, 0, 0) and not same.excludes_zero()
    with pytest.raises(KeyError, match="'c' at effort 'none'"):
        paired_difference(both, ("a", "none"), ("c", "none"))


def test_paired_difference_over_runs_pools_runs_and_widens_with_their_spread():
    """Three runs where a beats b by about 0.1, 0.1 and 0.1 vs. by 0.3, 0.1 and -0.1: the same mean,
    and the runs' spread shows in the interval (the runs are resampled, not only the problems)."""
    def run(gap: float, rng_seed: int) -> pd.DataFrame:
        return _evals({("a", "none"): {"easy": 0.6 + gap, "hard": 0.4 + gap},
                       ("b", "none"): {"easy": 0.6, "hard": 0.4}}, n_per_level=60, rng_seed=rng_seed)

    steady = [run(0.1, k) for k in range(3)]
    spread = [run(g, k) for k, g in zip(range(3), (0.3, 0.1, -0.1), strict=True)]
    one, per_run = paired_difference_over_runs(steady, ("a", "none"), ("b", "none"))
    assert per_run == pytest.approx([paired_difference(e, ("a", "none"), ("b", "none")).estimate for e in steady])
    assert one.estimate == pytest.approx(np.mean(per_run)) and one.n_problems == 3 * 120
    assert one.excludes_zero() and one.low < one.estimate < one.high
    wide, wide_runs = paired_difference_over_runs(spread, ("a", "none"), ("b", "none"))
    assert wide_runs[0] > wide_runs[1] > wide_runs[2]
    assert wide.high - wide.low > 1.5 * (one.high - one.low)
    with pytest.raises(KeyError, match="'c' at effort 'none'"):
        paired_difference_over_runs(steady, ("a", "none"), ("c", "none"))


def _paper_shaped(tops_hard: float, rng_seed: int = 0) -> pd.DataFrame:
    accuracy = {("tag", "low"): {"easy": 0.95, "hard": 0.1}, ("tag", "medium"): {"easy": 0.9, "hard": 0.6},
                ("tag", "high"): {"easy": 0.95, "hard": 0.7}, ("tops", "none"): {"easy": 0.95, "hard": tops_hard},
                ("random", "none"): {"easy": 0.95, "hard": 0.7}}
    tokens = {("tag", "low"): 25, ("tag", "medium"): 75, ("tag", "high"): 130, ("tops", "none"): 65,
              ("random", "none"): 85}
    return _evals(accuracy, tokens=tokens, rng_seed=rng_seed)


def _selection(low_easy: int, low_hard: int) -> pd.DataFrame:
    rows = [("easy", "low")] * low_easy + [("easy", "medium")] * (10 - low_easy)
    rows += [("hard", "low")] * low_hard + [("hard", "medium")] * (10 - low_hard)
    return pd.DataFrame([{"problem_id": f"p{i}", "question": "q", "answer": "1", "response": "r", "effort": e,
                          "n_tokens": 10, "policy": "shortest", "difficulty": d} for i, (d, e) in enumerate(rows)])


def test_shape_checks_name_the_goal_and_the_paired_interval():
    checks = shape_checks(_paper_shaped(tops_hard=0.7), _selection(9, 1), LEVELS)
    assert [met for _, met, _ in checks] == [True, True, True, True, True]
    goal, _, detail = checks[2]
    assert "best single effort (high)" in goal and "TOPS − high:" in detail and "over 60 problems" in detail
    weak = shape_checks(_paper_shaped(tops_hard=0.05), _selection(1, 9), LEVELS)
    assert [met for _, met, _ in weak] == [True, False, False, True, True]


def test_one_sample_per_problem_judges_goal_three_by_the_paired_interval():
    # One eval seed: no seed spread to lean on; TOPS may trail the best effort by less than the
    # paired interval's reach, and is judged short once the whole interval lies below zero.
    def one_seed(tops_hard: float) -> pd.DataFrame:
        accuracy = {("tag", "low"): {"easy": 0.95, "hard": 0.1}, ("tag", "medium"): {"easy": 0.9, "hard": 0.6},
                    ("tag", "high"): {"easy": 0.95, "hard": 0.7}, ("tops", "none"): {"easy": 0.95, "hard": tops_hard}}
        tokens = {("tag", "low"): 25, ("tag", "medium"): 75, ("tag", "high"): 130, ("tops", "none"): 65}
        return _evals(accuracy, seeds=1, tokens=tokens)
    close = shape_checks(one_seed(0.62), None, LEVELS)
    goal, met, detail = close[1]
    assert "paired 95% CI over problems" in goal and "seed spread" not in detail
    low, high = (float(x) for x in detail.split("95% CI ")[1].split(" over")[0].split(" to "))
    assert met == (high >= 0) and low < 0
    far = shape_checks(one_seed(0.05), None, LEVELS)
    assert not far[1][1] and float(far[1][2].split(" to ")[1].split(" over")[0]) < 0


def test_goal_checks_use_the_given_spread():
    table = pd.DataFrame({"model": ["tag"] * 3 + ["tops"], "effort": ["low", "medium", "high", "none"],
                          "accuracy": [0.3, 0.7, 0.8, 0.75], "acc_std": [0.0, 0.0, 0.02, 0.06],
                          "mean_tokens": [20.0, 70.0, 130.0, 60.0]})
    checks = goal_checks(table, None)
    assert checks[1][1] and "(seed spread 0.060)" in checks[1][2]
    tight = goal_checks(table.assign(acc_std=0.01), None, spread_name="whole-loop spread")
    assert not tight[1][1] and "whole-loop spread 0.010" in tight[1][2]


def _write_run(root: Path, name: str, seed: int, tops_hard: float) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    write_artifact(_paper_shaped(tops_hard, rng_seed=seed), run_dir / "eval.parquet", "eval")
    selection = pd.concat([_selection(9, 1), _selection(9, 0).assign(policy="seed-low", effort="low")])
    write_artifact(selection, run_dir / "selected.parquet", "selected")
    config = {"run": {"seed": seed}, "problems": {"source": {"levels": {"easy": {}, "hard": {}}}}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def test_compare_pools_runs_and_counts_goals_per_run(tmp_path):
    dirs = [_write_run(tmp_path, "demo", 0, 0.7), _write_run(tmp_path, "demo-seed1", 1, 0.7),
            _write_run(tmp_path, "demo-seed2", 2, 0.05)]
    runs = [load_run(d) for d in dirs]
    assert runs[1].seed == 1 and runs[0].difficulty_order == LEVELS
    assert set(runs[0].selected["policy"]) == {"shortest"}  # appended seed rows were not chosen
    text = compare_markdown(runs, ["tag", "tops", "random"])
    assert "`demo-seed1` (run.seed 1)" in text
    tops_row = next(line for line in text.splitlines() if line.startswith("| tops | none |"))
    per_run = [float(x) for x in tops_row.split("|")[4].split("/")]
    assert per_run[2] < per_run[0] - 0.2  # the run whose TOPS fails hard problems
    goal_rows = [line for line in text.splitlines() if line.startswith("| TOPS accuracy")]
    assert goal_rows and goal_rows[0].endswith(" 2 of 3 |") and "whole-loop spread" in goal_rows[0]
    assert "| tag model follows the efforts: mean tokens low < medium < high | yes |" in text
    paired = [line for line in text.splitlines() if line.startswith("| TOPS − ")]
    assert [line.split("|")[1].strip() for line in paired] == [
        "TOPS − random-correct SFT", "TOPS − the tag model's best effort (high)"]
    means = [float(x) for x in paired[0].split("|")[3].split("/")]
    assert means[2] < means[0] - 0.2  # the third run's TOPS fails hard problems, random does not

    out = tmp_path / "pages" / "seeds.md"  # a folder that does not exist yet
    result = subprocess.run([sys.executable, "-m", "tops.cli", "compare", *map(str, dirs), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "![accuracy vs tokens over runs](seeds.png)" in out.read_text()
    assert (tmp_path / "pages" / "seeds.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_bad_input(tmp_path):
    run = _write_run(tmp_path, "demo", 0, 0.7)
    with pytest.raises(UserError, match="at least 2 runs"):
        compare_markdown([load_run(run)])
    result = subprocess.run([sys.executable, "-m", "tops.cli", "compare", str(run), str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no eval.parquet" in result.stderr
    assert result.stdout == ""


def test_readme_section_is_written_from_the_runs(tmp_path):
    report_dir = tmp_path / "data" / "runs" / "demo"
    report_dir.mkdir(parents=True)
    (report_dir / "report.md").write_text("# TOPS run `demo`\n\n## Held-out evaluation\n\n| t |\n\n"
                                          "![accuracy vs tokens](accuracy_vs_tokens.png)\n")
    (report_dir / "accuracy_vs_tokens.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold numbers\n{README_END}\noutro\n")
    runs = [{"run_dir": str(report_dir), "report": str(report_dir / "report.md"), "minutes": 25.0, "stages": 30,
             "stages_reused": 0, "stage_minutes": 24.0},
            {"run_dir": str(tmp_path / "demo-seed1"), "report": "", "minutes": 0.5, "stages": 30,
             "stages_reused": 30, "stage_minutes": 26.5}]
    update_readme_results(readme, runs, "ACROSS")
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "`demo` 25.0 min, all 30 stages computed" in text
    assert "`demo-seed1` 0.5 min with 30 of 30 stages reused from an earlier run (26.5 min when they ran)" in text
    # the runs together first (the goals are judged there), then the first run's report one level down
    assert text.index("### Across whole-loop seeds\n\nACROSS") < text.index("### Run `demo` in detail")
    assert "\n#### Held-out evaluation" in text and "\n### Held-out" not in text
    assert "](docs/demo/accuracy_vs_tokens.png)" in text and (tmp_path / "docs/demo/accuracy_vs_tokens.png").exists()
    update_readme_results(readme, runs[:1])  # one run: its report's sections at level 3
    assert "\n### Held-out evaluation" in readme.read_text() and "Across" not in readme.read_text()


def test_demo_plan_keeps_the_configured_seed_unless_loop_seeds_are_given():
    from tops.demo import demo_plan

    assert demo_plan("demo", 7, ["run.seed=7"], None) == {7: ["run.seed=7"]}
    plan = demo_plan("demo", 0, ["eval.n_problems=9"], [0, 2, 2])
    assert plan == {0: ["eval.n_problems=9", "run.seed=0", "run.name=demo"],
                    2: ["eval.n_problems=9", "run.seed=2", "run.name=demo-seed2"]}
