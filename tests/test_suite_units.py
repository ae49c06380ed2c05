"""The suite's own scheduling (tests/conftest.py): which tests share a worker. A module's tests
must stay together (module-scoped runs are made once), every Ray test in one unit, and tests that
continue the session's smoke run on the worker that made it."""

from __future__ import annotations

from conftest import LONGEST_FIRST, ON_THE_SMOKE_RUN, RAY_TESTS, unit_of


def test_a_module_is_one_unit_and_parameters_do_not_split_it():
    assert unit_of("tests/test_select.py::test_a") == unit_of("tests/test_select.py::test_b[x-1]") == "test_select"
    assert unit_of("tests/test_select.py::TestGroup::test_c") == "test_select"


def test_every_ray_test_is_in_one_unit():
    assert unit_of("tests/test_cluster.py::test_anything") == "ray"
    for name in RAY_TESTS:
        assert unit_of(f"tests/test_somewhere.py::{name}") == "ray"
        assert unit_of(f"tests/test_somewhere.py::{name}[param]") == "ray"


def test_continuations_of_the_smoke_run_share_its_worker():
    for name in ON_THE_SMOKE_RUN:
        assert unit_of(f"tests/test_other.py::{name}") == "test_flow"
    assert LONGEST_FIRST[0] == "test_flow"  # the longest unit starts first


def test_the_scheduler_splits_by_these_units():
    from conftest import ModuleUnits

    split = ModuleUnits._split_scope  # uses no scheduler state
    assert split(None, "tests/test_flow.py::test_x") == "test_flow"
    assert split(None, "tests/test_cluster.py::test_y") == split(None, f"tests/test_flow.py::{sorted(RAY_TESTS)[0]}") == "ray"
