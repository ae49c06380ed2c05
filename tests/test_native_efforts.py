"""A run with native efforts (efforts.native): the base model follows the efforts as it is, so
the flow trains no tag model, samples the base model's own efforts and the report sets them
against the TOPS model. Smoke profile with the real engines, trainer and Prefect; the seed
data stays only because the smoke profile keeps select.add_seed_low (the random tiny model
rarely answers right on its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tops.artifacts import read_artifact
from tops.config import load_config

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"

pytestmark = pytest.mark.slow


def test_native_efforts_skip_the_tag_model_and_still_report(harness, tmp_path, tiny_model_dir):
    from tops.flow.pipeline import tops_loop

    overrides = [f"run.root={tmp_path}", f"model.base={tiny_model_dir}", "efforts.native=true",
                 "flow.iterations=0", "flow.random_baseline=false", "flow.train_overrides.tops.epochs=2",
                 "eval.n_problems=4"]
    load_config(SMOKE, overrides)  # valid as given
    state = tops_loop(config=str(SMOKE), overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    run_dir = Path(result["run_dir"])
    assert not (run_dir / "models" / "tag").exists() and not list((run_dir / "stages").glob("train-tag-*"))
    samples = read_artifact(run_dir / "samples.parquet", "samples")
    assert set(samples["model"]) == {"base"}  # the base model sampled its own efforts
    assert set(samples["effort"]) == {"low", "medium", "high"}
    evals = read_artifact(run_dir / "eval.parquet", "eval")
    assert set(evals["model"]) == {"base", "base-efforts", "tops"}
    assert set(evals[evals["model"] == "base-efforts"]["effort"]) == {"low", "medium", "high"}
    report = (run_dir / "report.md").read_text()
    for row in ("| base-efforts | low |", "| base-efforts | high |", "| tops | none |",
                "| tops | none | held-out | all |"):
        assert row in report
    assert (run_dir / "accuracy_vs_budget.png").stat().st_size > 0 and "accuracy_vs_budget.png" in report
    assert (run_dir / "models" / "tops" / ".tops-complete").exists()
