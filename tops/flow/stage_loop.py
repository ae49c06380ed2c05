"""One run of the loop: stage keys, output paths, timings, failure naming and publishing, and the
plan of a dry run.

Every stage is keyed by the fingerprint of its config section and input artifacts
(tops.flow.cache) and writes a content-addressed output under `<run>/stages/`; the current lineage
is published under the run folder's stable names (tops.layout). A `Loop` made with `planning=True`
walks the same code without running anything: each stage becomes a `PlanStep` (cached or to run,
its command and processes), and an output not made yet is a placeholder path.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tops.config import TopsConfig
from tops.errors import UserError
from tops.flow.cache import is_complete, stage_key
from tops.flow.tasks import (
    Sharded,
    StageFailed,
    child_command,
    heavy_task,
    light_task,
    merge_task,
    ray_resources,
)
from tops.layout import RunLayout
from tops.stages import stage as describe

PENDING = "TBD"  # a plan's key for an output whose inputs are not made yet


@dataclass
class PlanStep:
    """One stage of a dry run."""

    name: str
    inputs: dict[str, str]
    output: str
    cached: bool
    args: list[str] | None = None  # a child process's `tops` arguments; None: runs in the flow's process
    command: str | None = None
    processes: int = 1
    gpus: int = 0
    memory: str | None = None  # the stage's expected memory per GPU (tops.memory)
    warning: str | None = None  # when that will not, or may not, fit the GPUs it gets
    notes: list[str] = field(default_factory=list)


def visible_gpus() -> int:
    """GPUs this process may use, without starting CUDA (a plan imports no torch)."""
    from tops.gpus import visible_gpus as gpu_ids

    return len(gpu_ids())


@contextmanager
def failures_named(stage: str):
    """A stage's error names the stage: an input error stays a UserError (exit 2), anything else
    becomes StageFailed."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"stage '{stage}': {exc}") from exc
    except Exception as exc:
        raise StageFailed(f"stage '{stage}' failed: {exc.__class__.__name__}: {exc}") from exc


@dataclass
class ChildStage:
    """One heavy stage of the loop: its description (`stage`, tops.stages.catalog), the name of its
    task and output, its inputs, its `tops` arguments, the config it runs with and its parameters;
    its cache key and manifest `config` are the description's (`section`)."""

    stage: str
    name: str
    inputs: dict[str, str]
    args: list[str]
    cfg: TopsConfig
    sharded: Sharded | None = None
    params: dict = field(default_factory=dict)

    @property
    def section(self) -> dict:
        return describe(self.stage).config(self.cfg, self.params)

    @property
    def folder(self) -> bool:
        """The output is a model folder, not a Parquet file."""
        return describe(self.stage).output == "model"


