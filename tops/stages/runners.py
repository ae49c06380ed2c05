"""File-level stage runners: read artifacts -> call the stage function -> write atomically ->
record the manifest. The CLI and the Prefect flow both call these, so a stage behaves the same
whichever way it is started. Inputs are validated before any engine starts or any byte is written.

A light stage is a function in LIGHT (frames in, frame and summary out) plus its description in
tops/stages/catalog.py; `run_light` is their one skeleton. Heavy stages (engines, trainers) have
runners of their own; every record's `config` is the stage description's (`Stage.config`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

from tops.artifacts import output_lock, read_artifact, timed, write_artifact
from tops.artifacts import record_stage as _record_stage
from tops.config import TopsConfig
from tops.confine import open_no_follow
from tops.errors import EXIT_OUT_OF_MEMORY, UserError
from tops.gpus import device_share
from tops.launch import in_launched_process
from tops.layout import MANIFEST, TRAIN_SUMMARY, default_label
from tops.stages.catalog import TRAIN_METHODS, record_name, stage

console = Console(stderr=True)
EVAL_SEED_OFFSET = 7919  # held-out problems are drawn with a seed no training split uses


def record_stage(out: Path, stage: str, **record) -> None:
    """The stage's manifest record; a lock keeps records of concurrent stages (engine shards
    writing into one folder) from overwriting each other."""
    from tops.train.nodes import NODE_ENV

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if os.environ.get(NODE_ENV):  # placed by Ray (tops/flow/ray_cluster.py): the record names the node
        record["summary"] = {**(record.get("summary") or {}), "ray_node": os.environ[NODE_ENV]}
    with os.fdopen(open_no_follow(out.parent / f".{MANIFEST}.lock", os.O_WRONLY | os.O_CREAT), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _record_stage(out, stage, **record)


def one_writer(run: Callable) -> Callable:
    """Run the stage holding its output's lock (tops.artifacts.output_lock), from its first read
    to its manifest record: a second `tops <stage> --out X`, or a second flow on the same run
    folder, fails at once naming the holder's pid instead of racing it to the final rename.
    The ranks `accelerate launch` starts for a training stage run under their launcher's lock."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def locked(*args, **kwargs):
        from tops.train.nodes import machine_rank

        if in_launched_process() or machine_rank() > 0:  # a training job's other nodes: rank 0's lock
            return run(*args, **kwargs)
        with output_lock(signature.bind(*args, **kwargs).arguments["out"]):
            return run(*args, **kwargs)

    return locked


def _print_summary(stage: str, summary: dict) -> None:
    flat = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict | list))
    console.print(f"[bold green]{stage}[/] {flat}")


def draw_problems(cfg: TopsConfig, n: int | None = None, seed: int | None = None,
                  exclude: Sequence[pd.DataFrame] = (), heldout: bool = False) -> pd.DataFrame:
    """Problems from the configured source, none sharing an id with the `exclude` problems. The
    held-out split is drawn here only: eval.n_problems with a seed no training split uses."""
    from tops.domains import load_problems

    used = set().union(*(set(frame["problem_id"]) for frame in exclude)) if exclude else set()
    if heldout:  # eval.benchmarks, eval.source, else the training source (tops.benchmarks)
        from tops.benchmarks import held_out_problems

        return held_out_problems(cfg, cfg.eval.n_problems, cfg.run.seed + EVAL_SEED_OFFSET, used)
    return load_problems(cfg.problems, n=n, seed=seed, exclude=used)


def take_shard(problems: pd.DataFrame, shard: tuple[int, int]) -> pd.DataFrame:
    """Shard (i, n) of the problems (tops.gpus.shard_frame): n processes split the work."""
    from tops.gpus import shard_frame

    index, count = shard
    if not 0 <= index < count:
        raise UserError(f"--shard {index}/{count}: expected I/N with 0 <= I < N")
    return shard_frame(problems, index, count)


# ---------------------------------------------------------------- light stages


def _problems(cfg: TopsConfig, frames: dict, n: int | None = None, seed: int | None = None, heldout: bool = False,
              exact: bool = False) -> tuple[pd.DataFrame, dict]:
    """`exact` (the flow): fewer problems than asked is an error, not a smaller split."""
    problems = draw_problems(cfg, n, seed, list(frames.values()), heldout)
    # benchmarks are taken whole (or their own `n`); every other split has a count to meet
    wanted = (0 if cfg.eval.benchmarks else cfg.eval.n_problems) if heldout else cfg.problems.n if n is None else n
    if exact and len(problems) < wanted:
        raise UserError(f"{wanted} problems asked, the source has only {len(problems)} left after the "
                        "earlier splits")
    return problems, {"problems": len(problems)}


def _verify(cfg: TopsConfig, frames: dict, progress: bool = True):
    from tops.verify import verify_samples

    return verify_samples(frames["samples"], cfg.verify, progress=progress)


