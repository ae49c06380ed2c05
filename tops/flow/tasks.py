"""The flow's Prefect tasks: thin wrappers (cache key, retries, naming, logs) around the stage
runners of tops.stages.

Light stages (problems, verify, select, pairs, rounds-mode masking) call their runner in the flow's
process. Heavy stages (generation, training, evaluation, seeding, judge masking) run it in a child
process, `python -m tops.cli <stage> ... --config <output>.yaml`, exactly the command a user would
type; its output streams into the task's log.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import get_run_logger, task

from tops.artifacts import read_artifact, write_artifact
from tops.config import TopsConfig
from tops.errors import EXIT_OUT_OF_MEMORY, UserError
from tops.flow.cache import cache_key
from tops.gpus import ShardPlan
from tops.launch import Command, launch, tops_command
from tops.layout import RunLayout
from tops.train.common import halve_micro_batch

CACHED = {"cache_key_fn": cache_key, "persist_result": True}


class StageFailed(RuntimeError):
    """A stage failed for good; earlier artifacts stay intact."""


class OutOfMemory(StageFailed):
    """A training child exited with EXIT_OUT_OF_MEMORY."""


def child_command(args: list[str], out: str | Path) -> list[str]:
    """The child's full command line: the stage's arguments, its output, and the resolved config
    written beside the output."""
    return tops_command(*args, "--out", str(out), "--config", str(RunLayout.stage_config(out)))


def run_child(name: str, args: list[str], cfg: TopsConfig, out: str, env: dict[str, str] | None = None) -> None:
    """Write the stage's resolved config beside its output, run the stage as a child process (with
    `env` on top of the flow's, e.g. its share of the cores) with its output in this task's log,
    and turn its exit code into the flow's errors."""
    _write_config(cfg, out)
    logger = get_run_logger()
    [done] = launch([Command(child_command(args, out), name, env=dict(env or {}))],
                    log=lambda who, line: logger.info(f"[{who}] {line}"))
    _raise_for(done)


def _write_config(cfg: TopsConfig, out: str | Path) -> None:
    config_path = RunLayout.stage_config(out)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def run_sharded(name: str, args: list[str], cfg: TopsConfig, out: str, plan: ShardPlan, kind: str,
                problems: str, every_problem: bool = True) -> None:
    """One child per engine group of `plan`, each `--shard i/N` of the problems with its group's
    environment (CUDA_VISIBLE_DEVICES), all at once; their parts merged into `out` with exactly one
    row per key. A part left complete by a killed run is kept."""
    from tops.gpus import merge_parts, part_paths

    _write_config(cfg, out)
    config = str(RunLayout.stage_config(out))
    parts = part_paths(Path(out), plan.size)
    commands = [Command(tops_command(*args, "--shard", f"{g.index}/{plan.size}", "--out", str(part), "--config",
                                     config), f"{name}[{g.index}]", env=g.env())
                for g, part in zip(plan.groups, parts, strict=True) if not part.exists()]
    logger = get_run_logger()
    for done in launch(commands, log=lambda who, line: logger.info(f"[{who}] {line}")):
        _raise_for(done)
    import pyarrow.parquet as pq

    order = read_artifact(problems, "problems")["problem_id"].tolist()
    filled = [read_artifact(p, kind) for p in parts if pq.read_metadata(p).num_rows]
    if not filled:
        raise UserError(f"no rows from any of the {plan.size} engine processes")
    merged = merge_parts(filled, kind, order, every_problem=every_problem)
    write_artifact(merged, out, kind)
    from tops.stages import record_stage

    record_stage(Path(out), args[0], inputs={"problems": problems}, rows=len(merged),
                 summary={"engines": plan.describe(), "parts": [p.name for p in parts]})
    for part in parts:
        part.unlink()


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


# ---------------------------------------------------------------- light stages (in-process)


@task(name="problems", **CACHED)
def problems_task(cfg: TopsConfig, key: str, out: str, run_dir: str, n: int | None, seed: int | None,
                  exclude: list[str], heldout: bool = False) -> str:
    from tops.stages import run_problems

    run_problems(cfg, Path(out), n=n, seed=seed, exclude=[Path(p) for p in exclude], heldout=heldout, exact=True)
    return out


@task(name="verify", **CACHED)
def verify_task(cfg: TopsConfig, key: str, out: str, run_dir: str, samples: str) -> str:
    from tops.stages import run_verify

    run_verify(cfg, Path(samples), Path(out), progress=False)
    return out


@task(name="select", **CACHED)
def select_task(cfg: TopsConfig, key: str, out: str, run_dir: str, verified: str, seed: str | None) -> str:
    from tops.stages import run_select

    run_select(cfg, Path(verified), Path(out), seed_path=Path(seed) if seed else None)
    return out


@task(name="mask", **CACHED)
def mask_task(cfg: TopsConfig, key: str, out: str, run_dir: str, selected: str) -> str:
    from tops.stages import run_mask

    run_mask(cfg, Path(selected), Path(out), progress=False)
    return out


@task(name="pairs", **CACHED)
def pairs_task(cfg: TopsConfig, key: str, out: str, run_dir: str, verified: str) -> str:
    from tops.stages import run_pairs

    run_pairs(cfg, Path(verified), Path(out))
    return out


@task(name="merge-samples", **CACHED)
def merge_task(key: str, out: str, run_dir: str, parts: list[str], problems: str) -> str:
    """Engine shards -> one samples artifact: every row exactly once, in the problems' order."""
    from tops.gpus import merge_parts

    order = read_artifact(problems, "problems")["problem_id"].tolist()
    write_artifact(merge_parts([read_artifact(p, "samples") for p in parts], "samples", order), out, "samples")
    return out


# ---------------------------------------------------------------- heavy stages (child processes)


@task(name="stage", **CACHED)
def child_task(cfg: TopsConfig, key: str, out: str, run_dir: str, stage: str, args: list[str],
               env: dict[str, str] | None = None) -> str:
    """Any heavy stage but training: `tops <args> --out <out> --config <out>.yaml` in a child."""
    run_child(stage, args, cfg, out, env)
    return out


@task(name="stage", **CACHED)
def sharded_task(cfg: TopsConfig, key: str, out: str, run_dir: str, stage: str, args: list[str], plan: ShardPlan,
                 kind: str, problems: str, every_problem: bool = True) -> str:
    """A sampling stage on every engine group of the node (tops.gpus), merged."""
    run_sharded(stage, args, cfg, out, plan, kind, problems, every_problem)
    return out


# No print capture here: datasets fingerprints map functions with dill, which reads globals off
# dis.dis() output it captures from stdout; Prefect's print capture bypassed that capture and
# logged pages of bytecode per training run.
@task(name="train", log_prints=False, **CACHED)
def train_task(cfg: TopsConfig, key: str, out: str, run_dir: str, stage: str, args: list[str]) -> str:
    """SFT or DPO in a child (under `accelerate launch` when train.num_processes > 1); out of
    memory: again with half the micro-batch and twice the accumulation (same effective batch,
    same run key, so it resumes from the last checkpoint)."""
    while True:
        try:
            run_child(stage, args, cfg, out)
            return out
        except OutOfMemory:
            train = halve_micro_batch(cfg.train)  # batch_size and max_tokens_per_batch halved
            if train is None:
                raise
            cfg = cfg.model_copy(update={"train": train})
            get_run_logger().warning(f"{stage}: out of memory; again with batch_size={train.batch_size}, "
                                     f"max_tokens_per_batch={train.max_tokens_per_batch}, "
                                     f"grad_accum={train.grad_accum}")
