"""Prefect entry point by file path (`prefect deploy flows/tops_flow.py:tops_loop`, prefect.yaml)."""

from tops.flows.pipeline import run, tops_loop

__all__ = ["run", "tops_loop"]
