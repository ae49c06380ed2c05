"""The flow's Prefect tasks: cache key, retries, naming and logs around the stage runners of
tops.stages. Three tasks, whatever the stage:

- `light_task`: a light stage (tops.stages.catalog: problems, verify, select, pairs, rounds-mode
  masking) through `run_light` in the flow's process.
- `heavy_task`: a heavy stage (generation, training, evaluation, seeding, judge masking) through
  `launch_stage`, the one place a heavy stage starts: `python -m tops.cli <stage> ... --config
  <output>.yaml`, exactly the command a user would type, in a child process (one per engine group
  of the node when the stage is sharded, merged by tops.stages.merge_shards), its output streamed
  into the task's log; out of memory in training: again with half the micro-batch.
- `merge_task`: the parts of a stage sharded over the task runner (flow.generate_shards), merged
  by the same merge_shards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import get_run_logger, task

from tops.config import EngineConfig, TopsConfig
from tops.errors import EXIT_OUT_OF_MEMORY, UserError
from tops.flow.cache import RESULT_SERIALIZER, cache_key
from tops.gpus import ShardPlan
from tops.launch import Command, tops_command
from tops.layout import RunLayout
from tops.stages import merge_shards, run_light
from tops.train.common import halve_micro_batch

# Records hold JSON text only (tops.flow.cache): a task's result is its output path.
CACHED = {"cache_key_fn": cache_key, "persist_result": True, "result_serializer": RESULT_SERIALIZER}


class StageFailed(RuntimeError):
    """A stage failed for good; earlier artifacts stay intact."""


class OutOfMemory(StageFailed):
    """A training child exited with EXIT_OUT_OF_MEMORY."""


@dataclass(frozen=True)
class Sharded:
    """A sampling stage the node's engine groups split (tops.gpus): its artifact kind, the problems
    it splits, the engine it runs and the model whose shape sizes its memory."""

    kind: str
    problems: str
    engine: EngineConfig
    model: str
    every_problem: bool = True  # False: a problem may have no row (seed data keeps those passing its rules)


def child_command(args: list[str], out: str | Path) -> list[str]:
    """The child's full command line: the stage's arguments, its output, and the resolved config
    written beside the output."""
    return tops_command(*args, "--out", str(out), "--config", str(RunLayout.stage_config(out)))


def ray_resources(cfg: TopsConfig):
    """What a heavy task submitted to the Ray task runner asks of Ray (flow.gpus_per_shard)."""
    if cfg.flow.runner != "ray" or not cfg.flow.gpus_per_shard:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=cfg.flow.gpus_per_shard)


def launch_stage(name: str, args: list[str], cfg: TopsConfig, out: str, plan: ShardPlan | None = None,
                 sharded: Sharded | None = None, env: dict[str, str] | None = None) -> None:
    """Run a heavy stage as `tops <args>` in child processes: one (with `env` on top of the flow's,
    e.g. its share of the cores), or with a `plan` of several engine groups one per group, each
    `--shard i/N` with its group's environment (CUDA_VISIBLE_DEVICES), merged into `out`. Training
    that runs out of memory runs again with half the micro-batch and twice the accumulation (same
    effective batch, same run key, so it resumes from its last checkpoint)."""
    while True:
        try:
            return _launch(name, args, cfg, out, plan, sharded, env)
        except OutOfMemory:
            train = halve_micro_batch(cfg.train) if args[0] == "train" else None
            if train is None:
                raise
            cfg = cfg.model_copy(update={"train": train})
            get_run_logger().warning(f"{name}: out of memory; again with batch_size={train.batch_size}, "
                                     f"max_tokens_per_batch={train.max_tokens_per_batch}, "
                                     f"grad_accum={train.grad_accum}")


def _launch(name: str, args: list[str], cfg: TopsConfig, out: str, plan: ShardPlan | None, sharded: Sharded | None,
            env: dict[str, str] | None) -> None:
    config_path = RunLayout.stage_config(out)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if plan is None or plan.size == 1 or sharded is None:
        commands, parts = [Command(child_command(args, out), name, env=dict(env or {}))], []
    else:  # a part left complete by a killed run is kept
        from tops.gpus import part_paths

        parts = part_paths(Path(out), plan.size)
        commands = [Command(tops_command(*args, "--shard", f"{g.index}/{plan.size}", "--out", str(part), "--config",
                                         str(config_path)), f"{name}[{g.index}]", env=g.env())
                    for g, part in zip(plan.groups, parts, strict=True) if not part.exists()]
    logger = get_run_logger()
    from tops.flow.ray_cluster import place  # here, or where Ray puts it (flow.runner: ray)

    for done in place(cfg, args[0], commands, log=lambda who, line: logger.info(f"[{who}] {line}")):
        _raise_for(done)
    if parts:
        merge_shards(cfg, Path(out), args[0], sharded.kind, parts, Path(sharded.problems), sharded.every_problem,
                     remove_parts=True, summary={"engines": plan.describe()})


def _raise_for(done) -> None:
    """A child's exit code as the flow's error: 2 its input, EXIT_OUT_OF_MEMORY, anything else."""
    if done.returncode == 0:
        return
    errors = [line for line in done.tail if line.startswith("error: ")]
    message = errors[-1].removeprefix("error: ") if errors else " / ".join(done.tail[-3:])
    if done.returncode == 2:
        raise UserError(message)
    if done.returncode == EXIT_OUT_OF_MEMORY:
        raise OutOfMemory(message)
    raise StageFailed(f"exit code {done.returncode}: {message}")


@task(name="stage", **CACHED)
def light_task(cfg: TopsConfig, key: str, out: str, run_dir: str, stage: str, files: dict[str, str | None],
               params: dict | None = None, options: dict | None = None) -> str:
    """A light stage in the flow's process: tops.stages.run_light."""
    run_light(stage, cfg, Path(out), files, params, **(options or {}))
    return out


# No print capture here: datasets fingerprints map functions with dill, which reads globals off
# dis.dis() output it captures from stdout; Prefect's print capture bypassed that capture and
# logged pages of bytecode per training run.
@task(name="stage", log_prints=False, **CACHED)
def heavy_task(cfg: TopsConfig, key: str, out: str, run_dir: str, stage: str, args: list[str],
               plan: ShardPlan | None = None, sharded: Sharded | None = None, env: dict[str, str] | None = None) -> str:
    """A heavy stage in child processes: launch_stage."""
    launch_stage(stage, args, cfg, out, plan, sharded, env)
    return out


@task(name="merge", **CACHED)
def merge_task(cfg: TopsConfig, key: str, out: str, run_dir: str, of: str, kind: str, parts: list[str],
               problems: str) -> str:
    """The parts of a stage sharded over the task runner: every row exactly once, in the problems' order."""
    merge_shards(cfg, Path(out), of, kind, [Path(p) for p in parts], Path(problems))
    return out
