"""The loop's steps, each one or a few stages on a `Loop`: draw problems, sample, verify, select
and mask, train, one self-improvement iteration, evaluate, report. The first round
(tops/flow/pipeline.py) and later rounds (tops/flow/campaign.py) are both made of these.

Every stage's key, manifest config and command line come from its description
(tops.stages.catalog); a step only says which stage, on which inputs, with which parameters.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from tops import layout as names
from tops.artifacts import read_artifact
from tops.config import GenerateConfig, TopsConfig
from tops.flow.stage_loop import ChildStage, Loop, Sharded, visible_gpus
from tops.select import SampleKeys, candidates
from tops.stages import stage as describe
from tops.stages.catalog import train_command


def logger(loop: Loop):
    return logging.getLogger("tops.plan") if loop.planning else get_run_logger()


def base_model(loop: Loop) -> str:
    """The resolved base model; a plan does not prepare an alias's folder, it names what would be."""
    from tops.models import alias_folder, resolve_model

    name = loop.cfg.model.base
    if loop.planning:
        folder = alias_folder(name)
        if folder is not None:
            return str(folder)  # its stages are to run until it exists
    return resolve_model(name)


def train_config_for(cfg: TopsConfig, stage: str):
    """The tag model learns each row under its own effort prompt (format imitation); every
    self-improvement model trains under the unconditioned prompt, so it picks its own depth."""
    train_cfg = cfg.train_config(stage)
    if "system_prompt" not in cfg.flow.train_overrides.get(stage, {}):
        train_cfg = train_cfg.model_copy(update={"system_prompt": "effort" if stage == "tag" else "none"})
    return train_cfg


def problems(loop: Loop, split: str, n: int | None, seed: int | None, exclude: list[str],
             heldout: bool = False) -> str:
    path = loop.light("problems", f"problems-{split}", {f"exclude{i}": p for i, p in enumerate(exclude)},
                      params={"n": n, "seed": seed, "heldout": heldout}, exact=True)
    loop.publish(names.problems(split), path)
    return path


def sample(loop: Loop, stage: str, model: str, label: str, problems: str, gen: GenerateConfig) -> str:
    """Multi-depth sampling: one child process per engine group of the node, or
    `flow.generate_shards` tasks over disjoint shards (mapped over the flow's task runner), merged
    with every row once."""
    cfg = loop.cfg.model_copy(update={"generate": gen})
    return loop.heavy(ChildStage("generate", stage, {"model": model, "problems": problems},
                                 describe("generate").command(problems, model, label), cfg,
                                 Sharded("samples", problems, cfg.engine, cfg.model.base)),
                      spread=cfg.flow.generate_shards)


def verify(loop: Loop, name: str, samples: str) -> str:
    return loop.light("verify", name, {"samples": samples}, progress=False)


def train_stage(loop: Loop, stage: str, method: str, data: str, data_kind: str, base: str,
                label: str | None = None) -> ChildStage:
    """One model's training; `stage` picks the training overrides, `label` names the model."""
    cfg = loop.cfg.model_copy(update={"train": train_config_for(loop.cfg, stage)})
    return ChildStage("train", f"train-{label or stage}", {"data": data, "base": base},
                      train_command(method, data, data_kind, base), cfg, params={"method": method})


def train(loop: Loop, stage: str, method: str, data: str, data_kind: str, base: str, label: str | None = None) -> str:
    """Train one model; `stage` picks the training overrides, `label` names the model."""
    path = loop.heavy(train_stage(loop, stage, method, data, data_kind, base, label))
    loop.publish(names.model(label or stage), path)
    return path


