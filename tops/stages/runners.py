"""File-level stage runners: read artifacts -> call the stage function -> write atomically ->
record the manifest. The CLI and the Prefect flow both call these, so a stage behaves the same
whichever way it is started. Inputs are validated before any engine starts or any byte is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

from tops.artifacts import output_lock, read_artifact, timed, write_artifact
from tops.artifacts import record_stage as _record_stage
from tops.config import TopsConfig, config_section
from tops.errors import EXIT_OUT_OF_MEMORY, UserError
from tops.gpus import device_share
from tops.launch import in_launched_process
from tops.layout import MANIFEST, default_label

console = Console(stderr=True)
EVAL_SEED_OFFSET = 7919  # held-out problems are drawn with a seed no training split uses


def record_stage(out: Path, stage: str, **record) -> None:
    """The stage's manifest record; a lock keeps records of concurrent stages (engine shards
    writing into one folder) from overwriting each other."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{MANIFEST}.lock", "w") as lock:
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
        if in_launched_process():
            return run(*args, **kwargs)
        with output_lock(signature.bind(*args, **kwargs).arguments["out"]):
            return run(*args, **kwargs)

    return locked


def _print_summary(stage: str, summary: dict) -> None:
    flat = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict | list))
    console.print(f"[bold green]{stage}[/] {flat}")


def draw_problems(cfg: TopsConfig, n: int | None = None, seed: int | None = None,
                  exclude: Sequence[Path] = (), heldout: bool = False) -> pd.DataFrame:
    """Problems from the configured source, none sharing an id with the `exclude` artifacts. The
    held-out split is drawn here only: eval.n_problems with a seed no training split uses."""
    from tops.domains import load_problems

    used = set().union(*(set(read_artifact(p, "problems")["problem_id"]) for p in exclude)) if exclude else set()
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


@one_writer
def run_problems(cfg: TopsConfig, out: Path, n: int | None = None, seed: int | None = None,
                 exclude: Sequence[Path] = (), heldout: bool = False, exact: bool = False) -> pd.DataFrame:
    """`exact` (the flow): fewer problems than asked is an error, not a smaller split."""
    with timed() as clock:
        problems = draw_problems(cfg, n, seed, exclude, heldout)
        # benchmarks are taken whole (or their own `n`); every other split has a count to meet
        wanted = (0 if cfg.eval.benchmarks else cfg.eval.n_problems) if heldout else cfg.problems.n if n is None else n
        if exact and len(problems) < wanted:
            raise UserError(f"{wanted} problems asked, the source has only {len(problems)} left after the "
                            "earlier splits")
        write_artifact(problems, out, "problems")
    record_stage(out, "problems", config={**config_section(cfg, "problems"), "n": len(problems), "seed": seed,
                                          "heldout": heldout},
                 inputs={f"exclude{i}": p for i, p in enumerate(exclude)}, rows=len(problems),
                 seconds=clock["seconds"])
    return problems


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
    record_stage(out, "generate", config=config_section(cfg, "model", "engine", "generate", "efforts"),
                 inputs={"problems": problems_path} if problems_path else None,
                 rows=summary["rows"], seconds=clock["seconds"], summary={**summary, "shard": f"{index}/{count}"})
    _print_summary("generate", summary)
    return summary


@one_writer
def run_verify(cfg: TopsConfig, in_path: Path, out: Path, progress: bool = True) -> dict:
    from tops.verify import verify_samples

    samples = read_artifact(in_path, "samples")
    with timed() as clock:
        verified, summary = verify_samples(samples, cfg.verify, progress=progress)
        write_artifact(verified, out, "verified")
    record_stage(out, "verify", config=config_section(cfg, "verify"), inputs={"samples": in_path},
                 rows=len(verified), seconds=clock["seconds"], summary=summary)
    _print_summary("verify", summary)
    return summary


@one_writer
def run_select(cfg: TopsConfig, in_path: Path, out: Path, seed_path: Path | None = None) -> dict:
    from tops.select import select_responses

    verified = read_artifact(in_path, "verified")
    seed_low = read_artifact(seed_path, "samples") if seed_path else None
    with timed() as clock:
        selected, summary = select_responses(verified, cfg.select, seed_low=seed_low)
        if selected.empty:
            raise UserError(f"{in_path}: no problem has a correct response; nothing to select")
        write_artifact(selected, out, "selected")
    inputs = {"verified": in_path, **({"seed": seed_path} if seed_path else {})}
    record_stage(out, "select", config=config_section(cfg, "select"), inputs=inputs,
                 rows=len(selected), seconds=clock["seconds"], summary=summary)
    _print_summary("select", summary)
    return summary


@one_writer
def run_pairs(cfg: TopsConfig, in_path: Path, out: Path) -> dict:
    from tops.pairs import build_pairs

    verified = read_artifact(in_path, "verified")
    with timed() as clock:
        pairs, summary = build_pairs(verified, cfg.pairs)
        if pairs.empty:
            raise UserError(f"{in_path}: no problem has both a correct and an incorrect response; no pairs")
        write_artifact(pairs, out, "pairs")
    record_stage(out, "pairs", config=config_section(cfg, "pairs"), inputs={"verified": in_path},
                 rows=len(pairs), seconds=clock["seconds"], summary=summary)
    _print_summary("pairs", summary)
    return summary