def _select(cfg: TopsConfig, frames: dict):
    from tops.select import select_responses

    return select_responses(frames["verified"], cfg.select, seed_low=frames.get("seed"))


def _pairs(cfg: TopsConfig, frames: dict):
    from tops.pairs import build_pairs

    return build_pairs(frames["verified"], cfg.pairs)


def _mask(cfg: TopsConfig, frames: dict, judge=None, progress: bool = True):
    from tops.masking import mask_responses

    owned = judge is None and stage("mask").runs_heavy(cfg)
    if owned:  # the judge: mask.judge_model on mask.judge_engine, else the run's model and engine
        from tops.engines import make_engine
        from tops.models import resolve_model

        judge = make_engine(resolve_model(cfg.mask.judge_model or cfg.model.base), cfg.mask.judge_engine or cfg.engine)
    try:
        return mask_responses(frames["selected"], cfg.mask, judge=judge, progress=progress)
    finally:
        if owned:
            judge.close()


LIGHT: dict[str, Callable[..., tuple[pd.DataFrame, dict]]] = {
    "problems": _problems, "verify": _verify, "select": _select, "pairs": _pairs, "mask": _mask}


@one_writer
def run_light(name: str, cfg: TopsConfig, out: Path, inputs: dict[str, Path | str | None] | None = None,
              params: dict | None = None, **options) -> tuple[pd.DataFrame, dict]:
    """A light stage from its files: read its inputs, run LIGHT[name] with the stage's parameters
    (part of its record) and `options` (how, not what: progress bars, a judge engine), write the
    output, record it. Returns (output frame, summary)."""
    spec = stage(name)
    inputs = {k: Path(p) for k, p in (inputs or {}).items() if p is not None}
    frames = {k: read_artifact(p, spec.input_kind(k)) for k, p in inputs.items()}
    with timed() as clock:
        frame, summary = LIGHT[name](cfg, frames, **(params or {}), **options)
        if frame.empty and spec.empty:
            raise UserError(spec.empty.format(next(iter(inputs.values()))))
        write_artifact(frame, out, spec.output)
    record_stage(out, name, config=spec.config(cfg, params), inputs=inputs, rows=len(frame),
                 seconds=clock["seconds"], summary=summary)
    _print_summary(name, summary)
    return frame, summary


def run_problems(cfg: TopsConfig, out: Path, n: int | None = None, seed: int | None = None,
                 exclude: Sequence[Path] = (), heldout: bool = False, exact: bool = False) -> pd.DataFrame:
    return run_light("problems", cfg, out, {f"exclude{i}": p for i, p in enumerate(exclude)},
                     {"n": n, "seed": seed, "heldout": heldout}, exact=exact)[0]


def run_verify(cfg: TopsConfig, in_path: Path, out: Path, progress: bool = True) -> dict:
    return run_light("verify", cfg, out, {"samples": in_path}, progress=progress)[1]


def run_select(cfg: TopsConfig, in_path: Path, out: Path, seed_path: Path | None = None) -> dict:
    return run_light("select", cfg, out, {"verified": in_path, "seed": seed_path})[1]


def run_pairs(cfg: TopsConfig, in_path: Path, out: Path) -> dict:
    return run_light("pairs", cfg, out, {"verified": in_path})[1]


def run_mask(cfg: TopsConfig, in_path: Path, out: Path, judge=None, progress: bool = True) -> dict:
    return run_light("mask", cfg, out, {"selected": in_path}, judge=judge, progress=progress)[1]


# ---------------------------------------------------------------- heavy stages


@one_writer
def run_generate(cfg: TopsConfig, out: Path, problems_path: Path | None = None, model: str | None = None,
                 engine=None, progress: bool = True, label: str | None = None,
                 shard: tuple[int, int] = (0, 1)) -> dict:
    """Sample problems (from a file, else drawn from the configured source) at every effort;
    `shard` (i, n) takes every n-th problem from the i-th, so n processes split the work."""
    from tops.generate import generate_samples
    from tops.models import resolve_model

    index, count = shard
    problems = read_artifact(problems_path, "problems") if problems_path is not None else draw_problems(cfg)
    problems = take_shard(problems, shard)
    if problems.empty:
        raise UserError(f"{problems_path or 'problems'}: no rows (empty input)")
    model_name = model or cfg.model.base
    with timed() as clock:
        owned = engine is None
        if owned:
            from tops.engines import make_engine

            engine = make_engine(resolve_model(model_name), cfg.engine)
        try:
            _, summary = generate_samples(problems, engine, cfg.generate, cfg.efforts.prompts, out,
                                          model_name=label or default_label(model_name), progress=progress,
                                          template_kwargs=cfg.efforts.template_kwargs)
        finally:
            if owned:
                with contextlib.suppress(Exception):
                    engine.close()
    record_stage(out, "generate", config=stage("generate").config(cfg),
                 inputs={"problems": problems_path} if problems_path else None,
                 rows=summary["rows"], seconds=clock["seconds"], summary={**summary, "shard": f"{index}/{count}"})
    _print_summary("generate", summary)
    return summary