def train_side_by_side(loop: Loop, jobs: dict[str, ChildStage]) -> dict[str, str]:
    """Independent trainings (TOPS and random-correct SFT) `flow.concurrent_trains` at a time on a
    CPU host, each on its share of the cores: two 1-thread trainers make 1.23x the tokens/s of one
    2-thread trainer (BENCHMARKS.md). On GPUs, under the Ray runner or with several processes per
    training, each training gets the whole node (or its own placement), one after the other."""
    from tops.gpus import lane_plans

    width = min(loop.cfg.flow.concurrent_trains, len(jobs))
    one_process = all(job.cfg.train.num_processes == 1 and job.cfg.train.num_machines == 1 for job in jobs.values())
    lanes = []
    if width > 1 and one_process and not loop.planning and visible_gpus() == 0 and loop.cfg.flow.runner != "ray":
        lanes = lane_plans(loop.cfg.engine.model_copy(update={"gpus": None, "data_parallel_size": None}), width, gpus=())
    if len(lanes) < 2:
        paths = {label: loop.heavy(stage) for label, stage in jobs.items()}
    else:
        done = loop.children_in_lanes(f"train ({', '.join(jobs)}, {len(lanes)} at a time)", list(jobs.values()), lanes)
        paths = dict(zip(jobs, done, strict=True))
    for label, path in paths.items():
        loop.publish(names.model(label), path)
    return paths


def mask(loop: Loop, cfg: TopsConfig, name: str, selected: str) -> str:
    """Rounds-mode masking in the flow's process; a judge needs an engine: a child process."""
    spec = describe("mask")
    if spec.runs_heavy(cfg):
        return loop.heavy(ChildStage("mask", f"mask-{name}", {"selected": selected}, spec.command(selected), cfg))
    return loop.light("mask", f"mask-{name}", {"selected": selected}, cfg, progress=False)


def improve(loop: Loop, verified: str, seed: str | None, policy: str, name: str) -> tuple[str, str]:
    """select (policy) -> mask: the training data of one self-improvement model."""
    cfg = loop.cfg.model_copy(deep=True)
    cfg.select.policy = policy
    selected = loop.light("select", f"select-{name}", {"verified": verified, "seed": seed}, cfg)
    return selected, mask(loop, cfg, name, selected)


def usable(loop: Loop, verified: str) -> bool:
    """Whether an iteration's samples give anything to learn from (a plan assumes so)."""
    if loop.planning and not Path(verified).exists():
        return True
    rows = read_artifact(verified, "verified")
    if loop.cfg.flow.iter_method == "dpo":
        correct = rows.groupby("problem_id")["correct"]
        return bool((correct.any() & ~correct.all()).any())
    # select's own rule: a correct response from a reliable enough effort
    return bool(candidates(SampleKeys.of(rows), loop.cfg.select.min_effort_accuracy).any())


def iterate(loop: Loop, k: int, latest: str, latest_label: str, problems: str) -> str:
    """Self-improvement iteration k from `latest` on `problems` (Iter-SFT or Iter-DPO as configured);
    returns the new latest model (the same one when no sample gave anything to learn from)."""
    cfg, f, gen = loop.cfg, loop.cfg.flow, loop.cfg.generate
    it = names.iteration(k)
    if f.iter_method == "grpo":  # GRPO samples and scores its own rollouts (LASER rewards)
        return train(loop, "iter_grpo", "grpo", problems, "problems", latest, label=it)
    iter_gen = GenerateConfig(efforts=["none"], n_samples=f.iter_samples, shard_size=gen.shard_size,
                              sampling=gen.sampling)
    it_samples = sample(loop, f"generate-{it}", latest, latest_label, problems, iter_gen)
    it_verified = verify(loop, f"verify-{it}", it_samples)
    loop.publish(names.in_iteration(k, names.VERIFIED), it_verified)
    if not usable(loop, it_verified):
        # Nothing to learn from: keep the model rather than fail a long run at its end.
        wanted = "a preference pair" if f.iter_method == "dpo" else "a correct response"
        if f.iter_method != "dpo" and cfg.select.min_effort_accuracy:
            wanted += f" in at least {cfg.select.min_effort_accuracy:.0%} of its samples"
        loop.notes.append(f"{it}: no problem gave {wanted}; the model was left unchanged")
        logger(loop).warning(loop.notes[-1])
        loop.publish(names.model(it), latest)
        return latest
    if f.iter_method == "dpo":
        pairs = loop.light("pairs", f"pairs-{it}", {"verified": it_verified})
        loop.publish(names.in_iteration(k, names.PAIRS), pairs)
        return train(loop, "iter_dpo", "dpo", pairs, "pairs", latest, label=it)
    _, it_masked = improve(loop, it_verified, None, "shortest", it)
    loop.publish(names.in_iteration(k, names.MASKED), it_masked)
    return train(loop, "iter_sft", "sft", it_masked, "masked", latest, label=it)


