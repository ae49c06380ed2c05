"""The TOPS loop as one Prefect flow.

seed data -> tag model -> multi-effort sampling -> verify -> select -> mask -> SFT of the base
(TOPS model) [-> random-correct baseline] -> k x (sample n from the latest model -> verify ->
Iter-SFT or Iter-DPO) -> evaluate every model -> report.

Every stage is a Prefect task keyed by the fingerprint of its config section and input
artifacts (flows/cache.py), writing a content-addressed output under `<run>/stages/`; the
current lineage is published under stable names in the run folder (`samples.parquet`,
`models/tops`, `iter1/pairs.parquet`, `eval.parquet`, `report.md`, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from prefect import flow, get_run_logger, task

from flows.cache import CACHE_DIR, cache_key, is_complete, stage_key
from tops.artifacts import read_artifact, write_artifact
from tops.config import EFFORT_ORDER, GenerateConfig, TopsConfig, config_section, load_config
from tops.errors import UserError
from tops.select import SampleKeys, candidates
from tops.stages import EVAL_SEED_OFFSET

CACHED = {"cache_key_fn": cache_key, "persist_result": True}
# vLLM reconfigures logging when an engine starts; inside a flow that shuts down Prefect's API log
# handler while it holds the logging lock and deadlocks. Leave logging to Prefect instead.
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


class StageFailed(RuntimeError):
    """A stage failed for good; earlier artifacts stay intact."""


# ---------------------------------------------------------------- tasks (each one stage)


@task(name="problems", **CACHED)
def problems_task(cfg: TopsConfig, key: str, out: str, run_dir: str, n: int, seed: int,
                  exclude: list[str]) -> str:
    from tops.domains import load_problems

    used: set[str] = set()
    for path in exclude:
        used |= set(read_artifact(path, "problems")["problem_id"])
    write_artifact(load_problems(cfg.problems, n=n, seed=seed, exclude=used), out, "problems")
    return out


@task(name="seed", **CACHED)
def seed_task(cfg: TopsConfig, key: str, out: str, run_dir: str, problems: str, base_model: str) -> str:
    from tops.stages import run_seed

    run_seed(cfg, Path(out), problems_path=Path(problems), base_model=base_model)
    return out


@task(name="generate-shard", **CACHED)
def generate_task(cfg: TopsConfig, key: str, out: str, run_dir: str, model: str, problems: str,
                  gen: GenerateConfig, shard: int, n_shards: int) -> str:
    from tops.engines import make_engine
    from tops.generate import generate_samples

    frame = read_artifact(problems, "problems").iloc[shard::n_shards].reset_index(drop=True)
    engine = make_engine(model, cfg.engine)
    try:
        generate_samples(frame, engine, gen, cfg.efforts.prompts, out, model_name=Path(model).name)
    finally:
        engine.close()
    return out


@task(name="merge-samples", **CACHED)
def merge_task(key: str, out: str, run_dir: str, parts: list[str]) -> str:
    merged = pd.concat([read_artifact(p, "samples") for p in parts], ignore_index=True)
    write_artifact(merged, out, "samples")
    return out


@task(name="verify", **CACHED)
def verify_task(cfg: TopsConfig, key: str, out: str, run_dir: str, samples: str) -> str:
    from tops.stages import run_verify

    run_verify(cfg, Path(samples), Path(out))
    return out


@task(name="select", **CACHED)
def select_task(cfg: TopsConfig, key: str, out: str, run_dir: str, verified: str, seed: str | None) -> str:
    from tops.stages import run_select

    run_select(cfg, Path(verified), Path(out), seed_path=Path(seed) if seed else None)
    return out


@task(name="mask", **CACHED)
def mask_task(cfg: TopsConfig, key: str, out: str, run_dir: str, selected: str) -> str:
    from tops.stages import run_mask

    run_mask(cfg, Path(selected), Path(out))
    return out


@task(name="pairs", **CACHED)
def pairs_task(cfg: TopsConfig, key: str, out: str, run_dir: str, verified: str) -> str:
    from tops.stages import run_pairs

    run_pairs(cfg, Path(verified), Path(out))
    return out


def train_config_for(cfg: TopsConfig, stage: str):
    """The tag model learns each row under its own effort prompt (format imitation); every
    self-improvement model trains under the unconditioned prompt, so it picks its own depth."""
    train_cfg = cfg.train_config(stage)
    if "system_prompt" not in cfg.flow.train_overrides.get(stage, {}):
        train_cfg = train_cfg.model_copy(update={"system_prompt": "effort" if stage == "tag" else "none"})
    return train_cfg


def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or exc.__class__.__name__ == "OutOfMemoryError"


# No print capture here: datasets fingerprints map functions with dill, which reads globals off
# dis.dis() output it captures from stdout; Prefect's print capture bypassed that capture and
# logged pages of bytecode per training run.
@task(name="train", log_prints=False, **CACHED)
def train_task(cfg: TopsConfig, key: str, out: str, run_dir: str, stage: str, method: str, data: str,
               data_kind: str, base_model: str) -> str:
    """SFT or DPO; on out-of-memory, retries with half the batch and twice the accumulation
    (same effective batch)."""
    from tops.train import train_dpo, train_sft

    train_cfg = train_config_for(cfg, stage)
    frame = read_artifact(data, data_kind)
    logger = get_run_logger()
    for attempt in range(3):
        try:
            train = train_dpo if method == "dpo" else train_sft
            train(frame, base_model, out, train_cfg, cfg.efforts.prompts)
            return out
        except Exception as exc:
            if not _is_oom(exc) or train_cfg.batch_size == 1 or attempt == 2:
                raise
            train_cfg = train_cfg.model_copy(update={"batch_size": train_cfg.batch_size // 2,
                                                     "grad_accum": train_cfg.grad_accum * 2})
            logger.warning(f"{stage}: out of memory; retrying with batch_size={train_cfg.batch_size}")
    return out


@task(name="evaluate", **CACHED)
def eval_task(cfg: TopsConfig, key: str, out: str, run_dir: str, label: str, model: str,
              efforts: list[str], problems: str) -> str:
    from tops.engines import make_engine
    from tops.evaluate import evaluate_model

    frame = read_artifact(problems, "problems")
    engine = make_engine(model, cfg.engine)
    try:
        evals = evaluate_model(frame, engine, label, efforts, cfg.eval.seeds, cfg.eval.sampling,
                               cfg.efforts.prompts, cfg.verify, Path(out).parent)
    finally:
        engine.close()
    write_artifact(evals, out, "eval")
    return out


# ---------------------------------------------------------------- the loop


class Loop:
    """Keys, output paths, failure naming and publishing for one run folder."""

    def __init__(self, cfg: TopsConfig):
        self.cfg = cfg
        self.dir = cfg.run.dir
        self.stages = self.dir / "stages"
        self.lineage: dict[str, str] = {}
        self.notes: list[str] = []
        self.results = Path(self.dir / CACHE_DIR)
        self.timings_file = self.stages / "timings.json"
        self.steps: list[tuple[str, list[str], bool]] = []  # (stage, its output names, computed now)

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
            self.timings_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.timings_file.with_suffix(".partial")
            partial.write_text(json.dumps(timings, indent=1))
            partial.replace(self.timings_file)  # a killed run never leaves half a file
        return result

    def _timings(self) -> dict[str, float]:
        try:
            return json.loads(self.timings_file.read_text())
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

    def call(self, fn, name: str, section: dict, inputs: dict[str, str], *, folder: bool = False,
             **params: Any) -> str:
        """Run one stage task; `name` labels the task run, its output file and its errors."""
        key = stage_key(name, section, inputs)
        out = self.stages / (f"{name}-{key}" if folder else f"{name}-{key}.parquet")
        try:
            return self.timed(name, [out], lambda: self.task(fn, name)(key=key, out=str(out), run_dir=str(self.dir),
                                                                 **params))
        except UserError as exc:
            raise UserError(f"stage '{name}': {exc}") from exc
        except Exception as exc:
            raise StageFailed(f"stage '{name}' failed: {exc.__class__.__name__}: {exc}") from exc

    def task(self, fn, name: str):
        """The stage task with this run's result storage (its cache records) and retries."""
        return fn.with_options(result_storage=self.results, task_run_name=name, retries=self.cfg.flow.retries,
                               retry_delay_seconds=self.cfg.flow.retry_delay_s)

    def publish(self, name: str, path: str) -> None:
        """Stable name for the current lineage (hard link for files, symlink for models)."""
        target = self.dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        source = Path(path).resolve()
        if source.is_dir():
            target.symlink_to(os.path.relpath(source, target.parent), target_is_directory=True)
        else:
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        self.lineage[name] = str(path)


