"""The node's GPUs and the shard plan: which engine processes sample which problems.

With N GPUs and `engine.tensor_parallel_size` T, a sampling or evaluation stage runs N // T
engine processes, each pinned to its own T GPUs through CUDA_VISIBLE_DEVICES and sampling a
disjoint shard of the problems; the parts are merged into one artifact with exactly one row per
key. On a CPU, `engine.data_parallel_size` engine processes split the cores the same way. The
plan only says how many shards and what each may use, so a Ray cluster (flow.runner: ray) maps
the very same shards over its nodes, asking Ray for T GPUs per shard instead of pinning them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tops.errors import UserError

# The columns that name one row of each sharded artifact: a merge keeps exactly one row per key.
ROW_KEYS = {
    "samples": ("problem_id", "effort", "sample_idx"),
    "verified": ("problem_id", "effort", "sample_idx"),
    "eval": ("model", "problem_id", "effort", "seed"),
}


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, without starting CUDA (a plan imports no torch):
    CUDA_VISIBLE_DEVICES when set (ids or UUIDs, kept as written so children see the same
    devices), else `nvidia-smi -L`, else the /dev/nvidiaN device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        # CUDA stops at the first invalid id ("-1" is the usual way to hide every GPU).
        valid = []
        for device in ids:
            if device.startswith("-"):
                break
            valid.append(device)
        return valid
    count = _nvidia_smi_gpu_count()
    if count is None:
        count = len(list(Path("/dev").glob("nvidia[0-9]*")))
    return [str(i) for i in range(count)]


def _nvidia_smi_gpu_count() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class EngineGroup:
    """One engine process: the GPUs it is pinned to (none on a CPU) or the cores it may use."""

    index: int
    gpus: tuple[str, ...] = ()
    cpus: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        """Environment for this engine's child process (on top of the parent's)."""
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}
        if not self.cpus:
            return {}
        cores = ",".join(map(str, self.cpus))
        # vLLM-CPU binds its OpenMP threads to these cores; torch (the transformers engine) and
        # other OpenMP code use as many threads as the group has cores.
        return {"VLLM_CPU_OMP_THREADS_BIND": cores, "OMP_NUM_THREADS": str(len(self.cpus))}


@dataclass(frozen=True)
class ShardPlan:
    groups: tuple[EngineGroup, ...]
    on_gpu: bool
    gpus_per_engine: int  # tensor_parallel_size on GPUs, 0 on a CPU
    idle_gpus: tuple[str, ...] = field(default=())  # GPUs left over when N is not a multiple of T

    @property
    def size(self) -> int:
        return len(self.groups)

    def describe(self) -> str:
        if self.on_gpu:
            pinned = " | ".join(",".join(g.gpus) for g in self.groups)
            idle = f"; {len(self.idle_gpus)} GPU(s) idle: {','.join(self.idle_gpus)}" if self.idle_gpus else ""
            return f"{self.size} engine process(es) x {self.gpus_per_engine} GPU(s), CUDA_VISIBLE_DEVICES {pinned}{idle}"
        if self.size == 1:
            cores = self.groups[0].cpus
            return "1 engine process on the CPU" + (f", cores {','.join(map(str, cores))}" if cores else "")
        return f"{self.size} engine processes on the CPU, cores " + " | ".join(
            ",".join(map(str, g.cpus)) or "shared" for g in self.groups)


def shard_plan(engine, gpus: Sequence[str] | None = None, cpus: Sequence[int] | None = None,
               planning: bool = False) -> ShardPlan:
    """The engine processes of one sampling stage for `engine` (an EngineConfig). `gpus` and
    `cpus` default to what this machine shows; engine.gpus uses fewer of them, and with
    `planning` (a dry run for another node) more than this machine has."""
    available = list(visible_gpus() if gpus is None else gpus)
    if engine.gpus is not None:
        if engine.gpus > len(available) and not planning:
            raise UserError(f"engine.gpus is {engine.gpus} but this machine shows {len(available)} GPU(s)")
        available = (available[:engine.gpus] if engine.gpus <= len(available)
                     else [str(i) for i in range(engine.gpus)])
    tp = engine.gpus_per_engine  # 0: a remote engine, whose server holds its own GPUs
    if available and not engine.remote:
        if len(available) < tp:
            raise UserError(f"engine.tensor_parallel_size is {tp} but only {len(available)} GPU(s) are available")
        fit = len(available) // tp
        size = fit if engine.data_parallel_size is None else engine.data_parallel_size
        if size > fit:
            raise UserError(f"engine.data_parallel_size is {size} but {len(available)} GPU(s) hold only {fit} "
                            f"engine(s) of tensor_parallel_size {tp}")
        groups = tuple(EngineGroup(i, gpus=tuple(available[i * tp:(i + 1) * tp])) for i in range(size))
        return ShardPlan(groups, on_gpu=True, gpus_per_engine=tp, idle_gpus=tuple(available[size * tp:]))
    size = engine.data_parallel_size or 1
    cores = list(usable_cpus() if cpus is None else cpus)
    if size == 1 or len(cores) < size:  # too few cores to give each engine its own: they share
        return ShardPlan(tuple(EngineGroup(i) for i in range(size)), on_gpu=False, gpus_per_engine=0)
    per = len(cores) // size
    groups = tuple(EngineGroup(i, cpus=tuple(cores[i * per:(i + 1) * per])) for i in range(size))
    return ShardPlan(groups, on_gpu=False, gpus_per_engine=0)


def shard_frame(problems: pd.DataFrame, index: int, count: int) -> pd.DataFrame:
    """Shard `index` of `count`: every count-th problem, so each engine gets a like mix of easy
    and hard ones (problems are usually drawn level by level). Shards are disjoint and cover all."""
    return problems.iloc[index::count].reset_index(drop=True)


def merge_parts(parts: Sequence[pd.DataFrame], kind: str, problem_order: Sequence[str],
                every_problem: bool = True) -> pd.DataFrame:
    """The shards' rows as one artifact, in the order one engine would have written them
    (problem order, then each problem's rows as its engine wrote them). A key that appears twice,
    or a problem with no row where every problem should have some, is a bug in the plan, never
    merged silently. (Seed data keeps only the problems that pass its rules: every_problem=False.)"""
    merged = pd.concat(list(parts), ignore_index=True)
    keys = list(ROW_KEYS[kind])
    duplicated = merged.duplicated(keys)
    if duplicated.any():
        first = merged.loc[duplicated, keys].iloc[0].to_dict()
        raise RuntimeError(f"merging {kind} shards: the row {first} appears in more than one shard")
    position = {pid: i for i, pid in enumerate(problem_order)}
    missing = set(position) - set(merged["problem_id"])
    if missing and every_problem:
        raise RuntimeError(f"merging {kind} shards: {len(missing)} problem(s) have no row, e.g. {sorted(missing)[0]}")
    order = merged["problem_id"].map(position)
    if order.isna().any():
        raise RuntimeError(f"merging {kind} shards: problem {merged.loc[order.isna(), 'problem_id'].iloc[0]} "
                           "was not in the input")
    return merged.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def part_paths(out: Path, count: int) -> list[Path]:
    """Where engine `i` of `count` writes its part of `out` (stable, so a rerun keeps a finished
    part: `out` is named by the fingerprint of the stage's work)."""
    return [out.with_name(f"{out.stem}.part{i}of{count}{out.suffix}") for i in range(count)]


def lane_plans(engine, lanes: int, gpus: Sequence[str] | None = None,
               cpus: Sequence[int] | None = None) -> list[ShardPlan]:
    """The node split into `lanes` disjoint shares, one per concurrent stage (flow.concurrent_evals):
    the engine groups dealt round-robin, or, for one CPU engine, the cores. Fewer lanes than asked
    when the node has fewer groups (GPUs: two engines never share one) or cores."""
    full = shard_plan(engine, gpus=gpus, cpus=cpus)
    if full.on_gpu or full.size > 1:
        width = min(lanes, full.size)
        return [ShardPlan(tuple(EngineGroup(k, g.gpus, g.cpus) for k, g in enumerate(full.groups[j::width])),
                          full.on_gpu, full.gpus_per_engine) for j in range(width)]
    cores = list(usable_cpus() if cpus is None else cpus)
    width = max(1, min(lanes, len(cores)))
    if width == 1:
        return [full]
    per = len(cores) // width
    return [ShardPlan((EngineGroup(0, cpus=tuple(cores[j * per:(j + 1) * per])),), on_gpu=False, gpus_per_engine=0)
            for j in range(width)]


def device_share() -> dict[str, str]:
    """The GPUs or cores this process was given by its parent (EngineGroup.env), for its stage's
    record; empty when it may use the whole machine."""
    share = {"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "cores": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}
    return {k: v for k, v in share.items() if v}
