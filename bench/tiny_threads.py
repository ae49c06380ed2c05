"""How many OpenMP threads should the test suite's tiny model train with? (issue 29, `make test`)

The suite's flows train a randomly initialised tiny model (tops.tiny: 2 layers, hidden 128) for
the smoke profile's tag model: 36 rows, 30 epochs, 150 steps. Each contender is the stage's own
command, `tops train sft`, as a whole child process (imports, load, train, save):
- threads=N: OMP_NUM_THREADS=N (2 = torch's default on a 2-core host);
- with --busy, one CPU-bound neighbour process runs during each contender (what an evaluation
  lane, the Prefect server or a second pytest worker is to a training child).
Rounds alternate the contenders; printed: each wall time and the ratio to 1 thread in its round.

    .venv/bin/python bench/tiny_threads.py [--busy] [--rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def seed_rows(folder: Path, model: Path) -> Path:
    """The smoke profile's seed data (the arith teacher: no model needed), as `tops seed` writes it."""
    out = folder / "seed.parquet"
    subprocess.run([sys.executable, "-m", "tops.cli", "seed", "--config", str(REPO / "configs" / "smoke.yaml"),
                    "--set", f"model.base={model}", "--set", "problems.n=12", "--out", str(out)],
                   check=True, capture_output=True)
    return out


def train(threads: int, data: Path, model: Path, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tops.cli", "train", "sft", "--config", str(REPO / "configs" / "smoke.yaml"),
                    "--data", str(data), "--kind", "samples", "--base", str(model), "--out", str(out),
                    "--set", "train.epochs=30", "--set", "train.system_prompt=effort"],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--busy", action="store_true", help="one CPU-bound neighbour during each run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    from tops.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny_model(folder / "tiny")
        data = seed_rows(folder, model)
        print(f"tiny-model SFT, 150 steps, {'one busy neighbour' if args.busy else 'idle host'}, "
              f"{os.cpu_count()} cores")
        for r in range(args.rounds):
            order = args.threads if r % 2 == 0 else list(reversed(args.threads))
            times = {}
            for threads in order:
                stop = multiprocessing.Event()
                neighbour = multiprocessing.Process(target=spin, args=(stop,)) if args.busy else None
                if neighbour:
                    neighbour.start()
                try:
                    times[threads] = train(threads, data, model, folder / f"out-{r}-{threads}")
                finally:
                    if neighbour:
                        stop.set()
                        neighbour.join()
            base = times[min(times)]
            print(f"round {r + 1}: " + ", ".join(f"threads={t} {times[t]:.1f} s ({times[t] / base:.2f}x)"
                                                  for t in sorted(times)))


if __name__ == "__main__":
    main()
