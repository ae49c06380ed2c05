"""Rounds and publishing in the flow: the parts of a run that make it one round of a campaign.

Round 1 is the whole loop (tops/flow/pipeline.py); it is recorded once its problems are drawn and
finished with its latest model and held-out numbers. Round k+1 (`flow.continue_rounds` on a folder
whose loop finished) runs `continue_round`: one more self-improvement iteration from round k's
recorded latest model, on the round's new problems (tops/rounds.py), evaluated on round 1's
held-out set, then the report with the history of rounds. Every round ends with the export stage
when `export.repo_id` is set; its failure fails only that stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tops import layout as names
from tops import rounds, tracking
from tops.artifacts import read_artifact, write_artifact
from tops.errors import UserError
from tops.flow.stage_loop import PlanStep
from tops.flow.steps import evaluate, iterate, logger, report

ROUNDS_PLOT = names.ROUNDS_PLOT


def record_first_round(loop, problems: dict[str, str], base: str) -> None:
    """Round 1's problems by role (seed, train, iterK, eval) and the model it starts from."""
    cfg = loop.cfg
    rounds.record_first_round(loop.dir, problems, base, cfg.flow.iter_method, cfg.flow.iterations,
                              source_ids=rounds.source_problem_ids(cfg.problems))


def nothing_new(loop, plan: rounds.RoundPlan) -> dict:
    """A round with nothing to learn from says so and writes nothing."""
    message = (f"round {plan.number}: nothing new to learn from ({plan.nothing_new}); "
               "the run folder was left unchanged")
    logger(loop).warning(message)
    return {"run_dir": str(loop.dir), "round": plan.number, "nothing_new": message,
            "report": str(loop.layout.report), "lineage": {}, "stage_minutes": 0.0, "stages": 0,
            "stages_reused": 0}


def continue_round(loop, plan: rounds.RoundPlan) -> dict:
    """Round k+1: one more iteration from round k's recorded latest model, evaluated on round 1's set.
    A dry run (`loop.planning`) lists its stages and records nothing."""
    cfg = loop.cfg
    start = rounds.start_model(loop.dir, plan)  # checked before the round is recorded
    problems = (loop.layout.published(names.problems(plan.label)) if loop.planning
                else rounds.start_round(loop.dir, plan, cfg.flow.iter_method))
    logger(loop).info(f"round {plan.number}{' (resumed)' if plan.resumed else ''}: {plan.label} from round "
                       f"{plan.parent.number}'s model {start} on {len(plan.problems)} problems")
    loop.lineage[names.problems(plan.label)] = str(problems)
    latest = iterate(loop, plan.iteration, str(start), plan.parent.model_label, str(problems))
    eval_problems = str(rounds.eval_problems(loop.dir))
    new_eval = evaluate(loop, plan.label, latest, ["none"], eval_problems)
    if loop.planning:
        plan_export(loop, plan.number)
        return {"run_dir": str(loop.dir), "plan": loop.plan}
    new_evals = read_artifact(new_eval, "eval")
    earlier = read_artifact(loop.layout.eval, "eval")
    evals = pd.concat([earlier[earlier["model"] != plan.label], new_evals], ignore_index=True)
    write_artifact(evals, loop.layout.eval, "eval")

    record = rounds.finish_round(loop.dir, plan.number, latest, evals, notes=loop.notes)
    used = [str(rounds.resolve(loop.dir, path)) for r in rounds.load_rounds(loop.dir)
            for role, path in r.problems.items() if role != "eval"]
    report_path = report(loop, evals, list(dict.fromkeys(evals["model"])), str(loop.layout.published(names.SELECTED)),
                     eval_problems, used)
    lineage_file = loop.layout.lineage
    recorded = json.loads(lineage_file.read_text()) if lineage_file.exists() else {}
    lineage = {**{name: str(loop.dir / path) for name, path in recorded.items()}, **loop.lineage}
    save_lineage(loop, lineage)
    return finish(loop, record, report_path, lineage)


def save_lineage(loop, lineage: dict[str, str]) -> None:
    """lineage.json, its paths relative to the run folder (a renamed folder keeps it right)."""
    from tops.artifacts import atomic_write_text

    atomic_write_text(json.dumps({name: rounds.relative(path, loop.dir) for name, path in lineage.items()},
                                 indent=2), loop.layout.lineage)


def finish_first_round(loop, latest: str, evals: pd.DataFrame, report: Path) -> dict:
    record = rounds.finish_round(loop.dir, 1, latest, evals, notes=loop.notes)
    return finish(loop, record, report, loop.lineage)


def finish(loop, record: rounds.Round, report: Path, lineage: dict) -> dict:
    """Every round's end: its summary to the trackers, the history of rounds in the report, then the
    export stage."""
    try:
        tracking.log_round(loop.cfg.train.report_to, loop.dir, record, read_artifact(loop.layout.eval, "eval"))
    except Exception as exc:  # noqa: BLE001 - curves are a convenience; the round's records are written
        get_run_logger().warning(f"round {record.number}: not logged to {loop.cfg.train.report_to}: {exc}")
    history = rounds.history_section(loop.dir, loop.dir / ROUNDS_PLOT, ROUNDS_PLOT)
    published, failure = export_stage(loop, record)
    if published or failure:
        history += f"\n## Export\n\n- {published or 'failed: ' + failure}\n"
    report = Path(report)
    report.write_text(report.read_text().rstrip("\n") + "\n\n" + history)
    minutes, reused = loop.compute_minutes()
    result = {"run_dir": str(loop.dir), "report": str(report), "lineage": lineage, "round": record.number,
              "stage_minutes": round(minutes, 2), "stages": len(loop.steps), "stages_reused": reused}
    if failure:
        result["export_error"] = failure
    return result


def plan_export(loop, number: int) -> None:
    """A dry run's last step: the export stage, when export.repo_id is set."""
    if loop.cfg.export.repo_id:
        loop.plan.append(PlanStep(f"export-round{number}", {}, str(loop.dir / names.export_round(number)), False))


@task(name="export", cache_policy=NO_CACHE, retries=0)
def export_task(run_dir: str, export_cfg, record: rounds.Round) -> str:
    from tops.hub.publish import export_round

    published = export_round(run_dir, export_cfg, record)
    where = [u for u in (published.dataset_url, published.model_url) if u]
    return f"round {record.number} published to {', '.join(where)} ({published.commit_message!r})"


def export_stage(loop, record: rounds.Round) -> tuple[str | None, str | None]:
    """The last stage: publish the round. (what was published, None) or (None, the failure in one line)."""
    export_cfg = loop.cfg.export
    if not export_cfg.repo_id:
        return None, None
    try:
        done = export_task.with_options(task_run_name=f"export-round{record.number}")(
            str(loop.dir), export_cfg, record)
    except UserError as exc:
        failure = str(exc)
    except Exception as exc:  # the upload itself: the next round's export carries this round's data too
        failure = f"export of round {record.number}: {exc.__class__.__name__}: {exc}".split("\n")[0]
    else:
        get_run_logger().info(done)
        return done, None
    get_run_logger().error(failure)
    return None, failure
