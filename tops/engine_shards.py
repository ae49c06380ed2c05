"""Sampling and evaluation on every engine of the shard plan (tops/gpus.py), without Ray.

The parent splits the problems into disjoint shards, starts one child process per engine group
(`python -m tops.engine_shards SPEC`, pinned with the group's environment), waits for all, and
merges their parts into one artifact with exactly one row per key. A part is named by the
fingerprint of its work, so a rerun after a kill starts only the engines whose part is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tops.artifacts import fingerprint, read_artifact, write_artifact
from tops.config import EngineConfig, GenerateConfig, TopsConfig
from tops.errors import UserError
from tops.gpus import ShardPlan, merge_parts, shard_frame

_LOG_TAIL = 3000  # characters of a failed engine's log quoted in the error


def generate_sharded(cfg: TopsConfig, plan: ShardPlan, problems: pd.DataFrame, model: str, gen: GenerateConfig,
                     out: Path, model_name: str, engine: EngineConfig | None = None) -> pd.DataFrame:
    """`generate_samples` over the plan's engines; `engine` defaults to cfg.engine (the seed
    stage passes its teacher's)."""
    job = {"task": "generate", "model": model, "model_name": model_name, "generate": gen.model_dump(mode="json")}
    return _run(cfg, plan, problems, out, "samples", job, engine or cfg.engine)


def evaluate_sharded(cfg: TopsConfig, plan: ShardPlan, problems: pd.DataFrame, model: str, label: str,
                     efforts: list[str], out: Path) -> pd.DataFrame:
    """`evaluate_model` over the plan's engines: one eval row per (problem, effort, seed)."""
    job = {"task": "evaluate", "model": model, "label": label, "efforts": list(efforts)}
    return _run(cfg, plan, problems, out, "eval", job, cfg.engine)


def _run(cfg: TopsConfig, plan: ShardPlan, problems: pd.DataFrame, out: Path, kind: str, job: dict,
         engine: EngineConfig) -> pd.DataFrame:
    if problems.empty:
        raise UserError("no problems to sample (empty input)")
    out = Path(out)
    work = out.with_name(out.name + ".engines")
    work.mkdir(parents=True, exist_ok=True)
    shards = [shard_frame(problems, g.index, plan.size) for g in plan.groups]
    running: list[tuple[int, subprocess.Popen, Path, Path]] = []
    parts: list[Path] = []
    try:
        for group, shard in zip(plan.groups, shards, strict=True):
            if shard.empty:  # more engines than problems
                continue
            spec = {**job, "config": cfg.model_dump(mode="json"), "engine": engine.model_dump(mode="json")}
            key = fingerprint([spec, shard["problem_id"].tolist()])
            part = work / f"part{group.index}-{key}.parquet"
            parts.append(part)
            if part.exists():  # finished before a kill: keep it
                continue
            inputs = work / f"part{group.index}-{key}.problems.parquet"
            write_artifact(shard, inputs, "problems")
            spec_path = work / f"part{group.index}-{key}.json"
            spec_path.write_text(json.dumps({**spec, "problems": str(inputs), "out": str(part)}))
            log = work / f"part{group.index}.log"
            with open(log, "w") as log_file:
                child = subprocess.Popen([sys.executable, "-m", "tops.engine_shards", str(spec_path)],
                                         env=_child_env(group.env()), stdout=log_file, stderr=subprocess.STDOUT)
            running.append((group.index, child, log, spec_path))
        failures = []
        for index, child, log, _ in running:
            code = child.wait()
            if code != 0:
                failures.append((index, code, log))
    except BaseException:
        for _, child, _, _ in running:
            if child.poll() is None:
                child.kill()
                child.wait()
        raise
    if failures:
        index, code, log = failures[0]
        tail = log.read_text(errors="replace")[-_LOG_TAIL:]
        if code == 2:  # the child's input error: one line, as our own
            line = next((ln for ln in reversed(tail.splitlines()) if ln.startswith("error: ")), tail.strip())
            raise UserError(line.removeprefix("error: "))
        raise RuntimeError(f"engine {index} of {plan.size} failed (exit {code}); the end of {log}:\n{tail}")
    merged = merge_parts([read_artifact(p, kind) for p in parts], kind, problems["problem_id"].tolist())
    write_artifact(merged, out, kind)
    shutil.rmtree(work, ignore_errors=True)
    return merged


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment, the group's pinning, and this checkout of `tops` first on the
    path so the children run the same code as the parent."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(p for p in (root, path) if p)}


def _child(spec: dict) -> None:
    """One engine process: its shard in, its part out."""
    from tops.engines import make_engine

    cfg = TopsConfig.model_validate(spec["config"])
    problems = read_artifact(spec["problems"], "problems")
    out = Path(spec["out"])
    engine = make_engine(spec["model"], EngineConfig.model_validate(spec["engine"]))
    try:
        if spec["task"] == "generate":
            from tops.generate import generate_samples

            # Resumable by itself (shards beside `out`); `out` appears, atomically, when complete.
            generate_samples(problems, engine, GenerateConfig.model_validate(spec["generate"]), cfg.efforts.prompts,
                             out, model_name=spec["model_name"], progress=False)
        else:
            from tops.evaluate import evaluate_model

            evals = evaluate_model(problems, engine, spec["label"], spec["efforts"], cfg.eval.seeds,
                                   cfg.eval.sampling, cfg.efforts.prompts, cfg.verify,
                                   out.with_suffix(".work"), progress=False)
            write_artifact(evals, out, "eval")
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        _child(json.loads(Path(args[0]).read_text()))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
