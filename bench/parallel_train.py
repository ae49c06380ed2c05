"""The demo's two SFT runs after selection (TOPS and random-correct): one after the other on all
cores, or side by side as two 1-thread processes? (issue 29, lever (a))

Each contender trains the same two data sets (bench/train_sft.py's addition rows, two seeds) as two
child processes with the demo's recipe (LoRA r=16, bf16, batch 4, 1 epoch here), whole processes
timed — imports, model load, training, the LoRA merge and save — as a flow's training stages are:
- sequential: A then B, each with every core (torch's default threads);
- side by side: A and B at once, OMP_NUM_THREADS=1 each (what a CPU lane of tops.gpus.lane_plans
  gives a child).
Rounds alternate the contenders; the ratio sequential / side-by-side wall time is printed per
round (the machine may be shared: compare within a round).

    .venv/bin/python bench/parallel_train.py --model PATH/TO/SmolLM2-135M-Instruct --examples 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "BENCH-REPORT "  # the child's report line (libraries print to stdout too)

def child(data: str, model: str, out: str) -> None:
    """One training stage in this process (the bench's child)."""
    import pandas as pd
    import torch

    from tops.config import DEFAULT_EFFORT_PROMPTS, TrainConfig
    from tops.train import train_sft

    cfg = TrainConfig(learning_rate=1e-3, epochs=1, batch_size=4, max_length=384, bf16=True,
                      lora={"enabled": True, "r": 16, "alpha": 32}, system_prompt="none")
    s = train_sft(pd.read_parquet(data), model, out, cfg, DEFAULT_EFFORT_PROMPTS, progress=False)
    print(MARK + json.dumps({"threads": torch.get_num_threads(), "train_s": s["train_seconds"],
                      "tokens": s["trained_tokens"]}))


def run(jobs: list[tuple[str, str]], model: str, env: dict[str, str]) -> tuple[float, list[dict]]:
    """Start every (data, out) job at once; wall seconds until the last ends, and their reports."""
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", data, model, out], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for data, out in jobs]
    reports = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a training child failed ({proc.returncode})")
        reports.append(json.loads([line for line in stdout.splitlines() if line.startswith(MARK)][-1][len(MARK):]))
    return time.perf_counter() - start, reports


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from train_sft import build_data

    tmp = Path(tempfile.mkdtemp(prefix="parallel-train-"))
    data = []
    for k in range(2):
        path = tmp / f"data{k}.parquet"
        build_data(args.examples, seed=k).to_parquet(path)
        data.append(str(path))
    print(f"load average before: {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores")
    results: dict[str, list[float]] = {"sequential": [], "side by side": []}
    for r in range(args.rounds):
        order = ["sequential", "side by side"] if r % 2 == 0 else ["side by side", "sequential"]
        walls = {}
        for name in order:
            outs = [str(tmp / f"r{r}-{name.replace(' ', '_')}-{k}") for k in range(2)]
            if name == "sequential":
                walls[name], reports = 0.0, []
                for d, o in zip(data, outs, strict=True):
                    wall, rep = run([(d, o)], args.model, {})
                    walls[name] += wall
                    reports += rep
            else:
                walls[name], reports = run(list(zip(data, outs, strict=True)), args.model, {"OMP_NUM_THREADS": "1"})
            results[name].append(walls[name])
            print(f"round {r + 1} {name}: {walls[name]:.1f} s wall; per process: "
                  + ", ".join(f"{x['threads']} thread(s) {x['tokens'] / x['train_s']:.0f} tok/s in training"
                              for x in reports), flush=True)
        print(f"round {r + 1}: sequential / side by side = {walls['sequential'] / walls['side by side']:.2f}x "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    seq, par = statistics.median(results["sequential"]), statistics.median(results["side by side"])
    print(f"median: sequential {seq:.1f} s, side by side {par:.1f} s, ratio {seq / par:.2f}x")


if __name__ == "__main__":
    main()