def eval_stage(cfg: TopsConfig, label: str, model: str, efforts: list[str], eval_problems: str) -> ChildStage:
    """One model's held-out evaluation under `efforts`."""
    eval_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"efforts": efforts})})
    return ChildStage("eval", f"eval-{label}", {"model": model, "problems": eval_problems},
                      describe("eval").command(model, label, eval_problems), eval_cfg,
                      Sharded("eval", eval_problems, cfg.engine, cfg.model.base))


def evaluate(loop: Loop, label: str, model: str, efforts: list[str], eval_problems: str) -> str:
    """Held-out evaluation of one model in its own process; returns its eval artifact."""
    return loop.heavy(eval_stage(loop.cfg, label, model, efforts, eval_problems))


def evaluate_all(loop: Loop, models: dict[str, tuple[str, list[str]]], eval_problems: str) -> list[str]:
    """Every model's evaluation: one after another on the whole node, or flow.concurrent_evals at
    a time, each on its share of it (tops.gpus.lane_plans)."""
    from tops.gpus import lane_plans

    stages = [eval_stage(loop.cfg, label, model, efforts, eval_problems) for label, (model, efforts) in models.items()]
    wanted = min(loop.cfg.flow.concurrent_evals, len(stages))
    lanes = lane_plans(loop.cfg.engine, wanted) if wanted > 1 else []
    if loop.planning or len(lanes) < 2:
        parts = [loop.heavy(s) for s in stages]
        if loop.planning and len(lanes) > 1:
            for i, step in enumerate(loop.plan[-len(stages):]):
                lane = lanes[i % len(lanes)]
                step.notes.append(f"lane {i % len(lanes) + 1} of {len(lanes)}: {lane.describe()}")
                env = lane.groups[0].env() if lane.size == 1 else {}
                if env and step.command:  # the child's share of the node, as a user would set it
                    step.command = " ".join(f"{k}={v}" for k, v in env.items()) + " " + step.command
        return parts
    if len(lanes) < wanted:
        loop.notes.append(f"evaluations: {len(lanes)} at a time (flow.concurrent_evals is {wanted}; "
                          "the node has no more separate engine groups or cores)")
    return loop.children_in_lanes(f"eval ({len(stages)} models, {len(lanes)} at a time)", stages, lanes)


def report(loop: Loop, evals: pd.DataFrame, order: list[str], selected: str, eval_problems: str,
           used: list[str]) -> Path:
    """The run's report (tops.report) and its Prefect artifacts."""
    from tops.evaluate import contamination, markdown_table
    from tops.report import write_report

    train_questions = [q for p in used for q in read_artifact(p, "problems")["question"]]
    contaminated = contamination(read_artifact(eval_problems, "problems"), train_questions)
    notes = [f"held-out problems: {evals['problem_id'].nunique()}, none shares an id with seed/training "
             f"problems; {len(contaminated)} share a word 8-gram with a training question", *loop.notes]
    source = loop.cfg.problems.source
    levels = list(source.levels) if source.kind == "arith" else None
    path = write_report(loop.dir, evals, read_artifact(selected, "selected"), order, notes, levels,
                        stage_times=loop.stage_times(), pass_ks=loop.cfg.eval.pass_k or None,
                        budgets=loop.cfg.eval.token_budgets or None, maj_ks=loop.cfg.eval.maj_k or None)
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=path.read_text(), key="tops-report",
                                 description=f"TOPS run {loop.dir.name}")
        create_markdown_artifact(markdown=markdown_table(evals, order, levels), key="tops-results")
    except Exception as exc:  # artifacts are a convenience; the report file is the record
        get_run_logger().warning(f"could not create Prefect artifacts: {exc}")
    return path
