"""The TOPS loop as one Prefect flow.

seed data -> tag model -> multi-effort sampling -> verify -> select -> mask -> SFT of the base
(TOPS model) [-> random-correct baseline] -> k x (sample n from the latest model -> verify ->
Iter-SFT or Iter-DPO) -> evaluate every model -> report.

Each stage is one task (tops.flow.tasks) over its stage runner; heavy stages run as child
processes. `plan()` walks the same loop without running anything (`tops run --dry-run`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import yaml
from prefect import flow, get_run_logger

from tops import layout as names
from tops import rounds
from tops.artifacts import read_artifact, write_artifact
from tops.config import (
    EFFORT_ORDER,
    GenerateConfig,
    TopsConfig,
    config_section,
    flow_problem_counts,
    load_config,
)
from tops.flow import campaign
from tops.flow.stage_loop import ChildStage, Loop, PlanStep, Sharded, StageFailed
from tops.flow.tasks import (
    mask_task,
    merge_task,
    pairs_task,
    problems_task,
    select_task,
    verify_task,
)
from tops.select import SampleKeys, candidates

# vLLM reconfigures logging when an engine starts; inside a flow that shuts down Prefect's API log
# handler while it holds the logging lock and deadlocks. Leave logging to Prefect instead.
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


BASE_EFFORTS = "base-efforts"  # the base model under its native efforts (efforts.native)


def train_config_for(cfg: TopsConfig, stage: str):
    """The tag model learns each row under its own effort prompt (format imitation); every
    self-improvement model trains under the unconditioned prompt, so it picks its own depth."""
    train_cfg = cfg.train_config(stage)
    if "system_prompt" not in cfg.flow.train_overrides.get(stage, {}):
        train_cfg = train_cfg.model_copy(update={"system_prompt": "effort" if stage == "tag" else "none"})
    return train_cfg


def _sample(loop: Loop, stage: str, model: str, label: str, problems: str, gen: GenerateConfig) -> str:
    """Multi-depth sampling: one child process, or `flow.generate_shards` children over disjoint
    shards (mapped over the flow's task runner), merged with every row once."""
    cfg = loop.cfg.model_copy(update={"generate": gen})
    shards = cfg.flow.generate_shards
    section = {**config_section(cfg, "engine", "efforts"), "generate": gen.model_dump(mode="json")}
    inputs = {"model": model, "problems": problems}
    args = ["generate", "--in", problems, "--model", model, "--label", label, "--quiet"]
    if shards == 1:  # on this node: one engine process per GPU group (tops.gpus)
        return loop.child(stage, section, inputs, args, cfg,
                          sharded=Sharded("samples", problems, cfg.engine, cfg.model.base))
    if loop.planning:
        parts = [loop.child(f"{stage}-shard{i}", section, inputs, [*args, "--shard", f"{i}/{shards}"], cfg)
                 for i in range(shards)]
    else:
        parts = _run_shards(loop, stage, section, inputs, args, cfg)
    return loop.call(merge_task, f"{stage}-merge", {}, {f"part{i}": p for i, p in enumerate(parts)}, parts=parts,
                     problems=problems)


def _run_shards(loop: Loop, stage: str, section: dict, inputs: dict, args: list[str], cfg: TopsConfig) -> list[str]:
    from tops.flow.tasks import child_task

    shards = cfg.flow.generate_shards
    keyed = [loop.output(f"{stage}-shard{i}", section, inputs) for i in range(shards)]

    def run_shards() -> list[str]:
        with _ray_resources(cfg):
            futures = [loop.task(child_task, f"{stage}-shard{i}").submit(
                           cfg=cfg, key=key, out=str(out), run_dir=str(loop.dir), stage=f"{stage}-shard{i}",
                           args=[*args, "--shard", f"{i}/{shards}"])
                       for i, (key, out) in enumerate(keyed)]
        try:
            return [f.result() for f in futures]
        except Exception as exc:
            raise StageFailed(f"stage '{stage}' failed: {exc.__class__.__name__}: {exc}") from exc

    return loop.timed(f"{stage} ({shards} shards)", [out for _, out in keyed], run_shards)


def _ray_resources(cfg: TopsConfig):
    import contextlib

    if cfg.flow.runner != "ray" or not cfg.flow.gpus_per_shard:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=cfg.flow.gpus_per_shard)


