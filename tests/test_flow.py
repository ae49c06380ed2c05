"""The TOPS loop as a Prefect flow, end to end on the smoke profile (tiny model, real engines,
real trainers, real Prefect server from prefect_test_harness)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_smoke_flow, smoke_overrides

from tops.artifacts import read_artifact
from tops.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_root(smoke_run):
    return smoke_run.root


def _overrides(root: Path, tiny_model_dir: Path, *extra: str) -> list[str]:
    return [f"run.root={root}", f"model.base={tiny_model_dir}", *extra]


_module_overrides = smoke_overrides  # the session's smoke run's settings (tests/conftest.py)


def _alive_with(needle: str) -> list[str]:
    """Command lines of live processes that mention `needle` (e.g. a test's run folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


_run = run_smoke_flow


def _task_run_times(flow_run_id) -> dict[str, tuple]:
    """{task run name: (start, end)} of one flow run, as Prefect recorded them."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def times():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {run.name: (run.start_time, run.end_time) for run in runs}

    return anyio.run(times)


@pytest.fixture(scope="module")
def first_run(smoke_run):
    """The session's smoke run (tests/conftest.py): (result, {task run name: state name})."""
    return smoke_run.result, smoke_run.states


EXPECTED = {
    "problems/seed.parquet": "problems", "problems/train.parquet": "problems",
    "problems/iter1.parquet": "problems", "problems/eval.parquet": "problems",
    "seed.parquet": "samples", "samples.parquet": "samples", "verified.parquet": "verified",
    "selected.parquet": "selected", "masked.parquet": "masked", "masked_random.parquet": "masked",
    "iter1/verified.parquet": "verified", "eval.parquet": "eval",
}


def test_smoke_flow_produces_every_artifact(first_run, run_root):
    result, states = first_run
    run_dir = Path(result["run_dir"])
    for name, kind in EXPECTED.items():
        frame = read_artifact(run_dir / name, kind)
        assert len(frame) > 0, name
    for model in ("tag", "tops", "random", "iter1"):
        folder = run_dir / "models" / model
        assert (folder / "config.json").exists() and (folder / ".tops-complete").exists(), model
    samples = read_artifact(run_dir / "samples.parquet", "samples")
    assert len(samples) == 12 * 3 * 4 and set(samples["effort"]) == {"low", "medium", "high"}
    evals = read_artifact(run_dir / "eval.parquet", "eval")
    assert set(evals["model"]) == {"base", "tag", "tops", "random", "iter1"}
    assert set(evals[evals["model"] == "tag"]["effort"]) == {"low", "medium", "high"}
    # held out: no eval problem was used for seed data or training
    used = pd.concat([read_artifact(run_dir / f"problems/{s}.parquet", "problems") for s in ("seed", "train", "iter1")])
    assert not set(evals["problem_id"]) & set(used["problem_id"])
    report = (run_dir / "report.md").read_text()
    # Iteration 1 trains on its shortest-correct responses, or says it had none and keeps the model.
    iter_verified = read_artifact(run_dir / "iter1/verified.parquet", "verified")
    if iter_verified["correct"].any():
        assert read_artifact(run_dir / "iter1/masked.parquet", "masked")["problem_id"].is_unique
        assert (run_dir / "models/iter1").resolve() != (run_dir / "models/tops").resolve()
    else:
        assert "iter1: no problem gave a correct response" in report
        assert (run_dir / "models/iter1").resolve() == (run_dir / "models/tops").resolve()
    assert "| tops | none |" in report and (run_dir / "accuracy_vs_tokens.png").stat().st_size > 0
    assert (run_dir / "effort_shares.png").exists()
    assert "95% CI (problems)" in report and "TOPS − " in report
    assert "## Time per stage" in report and "| train-tag | " in report and "| computed |" in report
    assert all(state == "Completed" for state in states.values()), states
    assert result["stages_reused"] == 0 and result["stages"] >= 10 and result["stage_minutes"] > 0


def test_a_run_is_watched_in_tensorboard(first_run):
    """`tensorboard --logdir <run>/logs`: every training stage's loss curve, the evaluations, and
    one summary per round (tops.tracking)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tops import rounds

    run_dir = Path(first_run[0]["run_dir"])

    def scalars(folder: Path, tag: str) -> list:
        events = EventAccumulator(str(folder))
        events.Reload()
        return events.Scalars(tag)

    trained = {p.name.rsplit("-", 1)[0]: p for p in (run_dir / "logs").glob("train-*")}
    assert set(trained) == {"train-tag", "train-tops", "train-random", "train-iter1"} or \
        set(trained) == {"train-tag", "train-tops", "train-random"}  # iter1 had nothing to learn from
    for folder in trained.values():
        assert scalars(folder, "train/loss"), folder
    [summary] = scalars(run_dir / "logs" / "rounds", "rounds/accuracy")
    assert summary.step == 1 and summary.value == pytest.approx(rounds.load_rounds(run_dir)[0].accuracy)
    assert scalars(run_dir / "logs" / "rounds", "eval/tops/none/accuracy")


def test_flow_trains_under_two_real_processes(first_run):
    """What the trainer's processes recorded, not what was asked for: the tag model on the two
    processes its override asks for, the models after it on train.num_processes (one)."""
    result, states = first_run
    run_dir = Path(result["run_dir"])
    for model in ("tag", "tops", "random"):
        summary = json.loads((run_dir / "models" / model / "train_summary.json").read_text())
        assert summary["num_processes"] == (2 if model == "tag" else 1), model
    records = json.loads((run_dir / "stages" / "manifest.json").read_text())["stages"]
    trained = {name: r for name, r in records.items() if r["stage"] == "train-sft"}
    assert len(trained) == len([name for name in states if name.startswith("train-")]) >= 3
    assert [r["summary"]["num_processes"] for r in trained.values()].count(2) == 1, trained


def test_evaluations_run_side_by_side_in_their_own_lanes(first_run):
    """smoke.yaml sets flow.concurrent_evals: 2: model i is evaluated in lane i % 2, so the two
    lanes overlap in time and a lane's evaluations follow one another; each child got its own core
    (tops.gpus.lane_plans), which its manifest record names. (A 1-core machine has one lane: the
    evaluations then run one after another, as checked here too.)"""
    from tops.gpus import usable_cpus

    result, states = first_run
    times = _task_run_times(result["flow_run_id"])
    order = ["eval-base", "eval-tag", "eval-tops", "eval-random", "eval-iter1"]
    spans = [times[name] for name in order]
    assert all(start is not None and end is not None for start, end in spans), spans

    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1]

    if len(usable_cpus()) < 2:
        assert not any(overlap(spans[i], spans[i + 1]) for i in range(len(spans) - 1))
        return
    assert overlap(spans[0], spans[1])  # lanes 0 and 1 at once
    for i in range(2, len(spans)):  # a lane's next evaluation starts after its previous one ended
        assert spans[i][0] >= spans[i - 2][1], (order[i], order[i - 2])
    records = json.loads((Path(result["run_dir"]) / "stages" / "manifest.json").read_text())["stages"]
    shares = {r["summary"]["labels"][0]: r["summary"].get("device_share", {}) for r in records.values()
              if r["stage"] == "eval"}
    lane0, lane1 = ({int(c) for c in shares[label]["cores"].split(",")} for label in ("base", "tag"))
    assert lane0 and lane1 and not lane0 & lane1
    assert shares["tops"] == shares["base"] and shares["random"] == shares["tag"]


def test_every_flow_stage_has_its_manifest_record_in_the_cli_form(first_run, tmp_path):
    import subprocess as sp

    result, states = first_run
    run_dir = Path(result["run_dir"])
    records = json.loads((run_dir / "stages" / "manifest.json").read_text())["stages"]
    outputs = {p.name.removesuffix(".parquet") for p in (run_dir / "stages").iterdir()
               if (p.suffix == ".parquet" and not p.name.startswith("eval-samples")) or p.is_dir()}
    assert outputs and outputs == set(records), outputs ^ set(records)
    assert {r["stage"] for r in records.values()} >= {"problems", "seed", "train-sft", "generate", "verify",
                                                      "select", "mask", "eval"}
    assert len(records) == len(states)  # one record per stage task
    # the CLI's own record of a stage has the same fields
    cli = sp.run([sys.executable, "-m", "tops.cli", "problems", "--config", str(SMOKE), "--n", "3",
                  "--out", str(tmp_path / "p.parquet")], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    cli_record = json.loads((tmp_path / "manifest.json").read_text())["stages"]["p"]
    flow_record = next(r for r in records.values() if r["stage"] == "problems")
    assert set(cli_record) == set(flow_record) - {"inputs"}
    # every heavy stage ran from the resolved config written beside its output
    heavy = [n for n in states if n == "seed" or n.startswith(("train-", "generate", "eval-"))]
    configs = list((run_dir / "stages").glob("*.yaml"))
    assert len(configs) == len(heavy) and all(load_config(c).run.dir == run_dir for c in configs)


def test_second_run_hits_every_cache(first_run, run_root, tiny_model_dir):
    result, states = _run(_module_overrides(run_root, tiny_model_dir))
    assert states and all(state == "Cached" for state in states.values()), states
    assert result["lineage"] == first_run[0]["lineage"]
    # the reused stages keep the time they took when they ran
    assert result["stages_reused"] == result["stages"] == first_run[0]["stages"]
    assert result["stage_minutes"] == first_run[0]["stage_minutes"]
    report = (Path(result["run_dir"]) / "report.md").read_text()
    assert "| computed |" not in report and f"0 computed, {result['stages']} reused" in report


def test_dry_run_after_a_finished_run_marks_every_stage_cached(first_run, run_root, tiny_model_dir, tmp_path):
    from tops.gpus import usable_cpus

    cmd = [sys.executable, "-m", "tops.cli", "run", "--dry-run", "--config", str(SMOKE)]
    for item in _module_overrides(run_root, tiny_model_dir):
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stages = first_run[1]
    assert f"{len(stages)} stages, {len(stages)} cached, 0 to run" in done.stdout, done.stdout
    for name in stages:
        assert f". {name}: cached" in done.stdout, name
    assert "$ tops train sft --data" in done.stdout and "child process x2" in done.stdout
    if len(usable_cpus()) >= 2:  # the evaluations' lanes: each command carries its share of the cores
        assert "lane 2 of 2" in done.stdout
        assert re.search(r"\$ VLLM_CPU_OMP_THREADS_BIND=[\d,]+ OMP_NUM_THREADS=\d+ tops eval", done.stdout)
    # a changed setting: that stage and what depends on it are to run, the rest stays cached
    done = subprocess.run([*cmd, "--set", "select.policy=random"], capture_output=True, text=True, timeout=300)
    assert ". select-tops: to run" in done.stdout and ". train-tops: to run" in done.stdout
    assert ". train-tag: cached" in done.stdout


def test_changed_policy_reruns_select_and_downstream_only(first_run, run_root, tiny_model_dir):
    _, states = _run(_module_overrides(run_root, tiny_model_dir, "select.policy=random"))
    upstream = ["problems-seed", "problems-train", "problems-iter1", "problems-eval", "seed", "train-tag",
                "generate", "verify", "select-random", "mask-random", "train-random", "eval-base", "eval-tag"]
    for name in upstream:
        assert states[name] == "Cached", (name, states)
    for name in ["select-tops", "mask-tops", "train-tops", "eval-tops"]:
        assert states[name] == "Completed", (name, states)


def test_deleted_artifact_is_rebuilt(first_run, run_root, tiny_model_dir):
    lineage = first_run[0]["lineage"]
    Path(lineage["verified.parquet"]).unlink()
    _, states = _run(_module_overrides(run_root, tiny_model_dir))
    assert states["verify"] == "Completed" and states["generate"] == "Cached"


def test_serve_registers_a_scheduled_deployment(harness):
    from prefect import get_client

    from tops.flow.deploy import register

    deployment_id = register(str(SMOKE), ["flow.iterations=0"], cron="0 3 * * *", name="smoke-nightly")

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    import anyio

    deployment = anyio.run(read)
    assert deployment.name == "smoke-nightly"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.parameters == {"config": str(SMOKE), "overrides": ["flow.iterations=0"]}


def test_killed_flow_resumes_with_the_same_rows(tmp_path, smoke_run):
    """Kill a real `tops run` while its generation child runs: no child survives the flow, and
    rerunning finishes with every row once. The run is a copy of the session's smoke run with
    another sampling temperature: seed data and tag model are cache hits, generation and what
    follows it run. Both `tops run`s use the session's Prefect server (no server start each)."""
    from prefect.settings import PREFECT_API_URL

    overrides = [*smoke_run.continue_in(tmp_path), "generate.sampling.temperature=0.9", "flow.iterations=0",
                 "flow.random_baseline=false", "generate.shard_size=4", "eval.n_problems=3", "eval.seeds=[0]"]
    published = tmp_path / "smoke" / "samples.parquet"
    before = published.read_bytes()  # the copied run's samples, at the temperature it ran with
    cmd = [sys.executable, "-m", "tops.cli", "run", "--config", str(SMOKE)]
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": PREFECT_API_URL.value()}
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    stages = tmp_path / "smoke" / "stages"
    deadline = time.time() + 600
    while time.time() < deadline and not any(stages.glob("generate-*.parquet.shards/shard-*.parquet")):
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        time.sleep(0.1)
    assert _alive_with(str(stages / "generate-"))  # the generation child is running
    os.killpg(first.pid, signal.SIGKILL)  # the flow's group; each child has a session of its own
    first.wait()
    deadline = time.time() + 20
    while _alive_with(str(tmp_path / "smoke")) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive_with(str(tmp_path / "smoke"))
    assert published.read_bytes() == before  # nothing of the killed generation was published

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    samples = read_artifact(published, "samples")
    assert published.read_bytes() != before and len(samples) == 12 * 3 * 4
    assert re.search(r"\| train-tag \| [\d.]+ \| reused \|", second.stdout)  # continued, not redone
    assert not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    assert "| tops | none |" in second.stdout


def test_bad_config_fails_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tops.cli", "run", "--config", str(SMOKE),
                             "--set", f"run.root={tmp_path}", "--set", "flow.iter_method=ppo"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "flow.iter_method" in result.stderr
    assert not list(tmp_path.iterdir())


def test_ray_runner_maps_generation_shards(harness, tmp_path, tiny_model_dir):
    """Distributed sampling: shards mapped over the flow's task runner, each child placed by Ray
    (tops/flow/ray_cluster.py) on a fresh local Ray of the run's own. The evaluation lanes
    (flow.concurrent_evals: 2) are shares of the flow's own node: a local Ray is this node, so
    they keep their cores under the Ray runner too."""
    from prefect import flow

    from tops.flow.pipeline import task_runner_for
    from tops.flow.stage_loop import Loop
    from tops.flow.steps import evaluate_all
    from tops.flow.steps import problems as _problems
    from tops.flow.steps import sample as _sample
    from tops.gpus import usable_cpus

    cfg = load_config(SMOKE, _overrides(tmp_path, tiny_model_dir, "flow.runner=ray", "flow.generate_shards=2",
                                        "generate.n_samples=1", "eval.n_problems=3", "eval.seeds=[0]"))
    assert cfg.flow.concurrent_evals == 2
    runner = task_runner_for(cfg)
    assert runner.__class__.__name__ == "ThreadPoolTaskRunner"  # Prefect's wrappers; Ray places the children

    @flow(task_runner=runner)
    def sample_and_evaluate():
        loop = Loop(cfg)
        problems = _problems(loop, "train", 6, 0, [])
        samples = _sample(loop, "generate", str(tiny_model_dir), "tiny", problems, cfg.generate)
        held_out = _problems(loop, "eval", None, None, [problems], heldout=True)
        models = {"a": (str(tiny_model_dir), ["none"]), "b": (str(tiny_model_dir), ["low"])}
        return samples, evaluate_all(loop, models, held_out)

    samples, evals = sample_and_evaluate()
    assert [sorted(set(read_artifact(p, "eval")["effort"])) for p in evals] == [["none"], ["low"]]
    records = json.loads((tmp_path / "smoke" / "stages" / "manifest.json").read_text())["stages"]
    if len(usable_cpus()) >= 2:
        cores = [{int(c) for c in r["summary"]["device_share"]["cores"].split(",")}
                 for r in records.values() if r["stage"] == "eval"]
        assert len(cores) == 2 and not cores[0] & cores[1]
    samples = read_artifact(samples, "samples")
    assert len(samples) == 6 * 3 and not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    assert set(samples["model"]) == {"tiny"}
    shards = sorted(Path(tmp_path / "smoke" / "stages").glob("generate-shard*-*.parquet"))
    assert len(shards) == 2
    records = json.loads((tmp_path / "smoke" / "stages" / "manifest.json").read_text())["stages"]
    assert sorted(r["summary"]["shard"] for r in records.values() if r["stage"] == "generate") == ["0/2", "1/2"]


def test_a_child_stages_input_error_names_the_stage(harness, tmp_path, tiny_model_dir):
    """Exit code 2 of a child stays a clean UserError that names the stage."""
    from prefect import flow

    from tops.errors import UserError
    from tops.flow.stage_loop import Loop
    from tops.flow.steps import problems as _problems

    cfg = load_config(SMOKE, _overrides(tmp_path, tiny_model_dir))

    @flow
    def bad_eval():
        loop = Loop(cfg)
        problems = _problems(loop, "eval", 2, 0, [])
        return loop.child("eval-nobody", {}, {"problems": problems},
                          ["eval", "--model", "nonexistent-model", "--problems", problems, "--quiet"], cfg)

    with pytest.raises(UserError, match=r"stage 'eval-nobody': model 'nonexistent-model': unknown model"):
        bad_eval()


def test_flow_run_exports_to_a_loadable_hub_dataset(first_run, tmp_path):
    import datasets

    from tops.hub import export_run

    run_dir = Path(first_run[0]["run_dir"])
    export_run(str(run_dir), "org/tops-smoke", local_dir=tmp_path / "export")
    samples = datasets.load_dataset(str(tmp_path / "export"), "samples", split="train")
    assert len(samples) == len(read_artifact(run_dir / "verified.parquet", "verified"))
    evals = datasets.load_dataset(str(tmp_path / "export"), "eval", split="test")
    assert len(evals) == len(read_artifact(run_dir / "eval.parquet", "eval"))
    assert "TOPS" in (tmp_path / "export" / "README.md").read_text()


def test_iter_dpo_stage_trains_from_pairs(first_run, run_root, tiny_model_dir):
    """The Iter-DPO branch: pairs from the run's verified samples -> DPO from the TOPS model."""
    from prefect import flow

    from tops.flow.stage_loop import Loop
    from tops.flow.steps import train as _train

    cfg = load_config(SMOKE, _module_overrides(run_root, tiny_model_dir, "flow.iter_method=dpo"))
    run_dir = Path(first_run[0]["run_dir"])
    verified = first_run[0]["lineage"]["verified.parquet"]

    @flow
    def dpo_only():
        loop = Loop(cfg)
        pairs = loop.light("pairs", "pairs-check", {"verified": verified})
        return pairs, _train(loop, "iter_dpo", "dpo", pairs, "pairs", str(run_dir / "models" / "tops"),
                             label="dpo-check")

    pairs, model = dpo_only()
    frame = read_artifact(pairs, "pairs")
    assert len(frame) > 0 and set(frame["pair_kind"]) <= {"longest_incorrect", "shorter_incorrect"}
    assert (Path(model) / ".tops-complete").exists() and (run_dir / "models" / "dpo-check").is_symlink()
    summary = (Path(model) / "train_summary.json").read_text()
    assert '"kind": "dpo"' in summary


def test_train_task_keeps_dill_global_detection(harness):
    """datasets fingerprints map functions with dill, which reads a function's globals from dis
    output it captures on stdout; Prefect's print capture (log_prints) swallowed that output."""
    import dill.detect
    from prefect import flow, task

    from tops.flow.tasks import heavy_task as train_task

    def uses_len(x):
        return len(x)

    @task(log_prints=train_task.log_prints)
    def probe():
        return sorted(dill.detect.nestedglobals(uses_len))

    @flow(log_prints=True)
    def outer():
        return probe()

    assert outer() == ["len"]
