"""The verify stage: read each response's final answer and check it against the gold answer.

Two plain numbers are decided here by exact numeric comparison: math-verify is lenient there
(tiny values round together, 50% equals 0.5). Everything else goes to math-verify
(`verify(parse(gold), parse(pred))`, gold first) in worker processes this module manages
itself, because math-verify's own SIGALRM timeouts only work on a main thread and a
pathological answer such as `9^{9^{9^{9}}}` hangs sympy inside C code, where only killing the
process stops it. Each item gets a deadline; a worker past it is killed and replaced, and the
rest of its chunk goes back to the queue.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tops.answers import (
    MAX_ANSWER_CHARS,
    braces_balanced,
    extract_answer,
    gold_answer,
    normalize_text,
    numbers_equal,
    parse_number,
    strip_math_delimiters,
)
from tops.artifacts import check_columns
from tops.config import VerifyConfig
from tops.thinking import cut_off_in_thinking

STATUSES = ("ok", "no_answer", "timeout", "error")

# Items per message to a worker: big enough to amortise the round trip, small enough that the
# batch's tail is shared out evenly.
_MAX_CHUNK = 32

Job = tuple[int, str, str]  # (job id, gold answer, predicted answer)


# ---------------------------------------------------------------- comparisons


def numeric_verdict(gold: str, pred: str) -> bool | None:
    """Exact numeric comparison when both answers are plain numbers; None otherwise."""
    gold_number, pred_number = parse_number(gold), parse_number(pred)
    if gold_number is None or pred_number is None:
        return None
    return numbers_equal(gold_number, pred_number)


def fallback_verdict(gold: str, pred: str) -> bool:
    """The plain checker on its own (second_checker "numeric"): numbers, else exact text."""
    verdict = numeric_verdict(gold, pred)
    return verdict if verdict is not None else normalize_text(gold) == normalize_text(pred)


def _as_latex(answer: str) -> str:
    """An extracted answer in the form math-verify extracts from: a box, or `$...$` when its
    braces do not balance."""
    text = strip_math_delimiters(answer)
    return f"\\boxed{{{text}}}" if braces_balanced(text) else f"${text}$"


def math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify's verdict, with no timeout of its own: run it where a hang can be killed.

    Raises when math-verify fails or finds nothing in the gold answer (the row cannot be judged).
    """
    from math_verify import parse, verify  # imported on use: sympy is slow to import

    gold_parsed = parse(_as_latex(gold), parsing_timeout=None, raise_on_error=True)
    if not gold_parsed:
        raise ValueError("math-verify found no expression in the gold answer")
    pred_parsed = parse(_as_latex(pred), parsing_timeout=None, raise_on_error=True)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True))


# ---------------------------------------------------------------- worker pool


def _worker_main(conn: Connection) -> None:
    """Check chunks of jobs, sending one (job id, correct, status, finished_at) per item.

    `finished_at` is this process's monotonic clock, the same clock as the parent's on Linux
    and macOS: the parent starts the next item's deadline from it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": we know
    conn.send("ready")
    while (chunk := conn.recv()) is not None:
        for job_id, gold, pred in chunk:
            try:
                correct, status = math_verify_equal(gold, pred), "ok"
            except Exception:
                correct, status = False, "error"
            conn.send((job_id, correct, status, time.monotonic()))


def _context() -> mp.context.BaseContext:
    """forkserver where available: safe with a threaded caller, and a killed worker is replaced
    without importing sympy again because the server has math-verify imported already. (Each
    worker still re-imports the caller's main script, as under spawn: keep it light.)"""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify", "tops.verify"])
        return ctx
    return mp.get_context("spawn")


class _Worker:
    """One checker process and the chunk it is working through."""

    def __init__(self, ctx: mp.context.BaseContext):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn,), daemon=True,
                                   name="tops-verify")
        self.process.start()
        child_conn.close()
        self.ready = False
        self.chunk: deque[Job] = deque()
        self.item_started = 0.0

    def assign(self, chunk: list[Job]) -> None:
        self.chunk = deque(chunk)
        self.item_started = time.monotonic()
        self.conn.send(chunk)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _check_in_pool(jobs: list[Job], workers: int, timeout_s: float,
                   record: Callable[[int, bool, str], None]) -> None:
    """Run every job through math-verify in `workers` processes, calling `record` once per job.

    A job past `timeout_s` is recorded as timeout and its worker killed and replaced; a worker
    that dies mid-job records that job as error. Either way the rest of the chunk is requeued.
    """
    ctx = _context()
    chunk_size = max(1, min(_MAX_CHUNK, math.ceil(len(jobs) / (workers * 4))))
    pending = deque(jobs[i : i + chunk_size] for i in range(0, len(jobs), chunk_size))
    pool = [_Worker(ctx) for _ in range(min(workers, len(pending)))]

    def replace(index: int, status: str) -> None:
        worker = pool[index]
        job_id = worker.chunk.popleft()[0]
        if worker.chunk:
            pending.appendleft(list(worker.chunk))
        worker.kill()
        record(job_id, False, status)
        pool[index] = _Worker(ctx)

    try:
        while pending or any(worker.chunk for worker in pool):
            for worker in pool:
                if worker.ready and not worker.chunk and pending:
                    worker.assign(pending.popleft())
            deadlines = [worker.item_started + timeout_s for worker in pool if worker.chunk]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready_conns = wait([worker.conn for worker in pool], timeout=wait_s)
            for index, worker in enumerate(pool):
                if worker.conn not in ready_conns:
                    continue
                try:
                    while worker.conn.poll():
                        message = worker.conn.recv()
                        if message == "ready":
                            worker.ready = True
                            continue
                        job_id, correct, status, finished_at = message
                        worker.chunk.popleft()
                        worker.item_started = finished_at
                        record(job_id, correct, status)
                except (EOFError, OSError):
                    if not worker.ready:
                        raise RuntimeError("a verify worker process failed to start") from None
                    if worker.chunk:
                        replace(index, "error")
                    else:
                        worker.kill()
                        pool[index] = _Worker(ctx)
            now = time.monotonic()
            for index, worker in enumerate(pool):
                if worker.chunk and now >= worker.item_started + timeout_s:
                    replace(index, "timeout")
    finally:
        for worker in pool:
            worker.stop()


