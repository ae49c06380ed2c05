"""Scheduled runs: a Prefect deployment of the TOPS loop with a cron schedule.

`tops serve` registers the deployment and serves it from this process (no work pool needed);
`prefect.yaml` at the repository root shows the same deployment for a work pool.
"""

from __future__ import annotations

from tops.flows.tops_flow import tops_loop


def build_deployment(config: str | None, overrides: list[str], cron: str, name: str):
    return tops_loop.to_deployment(
        name=name,
        cron=cron,
        parameters={"config": config, "overrides": list(overrides)},
        description=f"TOPS loop for {config or 'default config'} on schedule '{cron}'",
        tags=["tops"],
    )


def register(config: str | None, overrides: list[str], cron: str, name: str):
    """Create or update the deployment on the Prefect API; returns its id."""
    return build_deployment(config, overrides, cron, name).apply()


def serve(config: str | None, overrides: list[str], cron: str, name: str) -> None:
    """Register and serve the deployment here until interrupted (scheduled runs execute in-process)."""
    from prefect import serve as prefect_serve

    prefect_serve(build_deployment(config, overrides, cron, name))
