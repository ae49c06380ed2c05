"""Deployable flows, by file path (prefect.yaml: `flows/tops_flow.py:scheduled_loop`).

`scheduled_loop` is the one deploy entry point (`tops serve` and `prefect deploy --all` both
deploy it); `tops_loop` is the bare loop for `prefect` users who compose their own runs.
"""

from tops.flow.deploy import scheduled_loop
from tops.flow.pipeline import run, tops_loop

__all__ = ["run", "scheduled_loop", "tops_loop"]