def _sample(loop: Loop, stage: str, model: str, problems: str, gen: GenerateConfig) -> str:
    """Multi-depth sampling, split into shards mapped over the flow's task runner."""
    cfg = loop.cfg
    shards = cfg.flow.generate_shards
    section = {**config_section(cfg, "engine", "efforts"), "generate": gen.model_dump(mode="json")}
    inputs = {"model": model, "problems": problems}
    if shards == 1:
        return loop.call(generate_task, stage, section, inputs, cfg=cfg, model=model, problems=problems,
                         gen=gen, shard=0, n_shards=1)
    keys = [stage_key(f"{stage}-shard{i}", section, inputs) for i in range(shards)]
    outs = [str(loop.stages / f"{stage}-shard{i}-{k}.parquet") for i, k in enumerate(keys)]

    def run_shards() -> list[str]:
        with _ray_resources(cfg):
            futures = [loop.task(generate_task, f"{stage}-shard{i}").submit(
                           cfg=cfg, key=k, out=o, run_dir=str(loop.dir), model=model, problems=problems, gen=gen,
                           shard=i, n_shards=shards)
                       for i, (k, o) in enumerate(zip(keys, outs, strict=True))]
        try:
            return [f.result() for f in futures]
        except Exception as exc:
            raise StageFailed(f"stage '{stage}' failed: {exc.__class__.__name__}: {exc}") from exc

    parts = loop.timed(f"{stage} ({shards} shards)", [Path(o) for o in outs], run_shards)
    return loop.call(merge_task, f"{stage}-merge", {}, {f"part{i}": p for i, p in enumerate(parts)},
                     parts=parts)


