"""The TOPS loop as one Prefect flow.

seed data -> tag model -> multi-effort sampling -> verify -> select -> mask -> SFT of the base
(TOPS model) [-> random-correct baseline] -> k x (sample n from the latest model -> verify ->
Iter-SFT or Iter-DPO) -> evaluate every model -> report.

Each stage is one task (tops.flow.tasks) over its stage runner; heavy stages run as child
processes. `plan()` walks the same loop without running anything (`tops run --dry-run`).
"""

from __future__ import annotations

import os

import pandas as pd
import yaml
from prefect import flow

from tops import layout as names
from tops import rounds
from tops.artifacts import read_artifact, write_artifact
from tops.config import EFFORT_ORDER, TopsConfig, flow_problem_counts, load_config
from tops.confine import no_links_out
from tops.flow import campaign
from tops.flow.stage_loop import ChildStage, Loop, PlanStep, Sharded
from tops.flow.steps import (
    base_model,
    evaluate_all,
    improve,
    iterate,
    report,
    sample,
    train,
    train_side_by_side,
    train_stage,
    verify,
)
from tops.flow.steps import problems as draw
from tops.stages import stage as describe

# vLLM reconfigures logging when an engine starts; inside a flow that shuts down Prefect's API log
# handler while it holds the logging lock and deadlocks. Leave logging to Prefect instead.
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


BASE_EFFORTS = "base-efforts"  # the base model under its native efforts (efforts.native)


def loop_stages(loop: Loop) -> dict:
    """The whole loop on `loop`; returns the run's result (a plan: its steps in `loop.plan`)."""
    cfg, f = loop.cfg, loop.cfg.flow
    base = base_model(loop)
    seed_seed = cfg.run.seed

    # 1. problems for every split (disjoint by id) and seed data
    counts = flow_problem_counts(cfg)
    seed_problems = draw(loop, "seed", counts["seed"], seed_seed, [])
    train_problems = draw(loop, "train", counts["train"], seed_seed + 1, [seed_problems])
    iter_problems = [draw(loop, names.iteration(k), counts[names.iteration(k)], seed_seed + 1 + k,
                          [seed_problems, train_problems]) for k in range(1, f.iterations + 1)]
    used = [seed_problems, train_problems, *iter_problems]
    eval_problems = draw(loop, "eval", None, None, used, heldout=True)
    if not loop.planning:  # round 1 of the folder's campaign: its problems by role
        campaign.record_first_round(loop, {"seed": seed_problems, "train": train_problems, **{
            names.iteration(k): p for k, p in enumerate(iter_problems, start=1)}, "eval": eval_problems}, base)

    seed = None  # native efforts need seed data only for select.add_seed_low
    if not cfg.efforts.native or cfg.select.add_seed_low:
        teacher = None if cfg.seed.teacher == "arith" else Sharded("samples", seed_problems, cfg.seed.engine,
                                                                   cfg.seed.teacher, every_problem=False)
        seed = loop.heavy(ChildStage("seed", "seed", {"problems": seed_problems, "base": base},
                                     describe("seed").command(seed_problems), cfg, teacher))
        loop.publish(names.SEED, seed)

    # 2. format imitation: the tag model follows the effort prompts (native efforts: the base model
    # follows them as it is and samples them itself)
    native = cfg.efforts.native
    tag, tag_label = (base, names.BASE) if native else (train(loop, names.TAG, "sft", seed, "samples", base), names.TAG)

    # 3-6. multi-effort sampling, verify, select shortest-correct, mask
    gen = cfg.generate
    samples = sample(loop, "generate", tag, tag_label, train_problems, gen)
    loop.publish(names.SAMPLES, samples)
    verified = verify(loop, "verify", samples)
    loop.publish(names.VERIFIED, verified)
    seed_low = seed if cfg.select.add_seed_low else None
    selected, masked = improve(loop, verified, seed_low, cfg.select.policy, names.TOPS)
    loop.publish(names.SELECTED, selected)
    loop.publish(names.MASKED, masked)

    # 7. SFT of the base model on the selection -> TOPS model (no effort prompt)
    models = {names.BASE: (base, ["none"]), (BASE_EFFORTS if native else names.TAG): (tag, list(EFFORT_ORDER))}
    # (and the random-correct baseline: the same recipe on a random correct response per problem)
    trainings = {names.TOPS: train_stage(loop, names.TOPS, "sft", masked, "masked", base)}
    if f.random_baseline:
        _, masked_random = improve(loop, verified, seed_low, "random", names.RANDOM)
        loop.publish(names.MASKED_RANDOM, masked_random)
        trainings[names.RANDOM] = train_stage(loop, names.RANDOM, "sft", masked_random, "masked", base)
    trained = train_side_by_side(loop, trainings)
    tops_model = trained[names.TOPS]
    models.update({label: (path, ["none"]) for label, path in trained.items()})

    # 8. iterative self-improvement from the latest model
    latest, latest_label = tops_model, names.TOPS
    for k, problems in enumerate(iter_problems, start=1):
        latest = iterate(loop, k, latest, latest_label, problems)
        latest_label = names.iteration(k)
        models[latest_label] = (latest, ["none"])

    # 9. evaluate every model on held-out problems, each in its own process
    eval_parts = evaluate_all(loop, models, eval_problems)
    if loop.planning:
        campaign.plan_export(loop, 1)
        return {"run_dir": str(loop.dir), "plan": loop.plan}
    evals = pd.concat([read_artifact(p, "eval") for p in eval_parts], ignore_index=True)
    write_artifact(evals, loop.layout.eval, "eval")

    # 10. report, then the round's end: the history of rounds, the export stage (tops/flow/campaign.py)
    report_path = report(loop, evals, list(models), selected, eval_problems, used)
    campaign.save_lineage(loop, loop.lineage)
    return campaign.finish_first_round(loop, latest, evals, report_path)


