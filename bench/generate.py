"""Generation throughput: raw `vllm.LLM.generate` vs the `tops generate` stage vs the
transformers engine, on identical prompts and sampling settings, in one process.

    .venv/bin/python bench/generate.py [--model smollm2-135m-instruct] [--problems 32]

Prints generated tokens/s for each and the ratios; the stage includes shard writing, Parquet
and token counting. Rounds alternate raw/stage so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hf-problems", type=int, default=8)
    args = parser.parse_args()

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from tops.config import load_config
    from tops.domains import load_problems
    from tops.engines import make_engine
    from tops.engines.render import render_ids
    from tops.generate import build_requests, generate_samples
    from tops.models import resolve_model

    cfg = load_config(None, [f"model.base={args.model}", f"generate.n_samples={args.n}",
                             f"generate.sampling.max_tokens={args.max_tokens}",
                             "generate.sampling.temperature=0.7", "engine.max_model_len=1024"])
    model = resolve_model(cfg.model.base)
    problems = load_problems(cfg.problems, n=args.problems)
    requests = build_requests(problems, cfg.generate.efforts, cfg.efforts.prompts)
    engine = make_engine(model, cfg.engine)
    sampling = cfg.generate.sampling
    prompts = [TokensPrompt(prompt_token_ids=render_ids(engine.tokenizer, r)) for r in requests]
    params = SamplingParams(n=args.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens)
    engine.llm.generate(prompts[:4], params, use_tqdm=False)  # warm-up

    raw, stage = [], []
    for round_idx in range(args.rounds):
        start = time.perf_counter()
        outs = engine.llm.generate(prompts, params, use_tqdm=False)
        tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
        raw.append(tokens / (time.perf_counter() - start))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            samples, _ = generate_samples(problems, engine, cfg.generate, cfg.efforts.prompts,
                                          Path(tmp) / "samples.parquet", model_name=args.model, progress=False)
            stage.append(int(samples["n_tokens"].sum()) / (time.perf_counter() - start))
        print(f"round {round_idx}: raw vLLM {raw[-1]:.0f} tok/s, tops generate {stage[-1]:.0f} tok/s")
    engine.close()

    hf_cfg = cfg.engine.model_copy(update={"kind": "hf", "batch_size": 64})
    hf = make_engine(model, hf_cfg)
    subset = requests[: args.hf_problems * len(cfg.generate.efforts)]
    start = time.perf_counter()
    outs = hf.generate(subset, args.n, sampling)
    hf_tps = sum(c.n_tokens for out in outs for c in out) / (time.perf_counter() - start)

    raw_m, stage_m = statistics.median(raw), statistics.median(stage)
    print(f"\nprompts={len(requests)} x n={args.n}, max_tokens={args.max_tokens}, model={args.model}")
    print(f"raw vllm.LLM.generate : {raw_m:8.1f} tok/s")
    print(f"tops generate (stage) : {stage_m:8.1f} tok/s   ratio vs raw {stage_m / raw_m:.2f}x (goal >= 0.90x)")
    print(f"transformers engine   : {hf_tps:8.1f} tok/s   ratio vs raw {hf_tps / raw_m:.2f}x "
          f"({len(subset)} prompts)")


if __name__ == "__main__":
    main()