@one_writer
def run_mask(cfg: TopsConfig, in_path: Path, out: Path, judge=None, progress: bool = True) -> dict:
    from tops.masking import mask_responses

    selected = read_artifact(in_path, "selected")
    owned = judge is None and cfg.mask.enabled and cfg.mask.mode == "judge"
    if owned:  # the judge: mask.judge_model on mask.judge_engine, else the run's model and engine
        from tops.engines import make_engine
        from tops.models import resolve_model

        judge = make_engine(resolve_model(cfg.mask.judge_model or cfg.model.base), cfg.mask.judge_engine or cfg.engine)
    try:
        with timed() as clock:
            masked, summary = mask_responses(selected, cfg.mask, judge=judge, progress=progress)
            write_artifact(masked, out, "masked")
    finally:
        if owned:
            judge.close()
    record_stage(out, "mask", config=config_section(cfg, "mask"), inputs={"selected": in_path},
                 rows=len(masked), seconds=clock["seconds"], summary=summary)
    _print_summary("mask", summary)
    return summary


@one_writer
def run_train(cfg: TopsConfig, method: str, data: Path, kind: str, out: Path, base: str | None = None,
              argv: Sequence[str] | None = None) -> dict | None:
    """SFT or DPO into the model folder `out`. With train.num_processes > 1 the command `argv`
    (this process's arguments) reruns under `accelerate launch`, here and from the flow alike.
    Out of memory on any process: exit code EXIT_OUT_OF_MEMORY (the flow retries with half the
    micro-batch). Returns the summary (None in a process that only launched the others)."""
    from tops.models import resolve_model
    from tops.train import maybe_relaunch, train_dpo, train_sft
    from tops.train.common import is_main_process, is_out_of_memory

    if method not in ("sft", "dpo"):
        raise UserError(f"train method {method!r}: expected sft or dpo")
    if kind not in ("selected", "masked", "samples", "pairs"):
        raise UserError(f"--kind {kind!r}: expected selected, masked or samples")
    frame = read_artifact(data, kind)
    model = resolve_model(base or cfg.model.base)  # once, before any relaunch into several ranks
    summary = None
    with timed() as clock:
        try:
            if not maybe_relaunch(list(argv if argv is not None else sys.argv[1:]), cfg.train):
                train = train_dpo if method == "dpo" else train_sft
                summary = train(frame, model, out, cfg.train, cfg.efforts.prompts)
        except SystemExit as exc:  # the launched ranks failed: EXIT_OUT_OF_MEMORY if one ran out
            if exc.code == EXIT_OUT_OF_MEMORY:
                _exit_out_of_memory(out)
            raise
        except Exception as exc:  # a launched rank also marks it for its launcher (out_of_memory_guard)
            if not is_out_of_memory(exc):
                raise
            _exit_out_of_memory(out)
    if in_launched_process() or not is_main_process():
        return summary
    import json

    summary = summary or json.loads((out / "train_summary.json").read_text())
    record_stage(out, f"train-{method}", config=config_section(cfg, "train", "efforts"),
                 inputs={"data": data, **({"base": model} if Path(model).exists() else {})},
                 rows=len(frame), seconds=clock["seconds"],
                 summary={k: summary.get(k) for k in ("kind", "steps", "final_loss", "num_processes", "train_seconds")})
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
    record_stage(out, "seed", config=config_section(cfg, "seed"),
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
                          else draw_problems(cfg, exclude=train_problems, heldout=True), shard)
    resolved = [resolve_model(m) for m in models]  # every name checked before any engine starts
    frames = []
    with timed() as clock:
        for model, label in zip(resolved, labels or [default_label(m) for m in models], strict=True):
            engine = make_engine(model, cfg.engine)
            try:
                frames.append(evaluate_model(problems, engine, label, cfg.eval.efforts, cfg.eval.seeds,
                                             cfg.eval.sampling, cfg.efforts.prompts, cfg.verify,
                                             _work_dir(out, shard), progress=progress,
                                             template_kwargs=cfg.efforts.template_kwargs, depth=cfg.generate.depth))
            finally:
                engine.close()
        evals = pd.concat(frames, ignore_index=True)
        write_artifact(evals, out, "eval")
    table = markdown_table(evals, pass_ks=cfg.eval.pass_k or None, budgets=cfg.eval.token_budgets or None)
    flagged = contamination(problems, [q for u in used for q in u["question"]]) if used else []
    summary = {"models": models, "labels": labels or None, "problems": len(problems), "contaminated": len(flagged),
               "device_share": device_share()}
    inputs = {**({"problems": problems_path} if problems_path else {}),
              **{f"train_problems{i}": p for i, p in enumerate(train_problems)}}
    record_stage(out, "eval", config=config_section(cfg, "eval"), inputs=inputs, rows=len(evals),
                 seconds=clock["seconds"], summary=summary)
    out.with_suffix(".md").write_text(table + "\n")
    return table + f"\n\ncontamination: {len(flagged)} of {len(problems)} held-out questions share a word " \
                   "8-gram with a training question"