class Loop:
    """Keys, output paths, failure naming and publishing for one run folder."""

    def __init__(self, cfg: TopsConfig, planning: bool = False):
        self.cfg = cfg
        self.layout = RunLayout(cfg.run.dir)
        self.dir = self.layout.dir
        self.stages = self.layout.stages
        self.planning = planning
        self.plan: list[PlanStep] = []
        self.lineage: dict[str, str] = {}
        self.notes: list[str] = []
        self.steps: list[tuple[str, list[str], bool]] = []  # (stage, its output names, computed now)

    # ------------------------------------------------------------ timings

    def timed(self, label: str, outputs: list[Path], run):
        """Run `run()`; when it made new outputs, record its wall time (split over the outputs) under
        their names, so a rerun that reuses them still knows what the stage cost when it ran."""
        fresh = not all(is_complete(o) for o in outputs)
        started = time.perf_counter()
        result = run()
        self.steps.append((label, [o.name for o in outputs], fresh))
        if fresh:
            timings = self._timings()
            timings.update({o.name: (time.perf_counter() - started) / len(outputs) for o in outputs})
            path = self.layout.timings
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(timings, indent=1))
            partial.replace(path)  # a killed run never leaves half a file
        return result

    def _timings(self) -> dict[str, float]:
        try:
            return json.loads(self.layout.timings.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: timings are informative only
            return {}

    def stage_times(self) -> list[tuple[str, float | None, bool]]:
        """(stage, minutes it took when it ran or None if not recorded, reused in this run)."""
        timings = self._timings()
        return [(label, sum(timings[n] for n in names) / 60 if all(n in timings for n in names) else None, not fresh)
                for label, names, fresh in self.steps]

    def compute_minutes(self) -> tuple[float, int]:
        """(minutes the stages of this run took when they ran, how many of them were reused)."""
        times = self.stage_times()
        return sum(m or 0.0 for _, m, _ in times), sum(reused for _, _, reused in times)

    # ------------------------------------------------------------ stages

    def output(self, name: str, section: dict, inputs: dict[str, str], folder: bool = False) -> tuple[str, Path]:
        """(key, output path); in a plan, an input not made yet makes a placeholder."""
        if self.planning and any(not Path(p).exists() for p in inputs.values()):
            return PENDING, self.layout.stage_output(name, PENDING, folder)
        key = stage_key(name, section, inputs)
        return key, self.layout.stage_output(name, key, folder)

    def call(self, fn, name: str, section: dict, inputs: dict[str, str], *, folder: bool = False,
             step: PlanStep | None = None, **params: Any) -> str:
        """Run one stage task; `name` labels the task run, its output and its errors."""
        key, out = self.output(name, section, inputs, folder)
        if self.planning:
            step = step or PlanStep(name, {}, "", False)
            step.inputs, step.output, step.cached = dict(inputs), str(out), key != PENDING and is_complete(out)
            if step.args is not None:  # the child's command line, as a user would type it
                step.command = shlex.join(["tops", *child_command(step.args, out)[3:]])
            self.plan.append(step)
            return str(out)
        with failures_named(name):
            return self.timed(name, [out], lambda: self.task(fn, name)(key=key, out=str(out), run_dir=str(self.dir),
                                                                 **params))

    def light(self, stage: str, name: str, inputs: dict[str, str | None], cfg: TopsConfig | None = None,
              params: dict | None = None, **options: Any) -> str:
        """A light stage (tops.stages.catalog) in the flow's process; its key is its description's
        config with `params`; `options` go to the runner only (how it runs, not what it makes)."""
        cfg = cfg or self.cfg
        inputs = {k: p for k, p in inputs.items() if p is not None}
        return self.call(light_task, name, describe(stage).config(cfg, params), inputs, cfg=cfg, stage=stage,
                         files=inputs, params=params, options=options)

    def heavy(self, stage: ChildStage, spread: int = 1) -> str:
        """Where every heavy stage of the loop starts. `spread` > 1 (flow.generate_shards): that many
        `--shard i/N` tasks over the flow's task runner (Ray places each), merged by a merge task;
        else one task, whose children are the node's engine groups (Loop.child)."""
        if spread == 1:
            return self.child(stage.name, stage.section, stage.inputs, stage.args, stage.cfg,
                              train=stage.stage == "train", folder=stage.folder, sharded=stage.sharded,
                              method=stage.params.get("method", "sft"))
        names = [f"{stage.name}-shard{i}" for i in range(spread)]
        args = [[*stage.args, "--shard", f"{i}/{spread}"] for i in range(spread)]
        if self.planning:
            parts = [self.child(n, stage.section, stage.inputs, a, stage.cfg) for n, a in zip(names, args, strict=True)]
        else:
            keyed = [self.output(n, stage.section, stage.inputs) for n in names]

            def run_parts() -> list[str]:
                with ray_resources(stage.cfg):
                    futures = [self.task(heavy_task, n).submit(cfg=stage.cfg, key=key, out=str(out), run_dir=str(self.dir),
                                                               stage=n, args=a)
                               for n, a, (key, out) in zip(names, args, keyed, strict=True)]
                with failures_named(stage.name):
                    return [f.result() for f in futures]

            parts = self.timed(f"{stage.name} ({spread} shards)", [out for _, out in keyed], run_parts)
        return self.call(merge_task, f"{stage.name}-merge", {}, {f"part{i}": p for i, p in enumerate(parts)},
                         cfg=stage.cfg, of=stage.stage, kind=stage.sharded.kind, parts=parts,
                         problems=stage.sharded.problems)

    def child(self, name: str, section: dict, inputs: dict[str, str], args: list[str], cfg: TopsConfig, *,
              train: bool = False, folder: bool = False, sharded: Sharded | None = None,
              method: str = "sft") -> str:
        """A heavy stage: `tops <args>` in a child process with `cfg` written beside its output; a
        `sharded` sampling stage: one child per engine group of the node, merged."""
        from tops.flow.ray_cluster import annotate_step, engine_plan

        plan = engine_plan(cfg, sharded.engine, planning=self.planning) if sharded else None  # the node's or cluster's
        step = self._plan_step(name, args, cfg, train, plan, sharded, method) if self.planning else None
        if step is not None:
            annotate_step(step, cfg, args[0], plan)  # under the Ray runner: where on the cluster
        if plan is None or plan.size == 1:
            plan = sharded = None
        return self.call(heavy_task, name, section, inputs, folder=folder, step=step, cfg=cfg, stage=name, args=args,
                         plan=plan, sharded=sharded)

    def children_in_lanes(self, label: str, stages: list[ChildStage], lanes: list) -> list[str]:
        """Heavy stages that depend on nothing but their inputs, len(lanes) at a time: stage i runs
        in lane i % len(lanes) (a tops.gpus.lane_plans share of the node) after the lane's previous
        stage, so two stages never share a lane's GPUs or cores. Each is its own cached task.

        The lanes are shares of this node (GPU and core ids as this process sees them), so they run
        on a thread pool of their own here, whatever `flow.runner` maps elsewhere (Ray)."""
        from prefect.task_runners import ThreadPoolTaskRunner

        keyed = [self.output(s.name, s.section, s.inputs, folder=s.folder) for s in stages]
        width = len(lanes)

        def run_all() -> list[str]:
            futures = []
            with ThreadPoolTaskRunner(max_workers=width) as local:
                for i, (stage, (key, out)) in enumerate(zip(stages, keyed, strict=True)):
                    plan = lanes[i % width]
                    lane_before = [futures[i - width]] if i >= width else []
                    parameters = {"cfg": stage.cfg, "key": key, "out": str(out), "run_dir": str(self.dir),
                                  "stage": stage.name, "args": stage.args}
                    if plan.size > 1:
                        parameters.update(plan=plan, sharded=stage.sharded)
                    else:
                        parameters["env"] = plan.groups[0].env()
                    futures.append(local.submit(self.task(heavy_task, stage.name), parameters, wait_for=lane_before))
                done = []
                for stage, future in zip(stages, futures, strict=True):
                    with failures_named(stage.name):
                        done.append(future.result())
            return done

        return self.timed(label, [out for _, out in keyed], run_all)

    def _plan_step(self, name: str, args: list[str], cfg: TopsConfig, train: bool, plan, sharded: Sharded | None,
                   method: str) -> PlanStep:
        """A dry run's step: processes, GPUs and the expected memory per GPU (tops.memory)."""
        from tops.memory import estimate_line

        notes = []
        if train:
            processes = cfg.train.num_processes
            gpus = min(processes, visible_gpus())
            notes = ["accelerate launch"] if processes > 1 else []
        elif plan is not None:
            processes, gpus = plan.size, plan.size * plan.gpus_per_engine
            if plan.size > 1 or plan.on_gpu:
                notes = [plan.describe()]
        else:
            processes, gpus = 1, 0
        memory, warning = estimate_line(cfg, name, train=train, method=method,
                                        engine=sharded.engine if sharded else None,
                                        model=sharded.model if sharded else cfg.model.base)
        return PlanStep(name, {}, "", False, args=args, processes=processes, gpus=gpus, memory=memory, notes=notes,
                        warning=warning)

    def task(self, fn, name: str):
        """The stage task with this run's result storage (its cache records) and retries."""
        return fn.with_options(result_storage=self.layout.cache, task_run_name=name, retries=self.cfg.flow.retries,
                               retry_delay_seconds=self.cfg.flow.retry_delay_s)

    def publish(self, name: str, path: str) -> None:
        """Stable name for the current lineage (hard link for files, symlink for models)."""
        self.lineage[name] = str(path)
        if self.planning:
            return
        source = Path(path).resolve()
        if not source.exists():  # checked before the old name goes: never delete before the new one exists
            raise StageFailed(f"publishing {name}: its stage output {source} is missing")
        target = self.layout.published(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = target.with_name(f".{target.name}.publishing")
        fresh.unlink(missing_ok=True)
        if source.is_dir():
            fresh.symlink_to(os.path.relpath(source, target.parent), target_is_directory=True)
        else:
            try:
                os.link(source, fresh)
            except OSError:
                shutil.copy2(source, fresh)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(fresh, target)  # replaces a link or file itself, never writes through it


def format_plan(steps: list[PlanStep], run_dir: Path) -> str:
    """The dry run's page: one block per stage, in order, then the memory warnings."""
    cached = sum(s.cached for s in steps)
    lines = [f"plan for {run_dir}: {len(steps)} stages, {cached} cached, {len(steps) - cached} to run", ""]
    for i, step in enumerate(steps, start=1):
        where = (f"child process x{step.processes}" + (f", {step.gpus} GPU(s)" if step.gpus else "")
                 + "".join(f", {n}" for n in step.notes)) if step.command else "in the flow's process"
        memory = f", memory {step.memory}" if step.memory else ""
        lines.append(f"{i:>2}. {step.name}: {'cached' if step.cached else 'to run'} ({where}{memory})")
        for name, path in step.inputs.items():
            lines.append(f"      in  {name}: {path}")
        lines.append(f"      out {step.output}")
        if step.command:
            lines.append(f"      $ {step.command}")
    lines += [f"warning: {s.warning}" for s in steps if s.warning]
    return "\n".join(lines)
