"""Multi-depth sampling: problems x efforts x n samples -> samples artifact.

Work is cut into shards of (problem, effort) prompts; each shard is one batched engine call
and one atomic Parquet file named by the fingerprint of its work, so a killed run started
again redoes only the unfinished shard and never duplicates a row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tops.artifacts import MAX_TEXT_CHARS, ShardedOutput, fingerprint, output_lock
from tops.config import GenerateConfig, SamplingConfig
from tops.depth import generate_with_depth
from tops.engines import Engine, Request
from tops.errors import UserError


def build_requests(problems: pd.DataFrame, efforts: list[str], prompts: dict[str, str],
                   template_kwargs: dict[str, dict] | None = None) -> list[Request]:
    """One chat per (problem, effort), problem-major: system = effort prompt (none when empty),
    user = question; an effort's chat-template arguments (efforts.template_kwargs) go along."""
    unknown = [e for e in efforts if e not in prompts]
    if unknown:
        raise UserError(f"unknown effort '{unknown[0]}' (known: {', '.join(sorted(prompts))})")
    template_kwargs = template_kwargs or {}
    return [
        Request(
            messages=([{"role": "system", "content": prompts[effort]}] if prompts[effort] else [])
            + [{"role": "user", "content": question}],
            meta={"row": i, "effort": effort, "problem_id": problem_id},  # the id names it in errors
            chat_template_kwargs=dict(template_kwargs.get(effort, {})),
        )
        for i, (problem_id, question) in enumerate(zip(_problem_ids(problems),
                                                       problems["question"].tolist(), strict=True))
        for effort in efforts
    ]


def _problem_ids(problems: pd.DataFrame) -> list[str]:
    """The ids that name a request in errors; a bare frame of questions (scripts, tests) by its row."""
    if "problem_id" in problems.columns:
        return problems["problem_id"].astype(str).tolist()
    return [f"row {i}" for i in range(len(problems))]


def _shard_rows(problems: pd.DataFrame, requests: list[Request], completions, model_name: str) -> pd.DataFrame:
    rows = []
    records = problems.to_dict("records")
    for request, samples in zip(requests, completions, strict=True):
        base = records[request.meta["row"]]
        for idx, completion in enumerate(samples):
            # Cut at the limit every artifact reader applies (tops.artifacts), so what generate
            # writes its own readers accept; a cut response counts as cut by length.
            cut = len(completion.text) > MAX_TEXT_CHARS
            rows.append({
                **base,
                "effort": request.meta["effort"],
                "sample_idx": idx,
                "response": completion.text[:MAX_TEXT_CHARS],
                "n_tokens": completion.n_tokens,
                "finish_reason": "length" if cut else completion.finish_reason,
                "depth_control": completion.depth_control,
                "n_injected": completion.n_injected,
                "injected": json.dumps(list(completion.injected)),  # JSON list of the appended strings
                "model": model_name,
            })
    return pd.DataFrame(rows)


def _generate_shard(engine: Engine, shard: list[Request], n_by_effort: dict[str, int],
                    sampling: SamplingConfig, depth: dict) -> list[list]:
    """One engine call for the whole shard, each request with its effort's sample count: vLLM
    keeps its batch full across efforts instead of draining one effort's tail before the next
    (BENCHMARKS.md, "Sampling in one call"). Completions come back in request order."""
    counts = [n_by_effort[request.meta["effort"]] for request in shard]
    return generate_with_depth(engine, shard, counts, sampling, depth)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
        TextColumn("{task.fields[tok_s]:>7.1f} tok/s"), TimeElapsedColumn(), disable=not enabled,
    )


def generate_samples(
    problems: pd.DataFrame,
    engine: Engine,
    cfg: GenerateConfig,
    prompts: dict[str, str],
    out: str | Path,
    model_name: str,
    progress: bool = True,
    template_kwargs: dict[str, dict] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Sample every problem at every configured effort; resumable through shards in `out`."""
    if problems.empty:
        raise UserError("no problems to generate for (empty input)")
    if problems["problem_id"].duplicated().any():
        dup = problems.loc[problems["problem_id"].duplicated(), "problem_id"].iloc[0]
        raise UserError(f"problem_id {str(dup)[:80]!r} appears more than once in the input")
    requests = build_requests(problems, cfg.efforts, prompts, template_kwargs)
    settings = {"model": model_name, "n": cfg.n_samples, "sampling": cfg.sampling.model_dump(),
                "prompts": {e: prompts[e] for e in cfg.efforts}}
    n_by_effort = {e: cfg.samples_for(e) for e in cfg.efforts}
    if cfg.n_samples_by_effort:  # only when set, so shards of earlier runs keep their keys
        settings["n_by_effort"] = n_by_effort
    kwargs = {e: template_kwargs[e] for e in cfg.efforts if e in (template_kwargs or {})}
    if kwargs:  # only when set, so shards of runs without template arguments keep their keys
        settings["template_kwargs"] = kwargs
    depth = {e: cfg.depth[e] for e in cfg.efforts if e in cfg.depth}
    if depth:  # only when set, so shards of runs without depth controls keep their keys
        settings["depth"] = {e: c.model_dump() for e, c in depth.items()}
    shards = [requests[i:i + cfg.shard_size] for i in range(0, len(requests), cfg.shard_size)]
    plan = []
    for index, shard in enumerate(shards):
        ids = problems["problem_id"].iloc[[r.meta["row"] for r in shard]].tolist()
        plan.append((index, fingerprint([settings, ids, [r.meta["effort"] for r in shard]])))

    output = ShardedOutput(out, "samples")
    started = time.perf_counter()
    generated_tokens = 0
    with output_lock(out):  # one writer per output: a second one fails, not races it
        resumed = sum(output.is_done(i, k) for i, k in plan)
        with _progress(progress) as bar:
            task = bar.add_task("generate", total=len(requests), tok_s=0.0)
            for (index, key), shard in zip(plan, shards, strict=True):
                if output.is_done(index, key):
                    bar.advance(task, len(shard))
                    continue
                completions = _generate_shard(engine, shard, n_by_effort, cfg.sampling, depth)
                frame = _shard_rows(problems, shard, completions, model_name)
                output.write(index, key, frame)
                generated_tokens += int(frame["n_tokens"].sum())
                elapsed = time.perf_counter() - started
                bar.update(task, advance=len(shard), tok_s=generated_tokens / max(elapsed, 1e-9))
        samples = output.finalize(plan)
    elapsed = time.perf_counter() - started
    summary = {
        "problems": int(len(problems)),
        "rows": int(len(samples)),
        "efforts": list(cfg.efforts),
        "n_samples": cfg.n_samples,
        **({"n_samples_by_effort": n_by_effort} if cfg.n_samples_by_effort else {}),
        "shards": len(plan),
        "shards_resumed": int(resumed),
        "generated_tokens": generated_tokens,
        "tokens_per_s": round(generated_tokens / max(elapsed, 1e-9), 1),
        "truncated": int((samples["finish_reason"] == "length").sum()),
        "mean_tokens_by_effort": samples.groupby("effort")["n_tokens"].mean().round(1).to_dict(),
    }
    if callable(getattr(engine, "usage", None)):  # an API engine: the server's own token counts
        summary["api_usage"] = engine.usage()
    return samples, summary