def _problems(loop: Loop, split: str, n: int | None, seed: int | None, exclude: list[str],
              heldout: bool = False) -> str:
    cfg = loop.cfg
    section = {**config_section(cfg, "problems"), "n": n, "seed": seed, "split": split, "heldout": heldout}
    if heldout:
        section["eval_n"] = cfg.eval.n_problems
        if cfg.eval.benchmarks or cfg.eval.source:  # tops.benchmarks.held_out_problems draws from these
            section["held_out"] = cfg.eval.model_dump(mode="json", include={"benchmarks", "source"})
    path = loop.call(problems_task, f"problems-{split}", section, {f"x{i}": p for i, p in enumerate(exclude)},
                     cfg=cfg, n=n, seed=seed, exclude=exclude, heldout=heldout)
    loop.publish(names.problems(split), path)
    return path


def _train(loop: Loop, stage: str, method: str, data: str, data_kind: str, base: str,
           label: str | None = None) -> str:
    """Train one model; `stage` picks the training overrides, `label` names the model."""
    cfg = loop.cfg
    label = label or stage
    train_cfg = train_config_for(cfg, stage)
    section = {"train": train_cfg.model_dump(mode="json"), "method": method, "prompts": cfg.efforts.prompts}
    args = (["train", "dpo", "--pairs", data] if method == "dpo"
            else ["train", "sft", "--data", data, "--kind", data_kind]) + ["--base", base]
    path = loop.child(f"train-{label}", section, {"data": data, "base": base}, args,
                      cfg.model_copy(update={"train": train_cfg}), train=True, folder=True, method=method)
    loop.publish(names.model(label), path)
    return path


def _mask(loop: Loop, cfg: TopsConfig, name: str, selected: str) -> str:
    """Rounds-mode masking in the flow's process; a judge needs an engine: a child process."""
    section, inputs = config_section(cfg, "mask"), {"selected": selected}
    if cfg.mask.enabled and cfg.mask.mode == "judge":
        return loop.child(f"mask-{name}", section, inputs, ["mask", "--in", selected, "--quiet"], cfg)
    return loop.call(mask_task, f"mask-{name}", section, inputs, cfg=cfg, selected=selected)


def _improve(loop: Loop, verified: str, seed: str | None, policy: str, name: str) -> tuple[str, str]:
    """select (policy) -> mask: the training data of one self-improvement model."""
    cfg = loop.cfg.model_copy(deep=True)
    cfg.select.policy = policy
    selected = loop.call(select_task, f"select-{name}", config_section(cfg, "select"),
                         {"verified": verified, **({"seed": seed} if seed else {})},
                         cfg=cfg, verified=verified, seed=seed)
    return selected, _mask(loop, cfg, name, selected)


def _verify(loop: Loop, name: str, samples: str) -> str:
    return loop.call(verify_task, name, config_section(loop.cfg, "verify"), {"samples": samples},
                     cfg=loop.cfg, samples=samples)


def _usable(loop: Loop, verified: str) -> bool:
    """Whether an iteration's samples give anything to learn from (a plan assumes so)."""
    if loop.planning and not Path(verified).exists():
        return True
    rows = read_artifact(verified, "verified")
    if loop.cfg.flow.iter_method == "dpo":
        correct = rows.groupby("problem_id")["correct"]
        return bool((correct.any() & ~correct.all()).any())
    # select's own rule: a correct response from a reliable enough effort
    return bool(candidates(SampleKeys.of(rows), loop.cfg.select.min_effort_accuracy).any())


def _logger(loop: Loop):
    return logging.getLogger("tops.plan") if loop.planning else get_run_logger()


