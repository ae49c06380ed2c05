"""Shared fixtures: one tiny model and one vLLM engine per test session (engine start-up is
the expensive part on CPU), a run folder per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

# `make test` runs on two pytest-xdist workers (pyproject's addopts: -n 2 --dist loadgroup). The
# intent: a module is one group, so its module-scoped runs are made once, and every test that
# starts a Ray cluster is in one group. Not yet what happens: test_flow's smoke run was still made
# on both workers (issue 29 note); static `xdist_group` marks are the next thing to try.
RAY_TESTS = {"test_ray_runner_maps_generation_shards", "test_deployment_runs_the_loop_with_its_task_runner"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        group = "ray" if module == "test_cluster" or item.originalname in RAY_TESTS else module
        item.add_marker(pytest.mark.xdist_group(group))


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
