"""Heavy stages on a Ray cluster (flow.runner: ray, tops/flow/ray_cluster.py): one real 2-node
cluster for the module (ray.cluster_utils.Cluster: two raylets on this machine, one CPU each),
real `tops` child processes, a real Prefect test server for the flow's retries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tops.artifacts import read_artifact, write_artifact
from tops.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"

@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local Ray: this module drives its own cluster
        ray.shutdown()
    for attempt in range(2):  # a raylet gets 30 s to register: a busy host can miss that once
        two = None
        try:
            two = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            two.add_node(num_cpus=1)
            two.wait_for_nodes(timeout=120)
            break
        except Exception:
            if two is not None:
                two.shutdown()
            if attempt:
                raise
    yield two
    ray.shutdown()
    two.shutdown()


def _cfg(root: Path, tiny_model_dir: Path, address: str, *extra: str):
    return load_config(SMOKE, [f"run.root={root}", f"model.base={tiny_model_dir}", "flow.runner=ray",
                               f"cluster.address={address}", "flow.retry_delay_s=0", *extra])


def _node_ids() -> set[str]:
    from tops.flow.ray_cluster import nodes

    return {n.id for n in nodes()}


# ---------------------------------------------------------------- joining Ray (issue 31)

_JOIN = """
import json, sys
import ray
from tops.config.cluster import ClusterConfig
from tops.flow.ray_cluster import connect
if sys.argv[1] == "plain":  # what task_runner_for did before: ray.init with resources
    try:
        ray.init(num_cpus=1, include_dashboard=False)
    except ValueError as exc:
        print(json.dumps({"plain_error": str(exc)})); sys.exit(0)
connect(ClusterConfig(num_cpus=1))
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "nodes": len(ray.nodes())}))
"""


def _join(mode: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _JOIN, mode], env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_no_address_is_a_fresh_local_ray_beside_a_stale_file_or_a_live_ray(cluster):
    """No cluster.address: our own local Ray, whether /tmp/ray/ray_current_cluster names a dead
    cluster (a killed Ray left it) or a live local one (this module's cluster wrote it)."""
    stale_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths live under it
    (stale_dir / "ray").mkdir()
    (stale_dir / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # nothing listens there
    stale = {"RAY_TMPDIR": str(stale_dir)}
    live = {"RAY_ADDRESS": ""}  # the cluster file under /tmp/ray names this module's live cluster
    runs = {name: _join(mode, env) for name, mode, env in
            (("plain", "plain", stale), ("stale", "ours", stale), ("live", "ours", live))}
    found = {}
    try:
        for name, proc in runs.items():
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"{name}: {err[-2000:]}"
            found[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(stale_dir, ignore_errors=True)
    assert "num_cpus and num_gpus must not be provided" in found["plain"]["plain_error"]  # the old failure
    assert found["stale"]["nodes"] == 1
    assert found["live"]["nodes"] == 1 and found["live"]["gcs"] != cluster.address


@pytest.mark.slow
def test_an_unreachable_address_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tops.cli", "run", "--dry-run", "--config", str(SMOKE),
                             "--set", f"run.root={tmp_path}", "--set", "flow.runner=ray",
                             "--set", "cluster.address=127.0.0.1:1"],
                            capture_output=True, text=True, timeout=180, env={**os.environ, "RAY_ADDRESS": ""})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cluster.address: cannot connect to 127.0.0.1:1" in result.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- training over two nodes


def _selected(path: Path) -> Path:
    rows = [{"problem_id": f"p{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1),
             "response": f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}.", "effort": "low",
             "n_tokens": 12, "policy": "shortest"} for i in range(16)]
    write_artifact(pd.DataFrame(rows), path, "selected")
    return path


