"""vLLM on CPU: the engine core in its own process (vLLM's default) vs in the stage's process.

vLLM V1 runs its engine core (scheduler and model) in a separate process that it starts with
multiprocessing's spawn: the new process imports vLLM and torch again before it loads the model.
With VLLM_ENABLE_V1_MULTIPROCESSING=0 the core runs in the calling process. A stage child starts
one engine, so what matters is start-up, shutdown and generation speed together. Each contender
runs in its own child process on identical requests, alternating (A B B A ... for --rounds), so a
drifting load on the host hits both sides alike; printed are start, generation tokens/s and
shutdown per run, the medians, and in-process/separate ratios.

    .venv/bin/python bench/vllm_inprocess.py --model data/runs/demo/models/tag [--problems 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {"separate": "1", "in-process": "0"}  # VLLM_ENABLE_V1_MULTIPROCESSING


def contender(model: str, problems: int) -> dict:
    from vllm_compile import sample_in_shards  # this folder is on sys.path when the bench runs

    from tops.config import load_config
    from tops.domains import load_problems
    from tops.engines import make_engine
    from tops.generate import build_requests

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"model.base={model}"])
    rows = load_problems(cfg.problems, n=problems, seed=7)
    requests = build_requests(rows, list(cfg.generate.efforts), cfg.efforts.prompts)
    counts = [cfg.generate.samples_for(r.meta["effort"]) for r in requests]
    started = time.perf_counter()
    engine = make_engine(model, cfg.engine)
    start_s = time.perf_counter() - started
    tokens, seconds = sample_in_shards(engine, requests, counts, cfg)
    started = time.perf_counter()
    engine.close()
    close_s = time.perf_counter() - started
    return {"start_s": start_s, "tokens": tokens, "tokens_per_s": tokens / seconds, "close_s": close_s}


def run_child(model: str, problems: int, mode: str) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": MODES[mode]}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--model", model, "--problems", str(problems), "--child"],
                         capture_output=True, text=True, check=False, env=env)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(line[len("RESULT "):]), "process_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder, e.g. a demo run's tag model")
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, alternating A B B A")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(contender(args.model, args.problems)), flush=True)
        return
    order = [m for i in range(args.rounds) for m in (list(MODES) if i % 2 == 0 else list(MODES)[::-1])]
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for mode in order:
        r = run_child(args.model, args.problems, mode)
        results[mode].append(r)
        print(f"{mode:>10}: start {r['start_s']:5.1f} s, {r['tokens']} tokens at {r['tokens_per_s']:6.1f} tokens/s, "
              f"close {r['close_s']:4.1f} s, whole process {r['process_s']:6.1f} s", flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("start_s", "tokens_per_s", "close_s", "process_s")}
           for m, rs in results.items()}
    a, b = med["in-process"], med["separate"]
    print(f"medians: separate start {b['start_s']:.1f} s / close {b['close_s']:.1f} s / {b['tokens_per_s']:.1f} tokens/s; "
          f"in-process start {a['start_s']:.1f} s / close {a['close_s']:.1f} s / {a['tokens_per_s']:.1f} tokens/s")
    print(f"in-process/separate: start {a['start_s'] / b['start_s']:.2f}x, generation {a['tokens_per_s'] / b['tokens_per_s']:.2f}x, "
          f"whole process {a['process_s'] / b['process_s']:.2f}x")


if __name__ == "__main__":
    main()
