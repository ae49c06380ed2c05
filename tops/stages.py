"""File-level stage runners: read artifacts -> call the stage function -> write atomically ->
record the manifest. The CLI and the Prefect flow both call these, so a stage behaves the same
whichever way it is started. Inputs are validated before any engine starts or any byte is written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
from rich.console import Console

from tops.artifacts import read_artifact, record_stage, timed, write_artifact
from tops.config import TopsConfig, config_section
from tops.errors import UserError

console = Console(stderr=True)


def _print_summary(stage: str, summary: dict) -> None:
    flat = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict | list))
    console.print(f"[bold green]{stage}[/] {flat}")


def run_problems(cfg: TopsConfig, out: Path, n: int | None = None, seed: int | None = None) -> pd.DataFrame:
    from tops.domains import load_problems

    with timed() as clock:
        problems = load_problems(cfg.problems, n=n, seed=seed)
        write_artifact(problems, out, "problems")
    record_stage(out, "problems", config=config_section(cfg, "problems"), rows=len(problems),
                 seconds=clock["seconds"])
    return problems


def run_generate(cfg: TopsConfig, out: Path, problems_path: Path | None = None, model: str | None = None,
                 engine=None, progress: bool = True) -> dict:
    """Sample problems (from a file, else drawn from the configured source) at every effort."""
    from tops.generate import generate_samples
    from tops.models import resolve_model

    if problems_path is not None:
        problems = read_artifact(problems_path, "problems")
    else:
        from tops.domains import load_problems

        problems = load_problems(cfg.problems)
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
                                          model_name=model_name, progress=progress)
        finally:
            if owned:
                with contextlib.suppress(Exception):
                    engine.close()
    record_stage(out, "generate", config=config_section(cfg, "model", "engine", "generate", "efforts"),
                 inputs={"problems": problems_path} if problems_path else None,
                 rows=summary["rows"], seconds=clock["seconds"], summary=summary)
    _print_summary("generate", summary)
    return summary


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


def run_seed(cfg: TopsConfig, out: Path, problems_path: Path | None = None,
             base_model: str | None = None) -> dict:
    """Seed data from the configured teacher, with the paper's rules (tops.seed)."""
    from tops.domains import load_problems
    from tops.models import load_tokenizer, resolve_model
    from tops.seed import apply_seed_rules, engine_responses, programmatic_responses

    problems = (read_artifact(problems_path, "problems") if problems_path
                else load_problems(cfg.problems, n=cfg.flow.seed_problems))
    tokenizer = load_tokenizer(base_model or resolve_model(cfg.model.base))
    with timed() as clock:
        if cfg.seed.teacher == "arith":
            responses = programmatic_responses(problems)
        else:
            from tops.engines import make_engine

            engine = make_engine(resolve_model(cfg.seed.teacher), cfg.seed.engine)
            try:
                responses = engine_responses(problems, engine, cfg.seed, cfg.efforts.prompts, out.parent, cfg.verify)
            finally:
                engine.close()
        seed, summary = apply_seed_rules(responses, tokenizer, cfg.seed.min_gap_tokens)
        write_artifact(seed, out, "samples")
    record_stage(out, "seed", config=config_section(cfg, "seed"),
                 inputs={"problems": problems_path} if problems_path else None,
                 rows=len(seed), seconds=clock["seconds"], summary=summary)
    _print_summary("seed", summary)
    return summary


EVAL_SEED_OFFSET = 7919  # held-out problems are drawn with a seed no training split uses


def run_eval(cfg: TopsConfig, out: Path, models: list[str], train_problems: list[Path],
             progress: bool = True) -> str:
    """Evaluate models on held-out problems; returns the Markdown table."""
    from tops.domains import load_problems
    from tops.engines import make_engine
    from tops.evaluate import contamination, evaluate_model, markdown_table
    from tops.models import resolve_model

    used = [read_artifact(p, "problems") for p in train_problems]
    used_ids = set().union(*(set(u["problem_id"]) for u in used)) if used else set()
    problems = load_problems(cfg.problems, n=cfg.eval.n_problems, seed=cfg.run.seed + EVAL_SEED_OFFSET,
                             exclude=used_ids)
    resolved = [resolve_model(m) for m in models]  # every name checked before any engine starts
    frames = []
    with timed() as clock:
        for name, model in zip(models, resolved, strict=True):
            engine = make_engine(model, cfg.engine)
            try:
                frames.append(evaluate_model(problems, engine, Path(name).name, cfg.eval.efforts, cfg.eval.seeds,
                                             cfg.eval.sampling, cfg.efforts.prompts, cfg.verify, out.parent,
                                             progress=progress))
            finally:
                engine.close()
        evals = pd.concat(frames, ignore_index=True)
        write_artifact(evals, out, "eval")
    table = markdown_table(evals)
    flagged = contamination(problems, [q for u in used for q in u["question"]]) if used else []
    summary = {"models": models, "problems": len(problems), "contaminated": len(flagged)}
    record_stage(out, "eval", config=config_section(cfg, "eval"), rows=len(evals), seconds=clock["seconds"],
                 summary=summary)
    out.with_suffix(".md").write_text(table + "\n")
    return table + f"\n\ncontamination: {len(flagged)} of {len(problems)} held-out questions share a word " \
                   "8-gram with a training question"