def _base_model(loop: Loop) -> str:
    """The resolved base model; a plan does not prepare an alias's folder, it names what would be."""
    from tops.models import DEFAULT_MODEL, TINY_MODEL, models_dir, resolve_model

    name = loop.cfg.model.base
    if loop.planning:
        alias = name.strip().lower()
        folder = (models_dir() / "SmolLM2-135M-Instruct" if alias in (DEFAULT_MODEL, "default", "smollm2")
                  else models_dir() / "tiny" if alias == TINY_MODEL else None)
        if folder is not None:
            return str(folder)  # its stages are to run until it exists
    return resolve_model(name)


def loop_stages(loop: Loop) -> dict:
    """The whole loop on `loop`; returns the run's result (a plan: its steps in `loop.plan`)."""
    cfg, f = loop.cfg, loop.cfg.flow
    base = _base_model(loop)
    seed_seed = cfg.run.seed

    # 1. problems for every split (disjoint by id) and seed data
    counts = flow_problem_counts(cfg)
    seed_problems = _problems(loop, "seed", counts["seed"], seed_seed, [])
    train_problems = _problems(loop, "train", counts["train"], seed_seed + 1, [seed_problems])
    iter_problems = [_problems(loop, names.iteration(k), counts[names.iteration(k)], seed_seed + 1 + k,
                               [seed_problems, train_problems]) for k in range(1, f.iterations + 1)]
    used = [seed_problems, train_problems, *iter_problems]
    eval_problems = _problems(loop, "eval", None, None, used, heldout=True)
    if not loop.planning:  # round 1 of the folder's campaign: its problems by role
        campaign.record_first_round(loop, {"seed": seed_problems, "train": train_problems, **{
            names.iteration(k): p for k, p in enumerate(iter_problems, start=1)}, "eval": eval_problems}, base)

    seed = None  # native efforts need seed data only for select.add_seed_low
    if not cfg.efforts.native or cfg.select.add_seed_low:
        teacher = None if cfg.seed.teacher == "arith" else Sharded("samples", seed_problems, cfg.seed.engine,
                                                                   cfg.seed.teacher, every_problem=False)
        seed = loop.child("seed", config_section(cfg, "seed", "efforts"), {"problems": seed_problems, "base": base},
                          ["seed", "--in", seed_problems], cfg, sharded=teacher)
        loop.publish(names.SEED, seed)

    # 2. format imitation: the tag model follows the effort prompts (native efforts: the base model
    # follows them as it is and samples them itself)
    native = cfg.efforts.native
    tag, tag_label = (base, names.BASE) if native else (_train(loop, names.TAG, "sft", seed, "samples", base), names.TAG)

    # 3-6. multi-effort sampling, verify, select shortest-correct, mask
    gen = cfg.generate
    samples = _sample(loop, "generate", tag, tag_label, train_problems, gen)
    loop.publish(names.SAMPLES, samples)
    verified = _verify(loop, "verify", samples)
    loop.publish(names.VERIFIED, verified)
    seed_low = seed if cfg.select.add_seed_low else None
    selected, masked = _improve(loop, verified, seed_low, cfg.select.policy, names.TOPS)
    loop.publish(names.SELECTED, selected)
    loop.publish(names.MASKED, masked)

    # 7. SFT of the base model on the selection -> TOPS model (no effort prompt)
    models = {names.BASE: (base, ["none"]), (BASE_EFFORTS if native else names.TAG): (tag, list(EFFORT_ORDER))}
    tops_model = _train(loop, names.TOPS, "sft", masked, "masked", base)
    models[names.TOPS] = (tops_model, ["none"])
    if f.random_baseline:
        _, masked_random = _improve(loop, verified, seed_low, "random", names.RANDOM)
        loop.publish(names.MASKED_RANDOM, masked_random)
        models[names.RANDOM] = (_train(loop, names.RANDOM, "sft", masked_random, "masked", base), ["none"])

    # 8. iterative self-improvement from the latest model
    latest, latest_label = tops_model, names.TOPS
    for k, problems in enumerate(iter_problems, start=1):
        latest = iterate(loop, k, latest, latest_label, problems)
        latest_label = names.iteration(k)
        models[latest_label] = (latest, ["none"])

    # 9. evaluate every model on held-out problems, each in its own process
    eval_parts = evaluate_all(loop, models, eval_problems)
    if loop.planning:
        return {"run_dir": str(loop.dir), "plan": loop.plan}
    evals = pd.concat([read_artifact(p, "eval") for p in eval_parts], ignore_index=True)
    write_artifact(evals, loop.layout.eval, "eval")

    # 10. report, then the round's end: the history of rounds, the export stage (tops/flow/campaign.py)
    report = _report(loop, evals, list(models), selected, eval_problems, used)
    loop.layout.lineage.write_text(json.dumps(loop.lineage, indent=2))
    return campaign.finish_first_round(loop, latest, evals, report)