# ---------------------------------------------------------------- the stage


def verify_samples(df: pd.DataFrame, cfg: VerifyConfig,
                   progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Add `pred`, `correct`, `verify_status` (and `checker_disagree` with a second checker) to
    a samples frame, same rows in the same order; return it with a summary.

    Errors and timeouts score incorrect, the status says which. A response with no final
    answer, cut off or not, is `no_answer`.
    """
    check_columns(df, "samples", "samples")
    start = time.perf_counter()
    rows = len(df)
    preds: list[str | None] = [None] * rows
    correct = np.zeros(rows, dtype=bool)
    statuses = np.full(rows, "ok", dtype=object)
    golds = [gold_answer(answer) for answer in df["answer"]]
    bar = tqdm(total=rows, desc="verify", unit="check", disable=not progress, dynamic_ncols=True)

    def record(position: int, is_correct: bool, status: str) -> None:
        correct[position] = is_correct
        statuses[position] = status
        bar.update(1)

    # Samples of one problem often agree on the answer: check each (gold, pred) pair once.
    positions_by_pair: dict[tuple[str, str], list[int]] = {}
    for position, response in enumerate(df["response"]):
        pred = None if cut_off_in_thinking(response) else extract_answer(response, cfg.answer_phrases)
        preds[position] = pred
        if pred is None:
            record(position, False, "no_answer")
            continue
        gold = golds[position]
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            record(position, False, "error")  # no one writes such an answer: not judged
            continue
        verdict = numeric_verdict(gold, pred)
        if verdict is None and normalize_text(gold) == normalize_text(pred):
            verdict = True
        if verdict is None:
            positions_by_pair.setdefault((gold, pred), []).append(position)
        else:
            record(position, verdict, "ok")
    pairs = list(positions_by_pair.values())
    jobs = [(job_id, golds[positions[0]], preds[positions[0]]) for job_id, positions in enumerate(pairs)]

    def record_job(job_id: int, is_correct: bool, status: str) -> None:
        for position in pairs[job_id]:
            record(position, is_correct, status)

    try:
        if jobs:
            _check_in_pool(jobs, cfg.workers or os.cpu_count() or 1, cfg.timeout_s, record_job)
    finally:
        bar.close()

    out = df.copy()
    out["pred"] = preds
    out["correct"] = correct
    out["verify_status"] = statuses.tolist()
    disagreements = None
    if cfg.second_checker == "numeric":
        disagree = np.array([
            status == "ok" and fallback_verdict(gold, pred) != is_correct
            for gold, pred, is_correct, status in zip(golds, preds, correct, statuses, strict=True)
        ], dtype=bool)
        out["checker_disagree"] = disagree
        disagreements = int(disagree.sum())

    seconds = time.perf_counter() - start
    summary = {
        "rows": rows,
        "correct": int(correct.sum()),
        "accuracy": round(float(correct.mean()), 4) if rows else 0.0,
        **{status: int((statuses == status).sum()) for status in STATUSES},
        "truncated": int((df["finish_reason"] == "length").sum()),
        "disagreements": disagreements,
        "seconds": round(seconds, 3),
        "checks_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
    }
    return out, summary
