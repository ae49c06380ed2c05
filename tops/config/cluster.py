"""Where heavy stages run under `flow.runner: ray`: which Ray cluster, and what each stage asks of it.

Ray decides where a stage's `tops <stage>` child runs (tops/flow/ray_cluster.py); nothing here
changes what a stage computes, so no field enters a stage's cache key.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from tops.config.base import Strict, quoted

_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")


class ClusterConfig(Strict):
    # None: a fresh local Ray of this run's own (ray.init(address="local")), whatever a stale
    # /tmp/ray/ray_current_cluster or another local Ray says. "auto": the Ray started on this host
    # with `ray start`. host:port (the head's GCS) or ray://host:10001 (Ray Client): that cluster.
    # With an address the cluster's own resources count: only the address goes to ray.init.
    address: str | None = None
    # CPUs one heavy stage's Ray task asks for (one engine process; one training node).
    cpus_per_stage: float = Field(1, gt=0)
    # A fresh local Ray only: the CPUs it offers (None: this machine's).
    num_cpus: int | None = Field(None, ge=1)
    # How long a stage waits for the cluster to have room for it (e.g. N nodes for training).
    placement_timeout_s: float = Field(600, gt=0)

    @field_validator("address")
    @classmethod
    def _ray_address(cls, address: str | None) -> str | None:
        if address is None or address.strip() in ("", "local"):
            return None
        address = address.strip()
        if address == "auto" or address.startswith("ray://") or _HOST_PORT.match(address):
            return address
        raise ValueError(f"{quoted(address)} is not a Ray address (auto, host:port or ray://host:port; "
                         "unset for a local Ray of the run's own)")
