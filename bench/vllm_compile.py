"""vLLM on CPU: eager (`engine.enforce_eager: true`, the default) vs torch.compile'd engine.

Compilation costs start-up time (the environment notes ~25 s eager vs ~85 s compiled for a tiny
model); what it buys is generation speed. Which one pays depends on how much a stage generates:
the demo's multi-effort sampling is ~150k tokens, an evaluation ~20k. Each contender runs in its
own child process (one vLLM engine per process), one after the other, on identical requests:
printed are its start-up seconds, generated tokens/s, and the compiled/eager ratios.

    .venv/bin/python bench/vllm_compile.py --model data/runs/demo/models/tag [--problems 96]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sample_in_shards(engine, requests: list, counts: list[int], cfg) -> tuple[int, float]:
    """Generate as the `generate` stage does, a shard per engine call; (tokens, seconds)."""
    tokens, started = 0, time.perf_counter()
    for first in range(0, len(requests), cfg.generate.shard_size):
        outs = engine.generate(requests[first:first + cfg.generate.shard_size],
                               counts[first:first + cfg.generate.shard_size], cfg.generate.sampling)
        tokens += sum(c.n_tokens for out in outs for c in out)
    return tokens, time.perf_counter() - started


def contender(model: str, problems: int, eager: bool) -> dict:
    from tops.config import load_config
    from tops.domains import load_problems
    from tops.engines import make_engine
    from tops.generate import build_requests

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"model.base={model}", f"engine.enforce_eager={eager}"])
    rows = load_problems(cfg.problems, n=problems, seed=7)
    requests = build_requests(rows, list(cfg.generate.efforts), cfg.efforts.prompts)
    counts = [cfg.generate.samples_for(r.meta["effort"]) for r in requests]
    started = time.perf_counter()
    engine = make_engine(model, cfg.engine)
    engine.generate(requests[:8], 1, cfg.generate.sampling)  # warm-up (compiled: the first shapes)
    start_s = time.perf_counter() - started
    tokens, seconds = sample_in_shards(engine, requests, counts, cfg)
    engine.close()
    return {"start_s": start_s, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder, e.g. a demo run's tag model")
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--child", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(contender(args.model, args.problems, args.child == "eager")), flush=True)
        return
    results = {}
    for name in ("eager", "compiled"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--problems", str(args.problems),
                              "--child", name], capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(line[len("RESULT "):])
        r = results[name]
        print(f"{name:>9}: start {r['start_s']:6.1f} s, {r['tokens']} tokens in {r['seconds']:6.1f} s "
              f"= {r['tokens_per_s']:6.1f} tokens/s", flush=True)
    eager, compiled = results["eager"], results["compiled"]
    print(f"compiled/eager: generation {compiled['tokens_per_s'] / eager['tokens_per_s']:.2f}x, "
          f"start +{compiled['start_s'] - eager['start_s']:.0f} s; break-even after "
          f"{(compiled['start_s'] - eager['start_s']) / max(1e-9, 1 / eager['tokens_per_s'] - 1 / compiled['tokens_per_s']):.0f} "
          "generated tokens")


if __name__ == "__main__":
    main()
