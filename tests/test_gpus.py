"""The shard plan: GPU count, engine groups pinned with CUDA_VISIBLE_DEVICES, disjoint shards and
a merge with exactly one row per key (no engine needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from tops.config import EngineConfig
from tops.errors import UserError
from tops.gpus import lane_plans, merge_parts, shard_frame, shard_plan, visible_gpus

EIGHT = [str(i) for i in range(8)]


@pytest.mark.parametrize("value, expected", [
    ("0,1,2", ["0", "1", "2"]),
    ("3, 5", ["3", "5"]),
    ("", []),
    ("-1", []),
    ("1,-1,2", ["1"]),  # CUDA ignores every id after an invalid one
    ("GPU-8f6c,GPU-11aa", ["GPU-8f6c", "GPU-11aa"]),
])
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, value, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == expected


def test_eight_gpus_tensor_parallel_two_make_four_pinned_engines():
    plan = shard_plan(EngineConfig(tensor_parallel_size=2), gpus=EIGHT)
    assert plan.on_gpu and plan.size == 4 and plan.gpus_per_engine == 2
    assert [g.env() for g in plan.groups] == [{"CUDA_VISIBLE_DEVICES": f"{2 * i},{2 * i + 1}"} for i in range(4)]
    assert not plan.idle_gpus
    assert "4 engine process(es) x 2 GPU(s)" in plan.describe()


def test_leftover_gpus_are_named_idle():
    plan = shard_plan(EngineConfig(tensor_parallel_size=3), gpus=EIGHT)
    assert plan.size == 2 and plan.idle_gpus == ("6", "7")
    assert [g.gpus for g in plan.groups] == [("0", "1", "2"), ("3", "4", "5")]


def test_gpu_ids_are_passed_on_as_the_parent_sees_them():
    plan = shard_plan(EngineConfig(), gpus=["4", "6"])
    assert [g.env()["CUDA_VISIBLE_DEVICES"] for g in plan.groups] == ["4", "6"]


def test_config_caps_gpus_and_engines():
    assert shard_plan(EngineConfig(gpus=4), gpus=EIGHT).size == 4
    assert shard_plan(EngineConfig(data_parallel_size=3, tensor_parallel_size=2), gpus=EIGHT).size == 3
    on_cpu = shard_plan(EngineConfig(gpus=0), gpus=EIGHT, cpus=[0, 1])
    assert not on_cpu.on_gpu and on_cpu.size == 1


@pytest.mark.parametrize("engine, message", [
    (EngineConfig(tensor_parallel_size=2, data_parallel_size=5), "hold only 4 engine"),
    (EngineConfig(tensor_parallel_size=16), "only 8 GPU(s)"),
    (EngineConfig(gpus=9), "this machine shows 8"),
])
def test_impossible_plans_are_user_errors(engine, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shard_plan(engine, gpus=EIGHT)


def test_a_dry_run_can_plan_for_a_bigger_node():
    plan = shard_plan(EngineConfig(gpus=8, tensor_parallel_size=2), gpus=[], planning=True)
    assert plan.on_gpu and plan.size == 4


def test_transformers_engine_uses_one_gpu_each():
    plan = shard_plan(EngineConfig(kind="hf", tensor_parallel_size=2), gpus=EIGHT)
    assert plan.size == 8 and plan.groups[3].gpus == ("3",)


def test_cpu_engines_split_the_cores():
    plan = shard_plan(EngineConfig(data_parallel_size=2), gpus=[], cpus=[0, 1, 2, 3])
    assert not plan.on_gpu and plan.size == 2
    assert [g.env() for g in plan.groups] == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0,1", "OMP_NUM_THREADS": "2"},
        {"VLLM_CPU_OMP_THREADS_BIND": "2,3", "OMP_NUM_THREADS": "2"}]
    shared = shard_plan(EngineConfig(data_parallel_size=3), gpus=[], cpus=[0, 1])
    assert shared.size == 3 and all(g.env() == {} for g in shared.groups)
    assert shard_plan(EngineConfig(), gpus=[], cpus=[0, 1]).size == 1


def test_concurrent_stages_get_disjoint_shares_of_the_node():
    """flow.concurrent_evals: lanes never share a GPU or a core, and cover what one stage would use."""
    eight = [str(i) for i in range(8)]
    lanes = lane_plans(EngineConfig(tensor_parallel_size=2), 2, gpus=eight)
    assert [[g.gpus for g in lane.groups] for lane in lanes] == [[("0", "1"), ("4", "5")], [("2", "3"), ("6", "7")]]
    assert all(lane.on_gpu and lane.gpus_per_engine == 2 for lane in lanes)
    assert [g.env() for g in lanes[1].groups] == [{"CUDA_VISIBLE_DEVICES": "2,3"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    # one CPU engine: the cores are split, each lane pinned to its own
    lanes = lane_plans(EngineConfig(), 2, gpus=[], cpus=[0, 1, 2, 3])
    assert [lane.groups[0].env() for lane in lanes] == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0,1", "OMP_NUM_THREADS": "2"},
        {"VLLM_CPU_OMP_THREADS_BIND": "2,3", "OMP_NUM_THREADS": "2"}]
    # fewer lanes than asked where two engines would share a GPU, or a lane would get no core
    assert len(lane_plans(EngineConfig(tensor_parallel_size=4), 3, gpus=eight)) == 2
    assert len(lane_plans(EngineConfig(), 3, gpus=["0"])) == 1
    assert len(lane_plans(EngineConfig(), 5, gpus=[], cpus=[0, 1])) == 2
    assert lane_plans(EngineConfig(), 2, gpus=[], cpus=[0])[0].groups[0].env() == {}


def test_openai_engine_is_one_client_process():
    engine = EngineConfig(kind="openai", base_url="http://localhost:8000/v1")
    assert shard_plan(engine, gpus=EIGHT, cpus=[0, 1]).size == 1


def _problems(n: int) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(n)], "question": ["q"] * n,
                         "answer": ["1"] * n, "difficulty": ["easy"] * n})


@pytest.mark.parametrize("n, count", [(10, 3), (2, 4), (7, 1)])
def test_shards_are_disjoint_and_cover_every_problem(n, count):
    problems = _problems(n)
    shards = [shard_frame(problems, i, count) for i in range(count)]
    ids = [pid for s in shards for pid in s["problem_id"]]
    assert sorted(ids) == sorted(problems["problem_id"]) and len(ids) == len(set(ids))


def _samples(problems: pd.DataFrame, efforts=("low", "high"), n=2) -> pd.DataFrame:
    return pd.DataFrame([{**row, "effort": e, "sample_idx": k, "response": f"{row['problem_id']}-{e}-{k}",
                          "n_tokens": 3, "finish_reason": "stop"}
                         for row in problems.to_dict("records") for e in efforts for k in range(n)])


def test_merge_gives_one_engines_rows_in_its_order():
    problems = _problems(7)
    whole = _samples(problems)
    parts = [_samples(shard_frame(problems, i, 3)) for i in range(3)]
    merged = merge_parts(parts, "samples", problems["problem_id"].tolist())
    pd.testing.assert_frame_equal(merged, whole)


def test_merge_refuses_a_duplicate_or_a_missing_problem():
    problems = _problems(4)
    part = _samples(problems.iloc[:2])
    with pytest.raises(RuntimeError, match="more than one shard"):
        merge_parts([part, part], "samples", problems["problem_id"].tolist()[:2])
    with pytest.raises(RuntimeError, match="no row"):
        merge_parts([part], "samples", problems["problem_id"].tolist())


def test_merge_of_seed_data_allows_problems_without_rows():
    problems = _problems(4)
    part = _samples(problems.iloc[[0, 2]])
    merged = merge_parts([part], "samples", problems["problem_id"].tolist(), every_problem=False)
    assert merged["problem_id"].drop_duplicates().tolist() == ["p0", "p2"]


def test_seed_shards_give_the_seed_data_of_one_process(tmp_path, tiny_model_dir):
    from tops.artifacts import read_artifact, write_artifact
    from tops.config import load_config
    from tops.domains import load_problems
    from tops.stages import run_seed

    cfg = load_config(None, [f"model.base={tiny_model_dir}", "seed.min_gap_tokens=5"])
    problems = tmp_path / "problems.parquet"
    write_artifact(load_problems(cfg.problems, n=9), problems, "problems")
    run_seed(cfg, tmp_path / "whole.parquet", problems_path=problems, base_model=str(tiny_model_dir))
    parts = []
    for i in range(2):
        run_seed(cfg, tmp_path / f"part{i}.parquet", problems_path=problems, base_model=str(tiny_model_dir),
                 shard=(i, 2))
        parts.append(read_artifact(tmp_path / f"part{i}.parquet", "samples"))
    order = read_artifact(problems, "problems")["problem_id"].tolist()
    merged = merge_parts(parts, "samples", order, every_problem=False)
    whole = read_artifact(tmp_path / "whole.parquet", "samples")
    keys = ["problem_id", "effort", "response", "n_tokens"]
    assert len(whole) > 0
    # the rules sort by problem id, one process or several
    pd.testing.assert_frame_equal(merged[keys].sort_values(keys[:2], ignore_index=True),
                                  whole[keys].sort_values(keys[:2], ignore_index=True))


def test_vllm_on_a_few_cores_binds_all_of_them(monkeypatch):
    """vLLM's "auto" binding keeps a core for its scheduler: on 2 cores, half the compute."""
    import tops.gpus
    from tops.engines.vllm_engine import BIND_ALL_CORES_UP_TO, cpu_threads_bind

    monkeypatch.setattr(tops.gpus, "usable_cpus", lambda: [0, 1])
    assert cpu_threads_bind() == "0,1"
    monkeypatch.setattr(tops.gpus, "usable_cpus", lambda: list(range(BIND_ALL_CORES_UP_TO + 1)))
    assert cpu_threads_bind() == "auto"  # NUMA-aware, and one core of many is little