@pytest.mark.slow
def test_training_over_two_nodes_matches_two_processes_on_one(cluster, tiny_model_dir, tmp_path):
    """train.num_machines=2: one process on each node under gloo (accelerate launch per node,
    placed by a STRICT_SPREAD placement group); same losses as 2 processes on one node."""
    import yaml

    from tops.flow.ray_cluster import place
    from tops.flow.tasks import child_command
    from tops.launch import Command
    from tops.layout import RunLayout

    data = _selected(tmp_path / "selected.parquet")
    args = ["train", "sft", "--data", str(data), "--kind", "selected", "--base", str(tiny_model_dir)]
    common = ["train.num_processes=2", "train.max_steps=3", "train.logging_steps=1"]
    runs = {}
    for name, extra in (("two_nodes", ["train.num_machines=2"]), ("one_node", [])):
        cfg = _cfg(tmp_path, tiny_model_dir, cluster.address, *common, *extra)
        out = tmp_path / name
        RunLayout.stage_config(out).write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        runs[name] = (cfg, out, child_command(args, out))
    # The reference: the same command on this node as the thread runner starts it, meanwhile.
    reference = subprocess.Popen(runs["one_node"][2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cfg, out, argv = runs["two_nodes"]
    lines = []
    [done] = place(cfg, "train", [Command(argv, "train")], log=lambda who, line: lines.append(f"[{who}] {line}"))
    assert done.returncode == 0, "\n".join(lines[-30:])
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]
    assert any(line.startswith("[train[node 1]]") for line in lines)  # rank 1's node streamed its output
    two = json.loads((out / "train_summary.json").read_text())
    one = json.loads((runs["one_node"][1] / "train_summary.json").read_text())
    assert two["world_size"] == 2 and two["num_machines"] == 2 and two["processes_per_node"] == 1
    assert len(set(two["ray_nodes"])) == 2 and set(two["ray_nodes"]) == _node_ids()
    assert one["world_size"] == 2 and one["processes_per_node"] == 2
    curve_two = pd.read_parquet(out / "loss.parquet")["loss"].tolist()
    curve_one = pd.read_parquet(runs["one_node"][1] / "loss.parquet")["loss"].tolist()
    assert len(curve_two) == 3 and curve_two == pytest.approx(curve_one, rel=1e-4)


# ---------------------------------------------------------------- generation shards


def _problems(path: Path, n: int) -> Path:
    rows = [{"problem_id": f"q{i}", "question": f"What is {i} + 2?", "answer": str(i + 2), "difficulty": "easy"}
            for i in range(n)]
    write_artifact(pd.DataFrame(rows), path, "problems")
    return path


def _sample_flow(cfg, problems: Path, model: Path):
    """The flow's sampling stage (Loop.child with a Sharded stage), as pipeline's sample step runs it."""
    from prefect import flow

    from tops.flow.stage_loop import Loop
    from tops.flow.tasks import Sharded

    @flow(name="cluster-sample")
    def sample() -> str:
        loop = Loop(cfg)
        args = ["generate", "--in", str(problems), "--model", str(model), "--label", "tiny", "--quiet"]
        return loop.child("generate", {"n": 1}, {"problems": str(problems)}, args, cfg,
                          sharded=Sharded("samples", str(problems), cfg.engine, str(model)))

    return sample()


def _part_records(run_dir: Path) -> dict[str, dict]:
    records = json.loads((run_dir / "stages" / "manifest.json").read_text())["stages"]
    return {stem: r for stem, r in records.items() if r["stage"] == "generate" and ".part" in stem}


@pytest.mark.slow
def test_generation_shards_land_on_both_nodes(harness, cluster, tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, tiny_model_dir, cluster.address, "generate.n_samples=1")
    problems = _problems(tmp_path / "problems.parquet", 6)
    samples = read_artifact(_sample_flow(cfg, problems, tiny_model_dir), "samples")
    assert len(samples) == 6 * 3 and not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    parts = _part_records(tmp_path / "smoke")
    assert len(parts) == 2 and {r["summary"]["ray_node"] for r in parts.values()} == _node_ids()


@pytest.mark.slow
def test_dry_run_names_the_nodes_and_each_stages_workers(cluster, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tops.cli import app

    result = CliRunner().invoke(app, ["run", "--dry-run", "--config", str(SMOKE), "--set", f"run.root={tmp_path}",
                                      "--set", f"model.base={tiny_model_dir}", "--set", "flow.runner=ray",
                                      "--set", f"cluster.address={cluster.address}",
                                      "--set", "train.num_processes=2", "--set", "train.num_machines=2"])
    assert result.exit_code == 0, result.output
    assert f"Ray cluster {cluster.address}: 2 nodes, 0 GPU(s), 2 CPU(s)" in result.output
    assert "Ray: 2 worker(s) on 2 node(s) (STRICT_SPREAD), 1 process(es) and 0 GPU(s) per node" in result.output
    assert "Ray: 2 worker(s) over up to 2 node(s)" in result.output  # a sampling stage's shards
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_node_lost_during_generation_leaves_a_complete_artifact(harness, cluster, tiny_model_dir, tmp_path):
    """The worker node goes while its shard runs: that shard's task fails, the flow's retry runs it
    on the node left, the finished part is kept, and the merge has every row once."""
    cfg = _cfg(tmp_path, tiny_model_dir, cluster.address, "generate.n_samples=2", "flow.retries=1")
    problems = _problems(tmp_path / "problems.parquet", 8)
    [worker] = list(cluster.worker_nodes)
    worker_id = worker.node_id
    seen: dict = {}

    def remove_when_its_shard_runs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "shard" not in seen:
            for proc in Path("/proc").iterdir():
                try:
                    environ = (proc / "environ").read_bytes()
                    cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"TOPS_RAY_NODE_ID={worker_id}".encode() in environ and b"generate" in cmdline:
                    seen["shard"] = cmdline[cmdline.index(b"--shard") + 1].decode()
                    break
            time.sleep(0.2)
        if "shard" in seen:
            time.sleep(1.0)
            cluster.remove_node(worker)

    watcher = threading.Thread(target=remove_when_its_shard_runs, daemon=True)
    watcher.start()
    out = _sample_flow(cfg, problems, tiny_model_dir)
    watcher.join(timeout=60)
    assert "shard" in seen, "the worker node never ran a shard"
    samples = read_artifact(out, "samples")
    assert len(samples) == 8 * 3 * 2 and not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    index = seen["shard"].split("/")[0]
    parts = _part_records(tmp_path / "smoke")
    [record] = [r for stem, r in parts.items() if stem.endswith(f".part{index}of2")]
    assert record["summary"]["ray_node"] != worker_id  # rerun on the node left
    assert not list((tmp_path / "smoke" / "stages").glob("*.part*of2.parquet"))


# ---------------------------------------------------------------- config, plan (no cluster)


def test_cluster_address_forms_and_the_flow_ray_address_alias():
    from tops.errors import UserError

    ray = ["flow.runner=ray"]
    assert load_config(SMOKE, [*ray, "cluster.address=10.0.0.1:6379"]).cluster.address == "10.0.0.1:6379"
    assert load_config(SMOKE, [*ray, "cluster.address=local"]).cluster.address is None
    assert load_config(SMOKE, [*ray, "flow.ray_address=ray://head:10001"]).cluster.address == "ray://head:10001"
    for sets, named in ((["cluster.address=head node"], "is not a Ray address"),
                        (["flow.ray_address=a:1", "cluster.address=b:2"], "disagree"),
                        (["flow.runner=thread", "cluster.address=auto"], "set flow.runner: ray")):
        with pytest.raises(UserError, match=named):
            load_config(SMOKE, [*ray, *sets])
    with pytest.raises(UserError, match="multiple of num_machines"):
        load_config(SMOKE, ["train.num_processes=3", "train.num_machines=2"])


def test_a_node_joins_a_job_through_its_environment(monkeypatch):
    from tops.config import TrainConfig
    from tops.errors import UserError
    from tops.train.nodes import machine_args

    cfg = TrainConfig(num_processes=4, num_machines=2)
    for var in ("TOPS_MACHINE_RANK", "TOPS_MAIN_PROCESS_IP", "TOPS_MAIN_PROCESS_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="TOPS_MACHINE_RANK, TOPS_MAIN_PROCESS_IP, TOPS_MAIN_PROCESS_PORT"):
        machine_args(cfg)
    monkeypatch.setenv("TOPS_MACHINE_RANK", "1")
    monkeypatch.setenv("TOPS_MAIN_PROCESS_IP", "10.0.0.1")
    monkeypatch.setenv("TOPS_MAIN_PROCESS_PORT", "29500")
    assert machine_args(cfg) == ["--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
                                 "--main_process_port", "29500"]
    assert machine_args(TrainConfig(num_processes=4)) == []


def test_the_configs_models_are_estimated_offline(monkeypatch):
    """The shipped config.json files: every Hub model a shipped config names has a shape offline,
    with the parameter counts the model cards publish."""
    import yaml
    from huggingface_hub import constants

    from tops.memory import _shape_or_reason, load_shape

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(Path(tempfile.mkdtemp())))  # nothing cached
    _shape_or_reason.cache_clear()
    named = set()
    for path in (REPO / "configs").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        named |= {m for m in (raw.get("model", {}).get("base"), (raw.get("seed") or {}).get("teacher"))
                  if m and "/" in m}
    assert {"Qwen/Qwen2.5-32B-Instruct", "Qwen/QwQ-32B-Preview", "Qwen/Qwen2.5-7B-Instruct"} <= named
    published = {"Qwen/Qwen2.5-7B-Instruct": 7.62, "Qwen/Qwen2.5-32B-Instruct": 32.76, "Qwen/QwQ-32B-Preview": 32.76,
                 "Qwen/Qwen3-8B": 8.19}  # billions, the model cards
    for model in named:
        assert round(load_shape(model).params / 1e9, 2) == published[model], model


def test_the_32b_recipe_plans_zero3_over_four_nodes(monkeypatch):
    from huggingface_hub import constants

    from tops.flow.pipeline import plan
    from tops.flow.stage_loop import format_plan
    from tops.memory import _shape_or_reason

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _shape_or_reason.cache_clear()
    cfg = load_config(REPO / "configs" / "qwen32b-gsm8k.yaml", ["cluster.address=null", "run.root=/nonexistent/runs"])
    assert (cfg.flow.runner, cfg.train.num_machines, cfg.train.num_processes, cfg.train.lora.enabled) == ("ray", 4, 32,
                                                                                                        False)
    page = format_plan(plan(cfg), cfg.run.dir)
    assert "not estimated" not in page
    assert "train-tops: to run (child process x32" in page and "sharded (ZeRO-3/FSDP)" in page
