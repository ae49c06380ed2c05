"""Shared fixtures: one tiny model and one vLLM engine per test session (engine start-up is
the expensive part on CPU), a run folder per test."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread per process, inherited by every child stage: the tests' models are tiny, so a
# second thread only adds synchronisation, and on a busy 2-core host (an evaluation lane, the
# Prefect server, a neighbour) a 2-thread OpenMP process waits on its other thread most of the
# time: the smoke tag model's 150 SFT steps took 116 s on 2 threads vs 9 s on 1 (BENCHMARKS.md).
# Tests of lane environments set OMP_NUM_THREADS themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

# `make test` runs on two pytest-xdist workers (pyproject's addopts: -n 2 --dist loadgroup) with the
# scheduler below: a module is one unit of work, so its module-scoped runs are made once; every test
# that starts a Ray cluster is in one unit; the longest units are handed out first, so the two
# workers finish close together. (xdist's own loadgroup reads `xdist_group` marks from rewritten
# node ids, which pytest 9.2's structured ids no longer carry: pytest-dev/pytest-xdist#1386.)
RAY_TESTS = {"test_ray_runner_maps_generation_shards", "test_deployment_runs_the_loop_with_its_task_runner"}
# Tests of other modules that continue the session's finished smoke run (fixture `smoke_run`): in
# test_flow's unit, the worker that made the run.
ON_THE_SMOKE_RUN = {"test_smoke_flow_with_grpo_iteration", "test_flow_on_two_vllm_engines_matches_one_engine"}
# Units by their time in the last profiled run (seconds on 2 busy cores, `pytest --durations`),
# longest first; the others follow in collection order.
LONGEST_FIRST = ("test_flow", "ray", "test_campaign", "test_gpu_node", "test_generate", "test_hostile_process",
                 "test_native_efforts", "test_launch", "test_grpo", "test_models", "test_cli", "test_choice")


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or "ray"."""
    path, _, rest = nodeid.partition("::")
    module = Path(path).stem
    name = rest.split("[", 1)[0].rsplit("::", 1)[-1]
    if module == "test_cluster" or name in RAY_TESTS:
        return "ray"
    return "test_flow" if name in ON_THE_SMOKE_RUN else module


class ModuleUnits(LoadScopeScheduling):
    """xdist's scope scheduling with our units as the scopes."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)


@pytest.hookimpl(optionalhook=True)  # also without xdist (`-p no:xdist`)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    config.option.loadscopereorder = False  # our order, not xdist's by number of tests
    return ModuleUnits(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Longest units first (the scheduler hands units out in collection order)."""
    strays = [item.nodeid for item in items if "smoke_run" in getattr(item, "fixturenames", ())
              and unit_of(item.nodeid) != "test_flow"]
    if strays:  # on another worker it would make the run a second time
        raise pytest.UsageError(f"add to ON_THE_SMOKE_RUN in tests/conftest.py: {', '.join(strays)}")
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(unit_of(item.nodeid), len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tops.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def smoke_config(tiny_model_dir):
    from tops.config import load_config

    return load_config(REPO / "configs" / "smoke.yaml", [f"model.base={tiny_model_dir}", "engine.kind=vllm"])


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir, smoke_config):
    """The session's one vLLM engine over the tiny model."""
    from tops.engines import make_engine

    engine = make_engine(str(tiny_model_dir), smoke_config.engine)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def harness():
    """One Prefect test server for the whole session, started by the first test that needs it
    (start-up is ~15 s on 2 cores, once instead of once per flow-test module). Tests read back
    only their own flow runs and deployments (by id), so they share its database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


SMOKE = REPO / "configs" / "smoke.yaml"
# The shared run trains its tag model under `accelerate launch` on two processes, started by the flow
# exactly as `tops train` starts them, and the models after it on one (two processes cost ~20 s of
# launcher and imports per model on 2 cores); a test that continues it keeps this setting, so the
# stages it does not change are cache hits.
SMOKE_RUN_SETTINGS = ("flow.train_overrides.tag.num_processes=2",)


def smoke_overrides(root: Path, tiny_model_dir: Path, *extra: str) -> list[str]:
    """The shared run's overrides under run.root `root`: its stages are cache hits unless `extra`
    changes them."""
    return [f"run.root={root}", f"model.base={tiny_model_dir}", *SMOKE_RUN_SETTINGS, *extra]


@dataclass(frozen=True)
class SmokeRun:
    root: Path  # run.root of the session's run (test_flow reruns and changes it in place)
    pristine: Path  # a copy taken as soon as it finished, for tests that continue it elsewhere
    result: dict
    states: dict[str, str]  # task run name -> Prefect state name
    tiny_model_dir: Path

    def overrides(self, root: Path, *extra: str) -> list[str]:
        return smoke_overrides(root, self.tiny_model_dir, *extra)

    def continue_in(self, root: Path) -> list[str]:
        """Copy the finished run under `root`; returns the overrides that continue it there (only
        what a test changes reruns: the stage cache is content-addressed and a run folder can move)."""
        shutil.copytree(self.pristine, Path(root) / self.pristine.name, symlinks=True)
        return self.overrides(root)


def run_smoke_flow(overrides: list[str]) -> tuple[dict, dict[str, str]]:
    """Run the smoke loop in this process; returns (result, {task run name: state name})."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tops.flow.pipeline import tops_loop

    state = tops_loop(config=str(SMOKE), overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    flow_run_id = state.state_details.flow_run_id

    async def task_states():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {run.name: run.state.name for run in runs}

    result["flow_run_id"] = flow_run_id  # for tests that read the task runs' times
    return result, anyio.run(task_states)


@pytest.fixture(scope="session")
def smoke_run(harness, tmp_path_factory, tiny_model_dir) -> SmokeRun:
    """The whole smoke loop, once per session (the suite's longest piece of work): test_flow asks
    it about every artifact and reruns it; the two-engine, GRPO-iteration and killed-flow tests
    continue a copy."""
    root = tmp_path_factory.mktemp("runs")
    result, states = run_smoke_flow(smoke_overrides(root, tiny_model_dir))
    run_dir = Path(result["run_dir"])
    pristine = tmp_path_factory.mktemp("pristine") / run_dir.name
    shutil.copytree(run_dir, pristine, symlinks=True)
    return SmokeRun(root, pristine, result, states, tiny_model_dir)

