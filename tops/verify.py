"""The verify stage: read each response's final answer and check it against the gold answer,
with the checker `verify.checker` names (tops.checkers: its contract, the built-ins `math`,
`exact`, `choice` and installed ones).

A checker's cheap verdicts are taken here; what it cannot decide cheaply (for `math`: anything
but plain numbers and equal text, which go to math-verify) runs in worker processes this module
manages itself, because math-verify's own SIGALRM timeouts only work on a main thread and a
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

from tops.answers import MAX_ANSWER_CHARS
from tops.artifacts import check_columns
from tops.checkers import fallback_verdict, get_checker, math_verify_equal, numeric_verdict  # noqa: F401 - re-exported
from tops.config import VerifyConfig
from tops.thinking import cut_off_in_thinking

STATUSES = ("ok", "no_answer", "timeout", "error")

# Items per message to a worker: big enough to amortise the round trip, small enough that the
# batch's tail is shared out evenly.
_MAX_CHUNK = 32

Job = tuple[int, str, str]  # (job id, gold answer, predicted answer)


# ---------------------------------------------------------------- worker pool


def _worker_main(conn: Connection, checker_name: str = "math") -> None:
    """Check chunks of jobs with the checker's `equal`, sending one (job id, correct, status,
    finished_at) per item.

    `finished_at` is this process's monotonic clock, the same clock as the parent's on Linux
    and macOS: the parent starts the next item's deadline from it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": we know
    checker = get_checker(checker_name)  # installed code, by name
    conn.send("ready")
    while (chunk := conn.recv()) is not None:
        for job_id, gold, pred in chunk:
            try:
                correct, status = bool(checker.equal(gold, pred)), "ok"
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

    def __init__(self, ctx: mp.context.BaseContext, checker: str = "math"):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn, checker), daemon=True,
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
                   record: Callable[[int, bool, str], None], checker: str = "math") -> None:
    """Run every job through the checker's `equal` in `workers` processes, calling `record` once
    per job.

    A job past `timeout_s` is recorded as timeout and its worker killed and replaced; a worker
    that dies mid-job records that job as error. Either way the rest of the chunk is requeued.
    """
    ctx = _context()
    chunk_size = max(1, min(_MAX_CHUNK, math.ceil(len(jobs) / (workers * 4))))
    pending = deque(jobs[i : i + chunk_size] for i in range(0, len(jobs), chunk_size))
    pool = [_Worker(ctx, checker) for _ in range(min(workers, len(pending)))]

    def replace(index: int, status: str) -> None:
        worker = pool[index]
        job_id = worker.chunk.popleft()[0]
        if worker.chunk:
            pending.appendleft(list(worker.chunk))
        worker.kill()
        record(job_id, False, status)
        pool[index] = _Worker(ctx, checker)

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
                        pool[index] = _Worker(ctx, checker)
            now = time.monotonic()
            for index, worker in enumerate(pool):
                if worker.chunk and now >= worker.item_started + timeout_s:
                    replace(index, "timeout")
    finally:
        for worker in pool:
            worker.stop()


# ---------------------------------------------------------------- the stage


def verify_samples(df: pd.DataFrame, cfg: VerifyConfig, progress: bool = True,
                   row_checkers: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Add `pred`, `correct`, `verify_status` (and `checker_disagree` with a second checker) to
    a samples frame, same rows in the same order; return it with a summary.

    Each row is checked by `verify.checker`, or by `row_checkers[i]` when given (an evaluation
    mixing maths and multiple-choice benchmarks). Errors and timeouts score incorrect, the status
    says which. A response with no final answer, cut off or not, is `no_answer`.
    """
    check_columns(df, "samples", "samples")
    start = time.perf_counter()
    rows = len(df)
    names = list(row_checkers) if row_checkers is not None else [cfg.checker] * rows
    checkers = {name: get_checker(name) for name in dict.fromkeys(names)}
    preds: list[str | None] = [None] * rows
    golds: list[str | None] = [None] * rows
    correct = np.zeros(rows, dtype=bool)
    statuses = np.full(rows, "ok", dtype=object)
    bar = tqdm(total=rows, desc="verify", unit="check", disable=not progress, dynamic_ncols=True)

    def record(position: int, is_correct: bool, status: str) -> None:
        correct[position] = is_correct
        statuses[position] = status
        bar.update(1)

    # Samples of one problem often agree on the answer: check each (checker, gold, pred) once.
    positions_by_pair: dict[tuple[str, str, str], list[int]] = {}
    gold_of: dict[tuple[str, str], str | None] = {}
    for position, (answer, response) in enumerate(zip(df["answer"], df["response"], strict=True)):
        name = names[position]
        checker = checkers[name]
        try:
            pred = preds[position] = None if cut_off_in_thinking(response) else checker.extract(
                response, cfg.answer_phrases)
            if pred is None:
                record(position, False, "no_answer")
                continue
            if not isinstance(pred, str):  # the contract: text or None
                preds[position] = None
                raise TypeError(f"checker {name} extracted a {type(pred).__name__}")
            if (name, answer) not in gold_of:
                gold_of[name, answer] = None  # stays None when the checker cannot read it
                gold_of[name, answer] = checker.gold(answer)
            gold = golds[position] = gold_of[name, answer]
            if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
                record(position, False, "error")  # no one writes such an answer: not judged
                continue
            verdict = checker.quick(gold, pred)
        except Exception:  # the checker cannot read this row (e.g. a gold that is no option letter)
            record(position, False, "error")
            continue
        if verdict is None:
            positions_by_pair.setdefault((name, gold, pred), []).append(position)
        else:
            record(position, bool(verdict), "ok")

    try:
        for name in checkers:
            pairs = [positions for (pair_checker, _, _), positions in positions_by_pair.items() if pair_checker == name]
            jobs = [(job_id, golds[positions[0]], preds[positions[0]]) for job_id, positions in enumerate(pairs)]
            if jobs:
                def record_job(job_id: int, is_correct: bool, status: str, pairs=pairs) -> None:
                    for position in pairs[job_id]:
                        record(position, is_correct, status)

                _check_in_pool(jobs, cfg.workers or os.cpu_count() or 1, cfg.timeout_s, record_job, name)
    finally:
        bar.close()

    out = df.copy()
    out["pred"] = preds
    out["correct"] = correct
    out["verify_status"] = statuses.tolist()
    disagreements = None
    if cfg.second_checker == "numeric":
        disagree = np.array([
            status == "ok" and name == "math" and fallback_verdict(gold, pred) != is_correct
            for name, gold, pred, is_correct, status in zip(names, golds, preds, correct, statuses, strict=True)
        ], dtype=bool)
        out["checker_disagree"] = disagree
        disagreements = int(disagree.sum())

    seconds = time.perf_counter() - start
    summary = {
        "rows": rows,
        "checkers": {name: names.count(name) for name in checkers},
        "correct": int(correct.sum()),
        "accuracy": round(float(correct.mean()), 4) if rows else 0.0,
        **{status: int((statuses == status).sum()) for status in STATUSES},
        "truncated": int((df["finish_reason"] == "length").sum()),
        "disagreements": disagreements,
        "seconds": round(seconds, 3),
        "checks_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
    }
    return out, summary
