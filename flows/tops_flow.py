"""Prefect entry point (`prefect deploy flows/tops_flow.py:tops_loop`, prefect.yaml): the flow lives
in tops.flow, so installing tops puts no top-level package named `flows` on anyone's path."""

from tops.flow.pipeline import run, tops_loop

__all__ = ["run", "tops_loop"]