@one_writer
def run_train(cfg: TopsConfig, method: str, data: Path, kind: str, out: Path, base: str | None = None,
              argv: Sequence[str] | None = None) -> dict | None:
    """Train with `method` (catalog.TRAIN_METHODS) into the model folder `out`. With train.num_processes > 1 the command `argv`
    (this process's arguments) reruns under `accelerate launch`, here and from the flow alike.
    Out of memory on any process: exit code EXIT_OUT_OF_MEMORY (the flow retries with half the
    micro-batch). Returns the summary (None in a process that only launched the others)."""
    import tops.train
    from tops.models import resolve_model
    from tops.train import maybe_relaunch
    from tops.train.common import is_main_process, is_out_of_memory

    if method not in TRAIN_METHODS:
        raise UserError(f"train method {method!r}: expected {' or '.join(TRAIN_METHODS)}")
    if kind not in TRAIN_METHODS[method].kinds:
        raise UserError(f"--kind {kind!r}: expected {', '.join(TRAIN_METHODS[method].kinds)}")
    frame = read_artifact(data, kind)
    model = resolve_model(base or cfg.model.base)  # once, before any relaunch into several ranks
    summary = None
    with timed() as clock:
        try:
            if not maybe_relaunch(list(argv if argv is not None else sys.argv[1:]), cfg.train):
                train = getattr(tops.train, f"train_{method}")  # TRAIN_METHODS: one trainer per method
                extra = {"grpo": cfg.grpo, "verify": cfg.verify} if method == "grpo" else {}  # its reward's settings
                summary = train(frame, model, out, cfg.train, cfg.efforts.prompts, **extra)
        except SystemExit as exc:  # the launched ranks failed: EXIT_OUT_OF_MEMORY if one ran out
            if exc.code == EXIT_OUT_OF_MEMORY:
                _exit_out_of_memory(out)
            raise
        except Exception as exc:  # a launched rank also marks it for its launcher (out_of_memory_guard)
            if not is_out_of_memory(exc):
                raise
            _exit_out_of_memory(out)
    from tops.train.nodes import machine_rank

    if in_launched_process() or not is_main_process() or machine_rank() > 0:
        return summary
    import json

    summary = summary or json.loads((out / TRAIN_SUMMARY).read_text())
    params = {"method": method}
    record_stage(out, record_name("train", params), config=stage("train").config(cfg, params),
                 inputs={"data": data, **({"base": model} if Path(model).exists() else {})},
                 rows=len(frame), seconds=clock["seconds"],
                 summary={**{k: summary.get(k) for k in ("kind", "steps", "final_loss", "num_processes", "train_seconds")},
                          **({"device_share": share} if (share := device_share()) else {})})
    return summary


def _exit_out_of_memory(out: Path) -> None:
    print(f"error: {out}: out of memory while training; retry with a smaller train.batch_size",
          file=sys.stderr)  # one line: a console would wrap it at its width
    raise SystemExit(EXIT_OUT_OF_MEMORY)


@one_writer
def run_seed(cfg: TopsConfig, out: Path, problems_path: Path | None = None,
             base_model: str | None = None, shard: tuple[int, int] = (0, 1)) -> dict:
    """Seed data from the configured teacher, with the paper's rules (tops.seed), which look at
    one problem at a time: `shard` (i, n) lets n teacher processes split the problems."""
    from tops.models import load_tokenizer, resolve_model
    from tops.seed import apply_seed_rules, engine_responses, programmatic_responses

    problems = take_shard(read_artifact(problems_path, "problems") if problems_path
                          else draw_problems(cfg, n=cfg.flow.seed_problems), shard)
    tokenizer = load_tokenizer(base_model or resolve_model(cfg.model.base))
    with timed() as clock:
        if cfg.seed.teacher == "arith":
            responses = programmatic_responses(problems)
        else:
            from tops.engines import make_engine

            engine = make_engine(resolve_model(cfg.seed.teacher), cfg.seed.engine)
            try:
                responses = engine_responses(problems, engine, cfg.seed, cfg.efforts.prompts,
                                             _work_dir(out, shard), cfg.verify)
            finally:
                engine.close()
        try:
            seed, summary = apply_seed_rules(responses, tokenizer, cfg.seed.min_gap_tokens)
        except UserError:
            if shard[1] == 1:
                raise
            # one shard of several: its problems may all fail the rules while others' pass
            seed = responses.iloc[:0].assign(n_tokens=pd.Series(dtype="int64"))
            summary = {"problems_in": int(responses["problem_id"].nunique()), "kept": 0}
        write_artifact(seed, out, "samples")
    record_stage(out, "seed", config=stage("seed").config(cfg),
                 inputs={"problems": problems_path} if problems_path else None,
                 rows=len(seed), seconds=clock["seconds"], summary=summary)
    _print_summary("seed", summary)
    return summary


