"""What one child process per heavy stage costs: the smoke flow end to end, and per stage the
flow's wall time (timings.json) against the time the stage's own runner measured inside the child
(its manifest record's `seconds`). The difference is the child's start-up (interpreter, imports,
config) plus the task's bookkeeping; light stages run in the flow's process and show that
bookkeeping alone.

    PYTHONPATH=. python bench/flow_overhead.py [--config configs/smoke.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tops-bench-"))
    cmd = [sys.executable, "-m", "tops.cli", "run", "--config", args.config, "--set", f"run.root={root}"]
    for item in args.sets:
        cmd += ["--set", item]
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    run_dir = next(p for p in root.iterdir() if (p / "stages" / "manifest.json").exists())
    stages = run_dir / "stages"
    timings = json.loads((stages / "timings.json").read_text())
    records = json.loads((stages / "manifest.json").read_text())["stages"]
    heavy = {p.name.removesuffix(".yaml") for p in stages.glob("*.yaml")}  # a child's config beside its output
    rows = []
    for output, seconds in timings.items():
        stem = output.removesuffix(".parquet")
        inside = records.get(stem, {}).get("seconds")
        if inside is not None:
            rows.append((stem.rsplit("-", 1)[0], stem in heavy, seconds, inside))
    print(f"{'stage':<18} {'where':<7} {'flow s':>7} {'stage s':>8} {'overhead s':>10}")
    for name, child, flow_s, stage_s in rows:
        print(f"{name:<18} {'child' if child else 'flow':<7} {flow_s:7.1f} {stage_s:8.1f} {flow_s - stage_s:10.1f}")
    children = [r for r in rows if r[1]]
    overhead = sum(f - s for _, _, f, s in children)
    print(f"\nflow wall time {wall:.1f} s ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end); "
          f"{len(children)} child stages, overhead {overhead:.1f} s in total "
          f"({overhead / max(len(children), 1):.1f} s per child, {overhead / wall:.0%} of the wall time)")


if __name__ == "__main__":
    main()
