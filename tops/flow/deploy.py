"""Scheduled runs: a Prefect deployment of the TOPS loop that runs like `tops run`.

Every deployment (`tops serve`, and `prefect.yaml` for a work pool) has `scheduled_loop` as its
entrypoint. A run validates the config before any work and starts the loop through the same
`tops.flow.pipeline.run` that `tops run` calls (deployed by file path as
`flows/tops_flow.py:scheduled_loop`, the entry point prefect.yaml names), so the configured task runner (`flow.runner`, e.g. Ray)
is used whichever way the run was started. (A deployment of the bare loop flow would be run by
Prefect from its entrypoint, without the runner.) A scheduled run is the next round of its run
folder (`flow.continue_rounds`), unless the overrides say `flow.continue_rounds=false`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from prefect import flow

from tops.errors import UserError

SCHEDULED_OVERRIDES = ["flow.continue_rounds=true"]  # before the deployment's own: those win


def scheduled_overrides(overrides: list[str] | None) -> list[str]:
    return [*SCHEDULED_OVERRIDES, *(overrides or [])]


@flow(name="tops-scheduled", log_prints=True)
def scheduled_loop(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """One scheduled run: validate, then the loop with its configured task runner, as a round."""
    from tops.flow.pipeline import run

    return run(config, scheduled_overrides(overrides))


def next_run(cron: str, after: dt.datetime | None = None) -> dt.datetime:
    """The first time after `after` (default now) that `cron` fires, in UTC; a bad cron is a UserError."""
    from cronsim import CronSim, CronSimError

    after = after or dt.datetime.now(dt.UTC)
    try:
        return next(CronSim(cron, after))
    except (CronSimError, StopIteration) as exc:
        raise UserError(f"--cron {cron!r}: not a cron schedule ({exc or 'it never fires'}); e.g. '0 3 * * *'") from None


# The deployable flow file that prefect.yaml names; absent when tops is installed without its checkout.
FLOW_FILE = Path(__file__).resolve().parents[2] / "flows" / "tops_flow.py"


def build_deployment(config: str | None, overrides: list[str], cron: str, name: str):
    next_run(cron)  # a bad schedule fails here, before anything is registered
    deployment = scheduled_loop.to_deployment(
        name=name,
        cron=cron,
        parameters={"config": config, "overrides": list(overrides)},
        description=f"TOPS loop for {config or 'default config'} on schedule '{cron}' (UTC), one round per run",
        tags=["tops"],
    )
    if FLOW_FILE.is_file():  # the same entry point as prefect.yaml, not this module's own path
        deployment.entrypoint = f"{os.path.relpath(FLOW_FILE, Path.cwd())}:{scheduled_loop.fn.__name__}"
    return deployment


def register(config: str | None, overrides: list[str], cron: str, name: str):
    """Create or update the deployment on the Prefect API; returns its id."""
    return build_deployment(config, overrides, cron, name).apply()


def schedule_line(config: str | None, overrides: list[str], cron: str, name: str,
                  after: dt.datetime | None = None) -> str:
    """When and where the next scheduled run happens: time, run folder, its round, the Prefect API."""
    from prefect.settings import PREFECT_API_URL

    from tops.config import load_config
    from tops.rounds import load_rounds

    cfg = load_config(config, scheduled_overrides(overrides))
    run_dir = cfg.run.dir
    finished = [r for r in load_rounds(run_dir) if r.status == "finished"] if Path(run_dir).is_dir() else []
    when = next_run(cron, after).strftime("%Y-%m-%d %H:%M UTC")
    api = PREFECT_API_URL.value() or "this process's temporary Prefect server"
    return (f"deployment 'tops-scheduled/{name}' (cron '{cron}', UTC): next run {when}, round {len(finished) + 1} "
            f"of run folder {run_dir}, task runner {cfg.flow.runner}; served from this process, Prefect API: {api}")


def serve(config: str | None, overrides: list[str], cron: str, name: str) -> None:
    """Register and serve the deployment here until interrupted (scheduled runs execute in-process)."""
    from prefect import serve as prefect_serve

    deployment = build_deployment(config, overrides, cron, name)
    print(schedule_line(config, overrides, cron, name), flush=True)
    prefect_serve(deployment)
