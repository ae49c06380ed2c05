"""What Ray placement costs a heavy stage (flow.runner: ray, tops/flow/ray_cluster.py) against
the thread runner, which starts the same `tops <stage>` child on the flow's node: the same
generation stage on the tiny model, alternately through both routes, and the ratio of the
medians. Joining Ray (a fresh local Ray of the run's own) is timed apart: a flow pays it once.

    PYTHONPATH=. python bench/ray_placement.py [--repeats 3] [--problems 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--problems", type=int, default=6)
    args = parser.parse_args()

    import yaml

    from tops.artifacts import write_artifact
    from tops.config import load_config
    from tops.flow.ray_cluster import connect, place
    from tops.flow.tasks import child_command
    from tops.launch import Command
    from tops.layout import RunLayout
    from tops.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="tops-ray-bench-"))
    model = build_tiny_model(root / "tiny")
    problems = root / "problems.parquet"
    write_artifact(pd.DataFrame([{"problem_id": f"q{i}", "question": f"What is {i} + 2?", "answer": str(i + 2),
                                  "difficulty": "easy"} for i in range(args.problems)]), problems, "problems")
    sets = [f"run.root={root}", f"model.base={model}", "generate.n_samples=1"]
    cfgs = {"thread": load_config(REPO / "configs" / "smoke.yaml", sets),
            # the Ray task asks for every core: Ray sets OMP_NUM_THREADS to a task's CPUs, and the
            # thread route's child uses them all; so both children run the same threads
            "ray": load_config(REPO / "configs" / "smoke.yaml",
                               [*sets, "flow.runner=ray", f"cluster.cpus_per_stage={os.cpu_count() or 1}"])}
    started = time.perf_counter()
    connect(cfgs["ray"].cluster)
    join_s = time.perf_counter() - started

    times: dict[str, list[float]] = {"thread": [], "ray": []}
    for i in range(args.repeats):
        for route, cfg in cfgs.items():
            out = root / f"{route}{i}.parquet"
            RunLayout.stage_config(out).write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
            argv = child_command(["generate", "--in", str(problems), "--model", str(model), "--quiet"], out)
            started = time.perf_counter()
            [done] = place(cfg, "generate", [Command(argv, route)], log=lambda who, line: None)
            times[route].append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"{route}: exit {done.returncode}: {done.tail[-3:]}")
    thread, ray = statistics.median(times["thread"]), statistics.median(times["ray"])
    print(f"joining a fresh local Ray: {join_s:.1f} s (once per flow)")
    for route in times:
        print(f"{route:>6}: " + ", ".join(f"{t:.1f}" for t in times[route]) + " s")
    print(f"generation stage, median of {args.repeats}: thread {thread:.1f} s, ray {ray:.1f} s, "
          f"ratio ray/thread {ray / thread:.2f} (+{ray - thread:.1f} s per stage)")


if __name__ == "__main__":
    main()