def _ray_resources(cfg: TopsConfig):
    import contextlib

    if cfg.flow.runner != "ray" or not cfg.flow.gpus_per_shard:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=cfg.flow.gpus_per_shard)


def _problems(loop: Loop, name: str, n: int, seed: int, exclude: list[str]) -> str:
    cfg = loop.cfg
    section = {**config_section(cfg, "problems"), "n": n, "seed": seed, "split": name}
    path = loop.call(problems_task, f"problems-{name}", section, {f"x{i}": p for i, p in enumerate(exclude)},
                     cfg=cfg, n=n, seed=seed, exclude=exclude)
    loop.publish(f"problems/{name}.parquet", path)
    return path


def _train(loop: Loop, stage: str, method: str, data: str, data_kind: str, base: str,
           label: str | None = None) -> str:
    """Train one model; `stage` picks the training overrides, `label` names the model."""
    cfg = loop.cfg
    label = label or stage
    section = {"train": train_config_for(cfg, stage).model_dump(mode="json"), "method": method,
               "prompts": cfg.efforts.prompts}
    path = loop.call(train_task, f"train-{label}", section, {"data": data, "base": base}, folder=True,
                     cfg=cfg, stage=stage, method=method, data=data, data_kind=data_kind, base_model=base)
    loop.publish(f"models/{label}", path)
    return path


def _improve(loop: Loop, verified: str, seed: str | None, policy: str, name: str) -> tuple[str, str]:
    """select (policy) -> mask: the training data of one self-improvement model."""
    cfg = loop.cfg.model_copy(deep=True)
    cfg.select.policy = policy
    selected = loop.call(select_task, f"select-{name}", config_section(cfg, "select"),
                         {"verified": verified, **({"seed": seed} if seed else {})},
                         cfg=cfg, verified=verified, seed=seed)
    masked = loop.call(mask_task, f"mask-{name}", config_section(cfg, "mask"), {"selected": selected},
                       cfg=cfg, selected=selected)
    return selected, masked


