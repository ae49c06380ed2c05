"""GPU memory of a flow run, stage by stage: does each heavy stage give its memory back?

Runs `tops run` (default configs/smoke.yaml, transformers engine) and samples, every --every
seconds, the GPU's used memory (NVML, which opens no CUDA context in this process) together with
the flow's live child stages (its descendant processes, read from /proc). Printed and written as
JSON: per stage process, the peak used memory while it ran; the used memory whenever no child
runs (the flow's own process), which stays at the driver's idle figure when every stage returns
its memory on exit; the flow's wall time. Stopped by `timeout` (SIGTERM), it ends the flow and
still writes what it sampled. On a machine without NVML (CPU) the same code
records only which stages ran when, to know the script runs.

    PYTHONPATH=. python bench/gpu_flow_memory.py [--config configs/smoke.yaml] [--set k=v ...] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def gpu_used_mib():
    """A function returning the GPU's used memory in MiB, or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    except Exception:  # no NVML here (CPU machine): attribution only
        return lambda: None


def children_of(root_pid: int) -> dict[int, str]:
    """Descendant processes of root_pid that run a tops stage: pid -> stage label."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: dict[int, str] = {}
    for pid in parents:
        ancestor, hops = parents.get(pid), 0
        while ancestor and ancestor != root_pid and hops < 50:
            ancestor, hops = parents.get(ancestor), hops + 1
        if ancestor != root_pid:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "tops.cli" in argv:
            found[pid] = stage_label(argv[argv.index("tops.cli") + 1:])
    return found


def stage_label(args: list[str]) -> str:
    """`generate --out .../tag_samples.parquet ...` -> 'generate tag_samples'."""
    words = [a for a in args[:2] if a and not a.startswith("-")]
    out = next((Path(args[i + 1]).stem for i, a in enumerate(args[:-1]) if a == "--out"), "")
    return " ".join(words + ([out] if out else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--every", type=float, default=0.2, help="sampling period, seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tops-gpu-flow-"))
    cmd = [sys.executable, "-m", "tops.cli", "run", "--config", args.config, "--set", f"run.root={root}"]
    for item in args.sets:
        cmd += ["--set", item]
    # TOPS_ZYGOTE=0: stages are attributed by their command line, which a forked child would not have.
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "TOPS_ZYGOTE": "0",
           "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    used = gpu_used_mib()
    idle_before = used()
    samples: list[tuple[float, float | None, list[str]]] = []
    started = time.perf_counter()
    flow = subprocess.Popen(cmd, env=env)

    def sample() -> None:
        while flow.poll() is None:
            samples.append((time.perf_counter() - started, used(), sorted(set(children_of(flow.pid).values()))))
            time.sleep(args.every)

    def stop(signum, frame) -> None:  # `timeout` ran out: end the flow, keep what was sampled
        flow.terminate()

    signal.signal(signal.SIGTERM, stop)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = flow.wait()
    wall = time.perf_counter() - started
    sampler.join()
    idle_after = used()

    stages: dict[str, dict] = {}
    between: list[float] = []
    first_child = next((t for t, _, live in samples if live), None)
    for t, mib, live in samples:
        for label in live:
            s = stages.setdefault(label, {"first_s": round(t, 1), "peak_used_mib": None})
            s["last_s"] = round(t, 1)
            if mib is not None and (s["peak_used_mib"] is None or mib > s["peak_used_mib"]):
                s["peak_used_mib"] = round(mib)
        if not live and mib is not None and first_child is not None and t > first_child:
            between.append(mib)
    result = {
        "config": args.config, "sets": args.sets, "exit_code": code, "flow_wall_s": round(wall, 1),
        "samples": len(samples), "idle_used_mib_before": idle_before, "idle_used_mib_after": idle_after,
        "between_stages_max_used_mib": round(max(between)) if between else None,
        "between_stages_samples": len(between), "stages": stages,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    sys.exit(code)


if __name__ == "__main__":
    main()