def iterate(loop: Loop, k: int, latest: str, latest_label: str, problems: str) -> str:
    """Self-improvement iteration k from `latest` on `problems` (Iter-SFT or Iter-DPO as configured);
    returns the new latest model (the same one when no sample gave anything to learn from)."""
    cfg, f, gen = loop.cfg, loop.cfg.flow, loop.cfg.generate
    it = names.iteration(k)
    iter_gen = GenerateConfig(efforts=["none"], n_samples=f.iter_samples, shard_size=gen.shard_size,
                              sampling=gen.sampling)
    it_samples = _sample(loop, f"generate-{it}", latest, latest_label, problems, iter_gen)
    it_verified = _verify(loop, f"verify-{it}", it_samples)
    loop.publish(names.in_iteration(k, names.VERIFIED), it_verified)
    if not _usable(loop, it_verified):
        # Nothing to learn from: keep the model rather than fail a long run at its end.
        wanted = "a preference pair" if f.iter_method == "dpo" else "a correct response"
        if f.iter_method != "dpo" and cfg.select.min_effort_accuracy:
            wanted += f" in at least {cfg.select.min_effort_accuracy:.0%} of its samples"
        loop.notes.append(f"{it}: no problem gave {wanted}; the model was left unchanged")
        _logger(loop).warning(loop.notes[-1])
        loop.publish(names.model(it), latest)
        return latest
    if f.iter_method == "dpo":
        pairs = loop.call(pairs_task, f"pairs-{it}", config_section(cfg, "pairs"), {"verified": it_verified},
                          cfg=cfg, verified=it_verified)
        loop.publish(names.in_iteration(k, "pairs.parquet"), pairs)
        return _train(loop, "iter_dpo", "dpo", pairs, "pairs", latest, label=it)
    _, it_masked = _improve(loop, it_verified, None, "shortest", it)
    loop.publish(names.in_iteration(k, names.MASKED), it_masked)
    return _train(loop, "iter_sft", "sft", it_masked, "masked", latest, label=it)


def evaluate(loop: Loop, label: str, model: str, efforts: list[str], eval_problems: str) -> str:
    """Held-out evaluation of one model in its own process; returns its eval artifact."""
    return _run_child_stage(loop, eval_stage(loop.cfg, label, model, efforts, eval_problems))


def _run_child_stage(loop: Loop, stage: ChildStage) -> str:
    return loop.child(stage.name, stage.section, stage.inputs, stage.args, stage.cfg, sharded=stage.sharded)


def evaluate_all(loop: Loop, models: dict[str, tuple[str, list[str]]], eval_problems: str) -> list[str]:
    """Every model's evaluation: one after another on the whole node, or flow.concurrent_evals at
    a time, each on its share of it (tops.gpus.lane_plans)."""
    from tops.gpus import lane_plans

    stages = [eval_stage(loop.cfg, label, model, efforts, eval_problems) for label, (model, efforts) in models.items()]
    wanted = min(loop.cfg.flow.concurrent_evals, len(stages))
    lanes = lane_plans(loop.cfg.engine, wanted) if wanted > 1 else []
    if loop.planning or len(lanes) < 2:
        parts = [_run_child_stage(loop, s) for s in stages]
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


