"""What one child process per heavy stage costs: the smoke flow end to end, and per stage the
flow's wall time (timings.json) against the time the stage's own runner measured inside the child
(its manifest record's `seconds`). The difference is the child's start-up (interpreter, imports,
config) plus the task's bookkeeping; light stages run in the flow's process and show that
bookkeeping alone.

Both ways by default: children as plain processes, then forked from the zygote (tops/zygote.py),
and the ratio of the two.

    PYTHONPATH=. python bench/flow_overhead.py [--config configs/smoke.yaml] [--set k=v ...] [--zygote both|on|off]
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


def run_flow(config: str, sets: list[str], zygote: bool) -> tuple[float, list[tuple[str, bool, float, float]]]:
    """One smoke flow in a fresh folder: its wall time and, per stage, (name, child?, flow s, stage s)."""
    root = Path(tempfile.mkdtemp(prefix="tops-bench-"))
    cmd = [sys.executable, "-m", "tops.cli", "run", "--config", config, "--set", f"run.root={root}"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "PYTHONPATH": str(REPO),
           "TOPS_ZYGOTE": "1" if zygote else "0"}
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
    return wall, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--zygote", choices=["on", "off", "both"], default="both",
                        help="children forked from a pre-imported zygote (tops/zygote.py), plain processes, or "
                             "one flow each (plain first) and their ratio")
    args = parser.parse_args()
    settings = {"on": [True], "off": [False], "both": [False, True]}[args.zygote]
    totals = {}
    for zygote in settings:
        wall, rows = run_flow(args.config, args.sets, zygote)
        print(f"\n== children {'forked from the zygote' if zygote else 'as plain processes'}")
        print(f"{'stage':<18} {'where':<7} {'flow s':>7} {'stage s':>8} {'overhead s':>10}")
        for name, child, flow_s, stage_s in rows:
            print(f"{name:<18} {'child' if child else 'flow':<7} {flow_s:7.1f} {stage_s:8.1f} {flow_s - stage_s:10.1f}")
        children = [r for r in rows if r[1]]
        overhead = sum(f - s for _, _, f, s in children)
        totals[zygote] = (wall, overhead)
        print(f"\nflow wall time {wall:.1f} s ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end); "
              f"{len(children)} child stages, overhead {overhead:.1f} s in total "
              f"({overhead / max(len(children), 1):.1f} s per child, {overhead / wall:.0%} of the wall time)")
    if len(totals) == 2:
        (plain_wall, plain_over), (zyg_wall, zyg_over) = totals[False], totals[True]
        print(f"\nzygote / plain: flow wall time {zyg_wall / plain_wall:.2f}x ({plain_wall:.1f} -> {zyg_wall:.1f} s), "
              f"child overhead {zyg_over / max(plain_over, 1e-9):.2f}x ({plain_over:.1f} -> {zyg_over:.1f} s)")


if __name__ == "__main__":
    main()