def check_run_folder(cfg: TopsConfig) -> rounds.RoundPlan:
    """What a run of the folder is, after the checks that come before any write: no link out of the
    folder (tops/confine.py), valid round records whose paths stay inside it, the model a next
    round starts from present. `tops run` calls this before Prefect starts too."""
    run_dir = cfg.run.dir
    no_links_out(run_dir)
    plan = rounds.plan_round(run_dir, cfg)
    if plan.number > 1 and not plan.nothing_new:
        rounds.start_model(run_dir, plan)
    return plan


def run_loop(cfg: TopsConfig) -> dict:
    loop = Loop(cfg)
    plan = check_run_folder(cfg)
    if plan.nothing_new:  # a later round with nothing to learn from: say so, change nothing
        return campaign.nothing_new(loop, plan)
    loop.dir.mkdir(parents=True, exist_ok=True)
    loop.layout.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if plan.number > 1:  # a later round of this folder's campaign
        return campaign.continue_round(loop, plan)
    return loop_stages(loop)


@flow(name="tops-loop", log_prints=True)
def tops_loop(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """The whole TOPS loop for one config file (+ overrides)."""
    return run_loop(load_config(config, overrides))


def task_runner_for(cfg: TopsConfig):
    """Prefect's tasks run in the flow's process on a thread pool, whatever `flow.runner` says:
    a task is a thin wrapper (cache key, retries, logs) around a stage. Under `flow.runner: ray`
    every heavy stage's child command is placed on the Ray cluster by tops.flow.ray_cluster with
    its own resource requests; joining Ray here (in the main thread) makes a wrong
    cluster.address an error before any work."""
    if cfg.flow.runner == "ray":
        from tops.flow.ray_cluster import connect

        connect(cfg.cluster)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=cfg.flow.generate_shards)  # evaluation lanes have their own


def run(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Validate the config first (exit 2 on error), then run the flow with its task runner."""
    cfg = load_config(config, overrides)
    flow_problem_counts(cfg)  # conflicting problem counts fail here, before Prefect starts
    check_run_folder(cfg)  # so do tampered records and links out of the run folder
    return tops_loop.with_options(task_runner=task_runner_for(cfg))(
        config=str(config) if config else None, overrides=list(overrides or []))


def plan(cfg: TopsConfig) -> list[PlanStep]:
    """Every stage of a run of `cfg` in order, cached or to run; runs and writes nothing. A folder's
    later round plans that round (tops/flow/campaign.py)."""
    loop = Loop(cfg, planning=True)
    round_plan = check_run_folder(cfg)
    if round_plan.nothing_new:
        campaign.nothing_new(loop, round_plan)
    elif round_plan.number > 1:
        campaign.continue_round(loop, round_plan)
    else:
        loop_stages(loop)
    return loop.plan