def _work_dir(out: Path, shard: tuple[int, int]) -> Path:
    """Where a stage keeps its intermediate samples: beside its output, in a folder of its own
    when it is one shard of several (shards of one stage share the output folder)."""
    return out.parent if shard[1] == 1 else out.parent / f"{out.stem}.work"


@one_writer
def run_eval(cfg: TopsConfig, out: Path, models: list[str], train_problems: list[Path],
             progress: bool = True, problems_path: Path | None = None, labels: list[str] | None = None,
             shard: tuple[int, int] = (0, 1)) -> str:
    """Evaluate models on held-out problems (a problems artifact, else drawn here); returns the
    Markdown table. `labels` name the models in the `model` column (default: their folder names);
    `shard` (i, n) evaluates every n-th problem from the i-th."""
    from tops.engines import make_engine
    from tops.evaluate import contamination, evaluate_model, markdown_table
    from tops.models import resolve_model

    labels = list(labels or [])
    if labels and len(labels) != len(models):
        raise UserError(f"--label: {len(labels)} labels for {len(models)} models (give one per --model, or none)")
    used = [read_artifact(p, "problems") for p in train_problems]
    problems = take_shard(read_artifact(problems_path, "problems") if problems_path is not None
                          else draw_problems(cfg, exclude=used, heldout=True), shard)
    resolved = [resolve_model(m) for m in models]  # every name checked before any engine starts
    frames, usage = [], {}
    with timed() as clock:
        for model, label in zip(resolved, labels or [default_label(m) for m in models], strict=True):
            engine = make_engine(model, cfg.engine)
            try:
                frames.append(evaluate_model(problems, engine, label, cfg.eval.efforts, cfg.eval.seeds,
                                             cfg.eval.sampling, cfg.efforts.prompts, cfg.verify,
                                             _work_dir(out, shard), progress=progress,
                                             template_kwargs=cfg.efforts.template_kwargs, depth=cfg.generate.depth))
            finally:
                if callable(getattr(engine, "usage", None)):  # an API engine: the server's token counts
                    usage[label] = engine.usage()
                engine.close()
        evals = pd.concat(frames, ignore_index=True)
        write_artifact(evals, out, "eval")
    table = markdown_table(evals, pass_ks=cfg.eval.pass_k or None, budgets=cfg.eval.token_budgets or None,
                           maj_ks=cfg.eval.maj_k or None)
    flagged = contamination(problems, [q for u in used for q in u["question"]]) if used else []
    summary = {"models": models, "labels": labels or None, "problems": len(problems), "contaminated": len(flagged),
               "device_share": device_share(), **({"api_usage": usage} if usage else {})}
    inputs = {**({"problems": problems_path} if problems_path else {}),
              **{f"train_problems{i}": p for i, p in enumerate(train_problems)}}
    record_stage(out, "eval", config=stage("eval").config(cfg), inputs=inputs, rows=len(evals),
                 seconds=clock["seconds"], summary=summary)
    out.with_suffix(".md").write_text(table + "\n")
    return table + f"\n\ncontamination: {len(flagged)} of {len(problems)} held-out questions share a word " \
                   "8-gram with a training question"


@one_writer
def merge_shards(cfg: TopsConfig, out: Path, of: str, kind: str, parts: Sequence[Path], problems: Path,
                 every_problem: bool = True, remove_parts: bool = False, summary: dict | None = None) -> int:
    """The parts `--shard i/N` runs of stage `of` wrote, as one `kind` artifact with exactly one row
    per key in the problems' order (tops.gpus.merge_parts), and its record; every route that
    shards a stage ends here. `remove_parts`: the parts were scratch files beside `out`."""
    import pyarrow.parquet as pq

    from tops.gpus import merge_parts

    parts = [Path(p) for p in parts]
    order = read_artifact(problems, "problems")["problem_id"].tolist()
    with timed() as clock:
        filled = [read_artifact(p, kind) for p in parts if pq.read_metadata(p).num_rows]
        if not filled:
            raise UserError(f"no rows from any of the {len(parts)} shards of {of}")
        merged = merge_parts(filled, kind, order, every_problem=every_problem)
        write_artifact(merged, out, kind)
    record_stage(out, "merge", config=stage(of).config(cfg), inputs={"problems": problems},
                 rows=len(merged), seconds=clock["seconds"],
                 summary={"of": of, "parts": [p.name for p in parts], **(summary or {})})
    if remove_parts:
        for part in parts:
            part.unlink()
    return len(merged)
