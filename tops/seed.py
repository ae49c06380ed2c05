"""Seed data the way the paper makes it: a teacher answers each seed problem under the three
effort prompts; keep problems answered correctly at every effort; re-order each problem's
responses by length (shortest = low); keep problems whose pairwise gaps reach a minimum.

Teachers: any engine (vLLM offline or an OpenAI-compatible endpoint), or the `arith` domain's
programmatic teacher, which writes the three efforts exactly.
"""

from __future__ import annotations

import pandas as pd

from tops.config import EFFORT_ORDER, GenerateConfig, SeedConfig, VerifyConfig
from tops.domains.arith import checked_expression, teacher_response
from tops.errors import UserError


def programmatic_responses(problems: pd.DataFrame) -> pd.DataFrame:
    """The arith teacher's three responses per problem (samples-shaped, sample_idx 0)."""
    if "operands" not in problems.columns:
        raise UserError("the programmatic teacher needs arith problems (column 'operands' is missing)")
    rows = []
    for record in problems.to_dict("records"):
        try:
            values, ops = checked_expression(record["operands"], record.get("ops"))
        except ValueError as exc:
            raise UserError(f"problem {str(record['problem_id'])[:80]!r}: {exc}") from None
        for effort in EFFORT_ORDER:
            response = teacher_response(values, ops, effort)
            rows.append({**record, "effort": effort, "sample_idx": 0, "response": response,
                         "finish_reason": "stop"})
    return pd.DataFrame(rows)


def engine_responses(problems: pd.DataFrame, engine, cfg: SeedConfig, prompts: dict[str, str],
                     out_dir, verify_cfg: VerifyConfig) -> pd.DataFrame:
    """k samples per effort from a teacher engine, verified; one correct response per
    (problem, effort) is kept (the first correct sample)."""
    from tops.generate import generate_samples
    from tops.verify import verify_samples

    gen_cfg = GenerateConfig(efforts=list(EFFORT_ORDER), n_samples=cfg.samples_per_effort,
                             sampling=cfg.sampling)
    samples, _ = generate_samples(problems, engine, gen_cfg, prompts, out_dir / "teacher_samples.parquet",
                                  model_name=cfg.teacher, progress=True)
    verified, _ = verify_samples(samples, verify_cfg, progress=True)
    correct = verified[verified["correct"]].sort_values(["problem_id", "effort", "sample_idx"])
    return correct.drop_duplicates(["problem_id", "effort"]).drop(columns=["pred", "correct", "verify_status"])


def apply_seed_rules(responses: pd.DataFrame, tokenizer, min_gap_tokens: int) -> tuple[pd.DataFrame, dict]:
    """Keep problems with a response at every effort, re-label efforts by length, drop
    problems whose neighbouring lengths differ by less than `min_gap_tokens`."""
    responses = responses.copy()
    counts = tokenizer(responses["response"].tolist(), add_special_tokens=False)["input_ids"]
    responses["n_tokens"] = [len(ids) for ids in counts]
    problems_in = responses["problem_id"].nunique()
    per_problem = responses.groupby("problem_id")["effort"].nunique()
    complete_ids = per_problem[per_problem == len(EFFORT_ORDER)].index
    complete = responses[responses["problem_id"].isin(complete_ids)]
    if complete.empty:
        raise UserError(f"seed: no problem was answered correctly at every effort ({problems_in} problems in)")

    complete = complete.rename(columns={"effort": "teacher_effort"}).sort_values(
        ["problem_id", "n_tokens", "teacher_effort"], kind="stable")
    complete["effort"] = list(EFFORT_ORDER) * (len(complete) // len(EFFORT_ORDER))
    relabelled = int((complete["effort"] != complete["teacher_effort"]).sum())
    lengths = complete.pivot(index="problem_id", columns="effort", values="n_tokens")[list(EFFORT_ORDER)]
    gaps = lengths.diff(axis=1).iloc[:, 1:].min(axis=1)
    wide_ids = gaps[gaps >= min_gap_tokens].index
    seed = complete[complete["problem_id"].isin(wide_ids)].reset_index(drop=True)
    summary = {
        "problems_in": int(problems_in),
        "dropped_not_correct_at_every_effort": int(problems_in - len(complete_ids)),
        "dropped_gap_below_min": int(len(complete_ids) - len(wide_ids)),
        "kept": int(len(wide_ids)),
        "responses_relabelled_by_length": relabelled,
        "min_gap_tokens": min_gap_tokens,
        "mean_tokens_by_effort": seed.groupby("effort")["n_tokens"].mean().round(1).to_dict(),
    }
    if seed.empty:
        raise UserError(f"seed: no problem survived the seed rules ({summary})")
    return seed, summary