def eval_stage(cfg: TopsConfig, label: str, model: str, efforts: list[str], eval_problems: str) -> ChildStage:
    eval_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"efforts": efforts})})
    section = {**config_section(eval_cfg, "eval", "engine", "verify"),
               "prompts": {e: cfg.efforts.prompts[e] for e in efforts}}
    kwargs = {e: cfg.efforts.template_kwargs[e] for e in efforts if e in cfg.efforts.template_kwargs}
    depth = {e: cfg.generate.depth[e].model_dump(mode="json") for e in efforts if e in cfg.generate.depth}
    if kwargs or depth:  # only when set, so evaluations of earlier runs keep their keys
        section["native"] = {"template_kwargs": kwargs, "depth": depth}
    return ChildStage(f"eval-{label}", section, {"model": model, "problems": eval_problems},
                      ["eval", "--model", model, "--label", label, "--problems", eval_problems, "--quiet"], eval_cfg,
                      Sharded("eval", eval_problems, cfg.engine, cfg.model.base))


def run_loop(cfg: TopsConfig) -> dict:
    loop = Loop(cfg)
    plan = rounds.plan_round(loop.dir, cfg)
    if plan.nothing_new:  # a later round with nothing to learn from: say so, change nothing
        return campaign.nothing_new(loop, plan)
    loop.dir.mkdir(parents=True, exist_ok=True)
    loop.layout.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if plan.number > 1:  # a later round of this folder's campaign
        return campaign.continue_round(loop, plan)
    return loop_stages(loop)


def _report(loop: Loop, evals: pd.DataFrame, order: list[str], selected: str, eval_problems: str,
            used: list[str]) -> Path:
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
                        budgets=loop.cfg.eval.token_budgets or None)
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=path.read_text(), key="tops-report",
                                 description=f"TOPS run {loop.dir.name}")
        create_markdown_artifact(markdown=markdown_table(evals, order, levels), key="tops-results")
    except Exception as exc:  # artifacts are a convenience; the report file is the record
        get_run_logger().warning(f"could not create Prefect artifacts: {exc}")
    return path


@flow(name="tops-loop", log_prints=True)
def tops_loop(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """The whole TOPS loop for one config file (+ overrides)."""
    return run_loop(load_config(config, overrides))


def task_runner_for(cfg: TopsConfig):
    if cfg.flow.runner == "ray":
        from prefect_ray import RayTaskRunner

        if cfg.flow.ray_address:
            return RayTaskRunner(address=cfg.flow.ray_address)
        # Workers report to this process's Prefect API instead of each starting its own server.
        from prefect.settings import PREFECT_API_URL

        env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "VLLM_CONFIGURE_LOGGING": "0"}
        if PREFECT_API_URL.value():
            env["PREFECT_API_URL"] = PREFECT_API_URL.value()
        return RayTaskRunner(init_kwargs={"num_cpus": os.cpu_count() or 2, "runtime_env": {"env_vars": env}})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=cfg.flow.generate_shards)  # evaluation lanes have their own


def run(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Validate the config first (exit 2 on error), then run the flow with its task runner."""
    cfg = load_config(config, overrides)
    flow_problem_counts(cfg)  # conflicting problem counts fail here, before Prefect starts
    return tops_loop.with_options(task_runner=task_runner_for(cfg))(
        config=str(config) if config else None, overrides=list(overrides or []))


def plan(cfg: TopsConfig) -> list[PlanStep]:
    """Every stage of a run of `cfg` in order, cached or to run; runs and writes nothing. A folder's
    later round plans that round (tops/flow/campaign.py)."""
    loop = Loop(cfg, planning=True)
    round_plan = rounds.plan_round(loop.dir, cfg)
    if round_plan.nothing_new:
        campaign.nothing_new(loop, round_plan)
    elif round_plan.number > 1:
        campaign.continue_round(loop, round_plan)
    else:
        loop_stages(loop)
    return loop.plan
