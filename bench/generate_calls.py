"""Multi-effort sampling on vLLM: one engine call per effort group vs one call per shard.

The demo samples its low effort 4 times and medium/high once. Until session 11 each shard made
one engine call per distinct sample count (low x4, then medium+high x1), so vLLM drained the
first call's short tail and then the second call's long one. Now a shard is one call with a
sample count per request. Contenders, on one engine, in the same process, identical requests:
- per_count_128: shards of 128 prompts, one call per sample count (the old stage);
- one_call_128:  shards of 128 prompts, one call each;
- one_call_N:    shards of --shard prompts, one call each (the demo's new shard size).
Printed: generated tokens/s of each and its ratio to per_count_128 in the same round.

    .venv/bin/python bench/generate_calls.py --model data/runs/demo/models/tag [--problems 96]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder, e.g. a demo run's tag model")
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--shard", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    from tops.config import load_config
    from tops.domains import load_problems
    from tops.engines import make_engine
    from tops.generate import build_requests

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"model.base={args.model}"])
    problems = load_problems(cfg.problems, n=args.problems, seed=7)
    requests = build_requests(problems, list(cfg.generate.efforts), cfg.efforts.prompts)
    n_by_effort = {e: cfg.generate.n_samples_by_effort.get(e, cfg.generate.n_samples) for e in cfg.generate.efforts}
    counts = [n_by_effort[r.meta["effort"]] for r in requests]
    sampling = cfg.generate.sampling
    engine = make_engine(args.model, cfg.engine)

    def per_count(shard_size: int) -> int:
        tokens = 0
        for start in range(0, len(requests), shard_size):
            shard = list(range(start, min(start + shard_size, len(requests))))
            for n in sorted({counts[i] for i in shard}, reverse=True):
                group = [requests[i] for i in shard if counts[i] == n]
                tokens += sum(c.n_tokens for out in engine.generate(group, n, sampling) for c in out)
        return tokens

    def one_call(shard_size: int) -> int:
        tokens = 0
        for start in range(0, len(requests), shard_size):
            outs = engine.generate(requests[start:start + shard_size], counts[start:start + shard_size], sampling)
            tokens += sum(c.n_tokens for out in outs for c in out)
        return tokens

    engine.generate(requests[:8], 1, sampling)  # warm-up
    contenders = {"per_count_128": lambda: per_count(128), "one_call_128": lambda: one_call(128),
                  f"one_call_{args.shard}": lambda: one_call(args.shard)}
    print(f"{len(requests)} prompts, {sum(counts)} samples, max_tokens {sampling.max_tokens}, dtype {cfg.engine.dtype}")
    for round_ in range(args.rounds):
        rates = {}
        for name, run in contenders.items():
            started = time.perf_counter()
            tokens = run()
            seconds = time.perf_counter() - started
            rates[name] = tokens / seconds
            print(f"round {round_ + 1} {name:>16}: {tokens} tokens in {seconds:6.1f} s = {rates[name]:6.1f} tokens/s "
                  f"({rates[name] / rates['per_count_128']:.2f}x per_count_128)", flush=True)
    engine.close()


if __name__ == "__main__":
    main()