def run_loop(cfg: TopsConfig) -> dict:
    from tops.models import resolve_model

    loop = Loop(cfg)
    loop.dir.mkdir(parents=True, exist_ok=True)
    (loop.dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    base = resolve_model(cfg.model.base)
    f = cfg.flow
    seed_seed = cfg.run.seed

    # 1. problems for every split (disjoint by id) and seed data
    seed_problems = _problems(loop, "seed", f.seed_problems, seed_seed, [])
    train_problems = _problems(loop, "train", f.train_problems, seed_seed + 1, [seed_problems])
    iter_problems = [
        _problems(loop, f"iter{k}", f.iter_problems, seed_seed + 1 + k, [seed_problems, train_problems])
        for k in range(1, f.iterations + 1)
    ]
    used = [seed_problems, train_problems, *iter_problems]
    eval_problems = _problems(loop, "eval", cfg.eval.n_problems, seed_seed + EVAL_SEED_OFFSET, used)

    seed = loop.call(seed_task, "seed", config_section(cfg, "seed", "efforts"),
                     {"problems": seed_problems, "base": base}, cfg=cfg, problems=seed_problems, base_model=base)
    loop.publish("seed.parquet", seed)

    # 2. format imitation: the tag model follows the effort prompts
    tag = _train(loop, "tag", "sft", seed, "samples", base)

    # 3-6. multi-effort sampling, verify, select shortest-correct, mask
    gen = cfg.generate
    samples = _sample(loop, "generate", tag, train_problems, gen)
    loop.publish("samples.parquet", samples)
    verified = loop.call(verify_task, "verify", config_section(cfg, "verify"), {"samples": samples},
                         cfg=cfg, samples=samples)
    loop.publish("verified.parquet", verified)
    seed_low = seed if cfg.select.add_seed_low else None
    selected, masked = _improve(loop, verified, seed_low, cfg.select.policy, "tops")
    loop.publish("selected.parquet", selected)
    loop.publish("masked.parquet", masked)

    # 7. SFT of the base model on the selection -> TOPS model (no effort prompt)
    models = {"base": (base, ["none"]), "tag": (tag, list(EFFORT_ORDER))}
    tops_model = _train(loop, "tops", "sft", masked, "masked", base)
    models["tops"] = (tops_model, ["none"])
    if f.random_baseline:
        _, masked_random = _improve(loop, verified, seed_low, "random", "random")
        loop.publish("masked_random.parquet", masked_random)
        models["random"] = (_train(loop, "random", "sft", masked_random, "masked", base), ["none"])

    # 8. iterative self-improvement from the latest model
    latest = tops_model
    iter_gen = GenerateConfig(efforts=["none"], n_samples=f.iter_samples, shard_size=gen.shard_size,
                              sampling=gen.sampling)
    for k, problems in enumerate(iter_problems, start=1):
        it = f"iter{k}"
        it_samples = _sample(loop, f"generate-{it}", latest, problems, iter_gen)
        it_verified = loop.call(verify_task, f"verify-{it}", config_section(cfg, "verify"), {"samples": it_samples},
                                cfg=cfg, samples=it_samples)
        loop.publish(f"{it}/verified.parquet", it_verified)
        it_rows = read_artifact(it_verified, "verified")
        if f.iter_method == "dpo":
            correct = it_rows.groupby("problem_id")["correct"]
            usable = bool((correct.any() & ~correct.all()).any())
        else:  # select's own rule: a correct response from a reliable enough effort
            usable = bool(candidates(SampleKeys.of(it_rows), cfg.select.min_effort_accuracy).any())
        if not usable:
            # Nothing to learn from: keep the model rather than fail a long run at its end.
            wanted = "a preference pair" if f.iter_method == "dpo" else "a correct response"
            if f.iter_method != "dpo" and cfg.select.min_effort_accuracy:
                wanted += f" in at least {cfg.select.min_effort_accuracy:.0%} of its samples"
            loop.notes.append(f"{it}: no problem gave {wanted}; the model was left unchanged")
            get_run_logger().warning(loop.notes[-1])
            loop.publish(f"models/{it}", latest)
        elif f.iter_method == "dpo":
            pairs = loop.call(pairs_task, f"pairs-{it}", config_section(cfg, "pairs"), {"verified": it_verified},
                              cfg=cfg, verified=it_verified)
            loop.publish(f"{it}/pairs.parquet", pairs)
            latest = _train(loop, "iter_dpo", "dpo", pairs, "pairs", latest, label=it)
        else:
            _, it_masked = _improve(loop, it_verified, None, "shortest", it)
            loop.publish(f"{it}/masked.parquet", it_masked)
            latest = _train(loop, "iter_sft", "sft", it_masked, "masked", latest, label=it)
        models[it] = (latest, ["none"])

    # 9. evaluate every model on held-out problems
    eval_parts = []
    for label, (model, efforts) in models.items():
        section = {**config_section(cfg, "eval", "engine", "verify"), "efforts": efforts,
                   "prompts": {e: cfg.efforts.prompts[e] for e in efforts}}
        eval_parts.append(loop.call(eval_task, f"eval-{label}", section, {"model": model, "problems": eval_problems},
                                    cfg=cfg, label=label, model=model, efforts=efforts, problems=eval_problems))
    evals = pd.concat([read_artifact(p, "eval") for p in eval_parts], ignore_index=True)
    write_artifact(evals, loop.dir / "eval.parquet", "eval")

    # 10. report
    report = _report(loop, evals, list(models), selected, eval_problems, used)
    (loop.dir / "lineage.json").write_text(json.dumps(loop.lineage, indent=2))
    minutes, reused = loop.compute_minutes()
    return {"run_dir": str(loop.dir), "report": str(report), "lineage": loop.lineage,
            "stage_minutes": round(minutes, 2), "stages": len(loop.steps), "stages_reused": reused}


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
                        stage_times=loop.stage_times())
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

    return ThreadPoolTaskRunner(max_workers=cfg.flow.generate_shards)


def run(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Validate the config first (exit 2 on error), then run the flow with its task runner."""
    cfg = load_config(config, overrides)
    return tops_loop.with_options(task_runner=task_runner_for(cfg))(
        config=str(config) if config else None, overrides=list(overrides or []))
