"""Throughput of the mask stage: 100,000 synthetic ~500-token responses, some with wrong rounds.

Masking must never be the slowest stage of the loop (generation and verification are far
slower per row), so the figure to watch is rows/s of `mask_responses`, plus the Arrow
conversion of the `steps` column that the stage's write pays for.

    .venv/bin/python bench/mask.py [--rows 100000] [--disabled] [--progress]
"""

from __future__ import annotations

import argparse
import random
import time

import pandas as pd

from tops.artifacts import to_table
from tops.config import MaskConfig
from tops.masking import mask_responses

FILLER = ("Let me think about the digits carefully and keep track of every carry in the sum",
          "First I line the numbers up by place value before adding the columns",
          "The units column gives a carry of one into the tens column here",
          "Now I combine the partial results that I found in the earlier steps")


def synthetic_response(rng: random.Random, gold: int, target_chars: int = 2000) -> str:
    """A worked solution of ~target_chars: working lines, maybe wrong rounds, a boxed answer."""
    wrong_rounds = rng.choice((0, 0, 0, 1, 1, 2))
    rounds = [gold + rng.choice((-10, -1, 1, 2)) for _ in range(wrong_rounds)] + [gold]
    per_round = target_chars // len(rounds)
    parts = []
    for index, answer in enumerate(rounds):
        if index:
            parts.append(rng.choice(("Wait, that is wrong.", "Hmm, let me check again.",
                                     "Actually, I made a mistake.")))
        length = 0
        while length < per_round - 120:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            line = f"{rng.choice(FILLER)}: {a} + {b} = {a + b}."
            parts.append(line)
            length += len(line) + 1
        if index < len(rounds) - 1:
            parts.append(rng.choice((f"So the total is {answer}.", f"So the answer is {answer}.")))
        else:
            parts.append(f"Therefore the answer is \\boxed{{{answer}}}.")
    return "\n".join(parts)


def build(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    golds = [rng.randint(100, 99999) for _ in range(rows)]
    responses = [synthetic_response(rng, gold) for gold in golds]
    return pd.DataFrame({
        "problem_id": [f"p{i}" for i in range(rows)],
        "question": ["What is the sum?"] * rows,
        "answer": [str(g) for g in golds],
        "response": responses,
        "effort": [rng.choice(("low", "medium", "high")) for _ in range(rows)],
        "n_tokens": [len(r) // 4 for r in responses],
        "policy": ["shortest"] * rows,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--disabled", action="store_true", help="mask.enabled=false (ablation)")
    parser.add_argument("--progress", action="store_true", help="with the progress bar")
    args = parser.parse_args()

    began = time.perf_counter()
    selected = build(args.rows)
    mean_chars = selected["response"].str.len().mean()
    print(f"built {len(selected):,} responses, mean {mean_chars:.0f} chars "
          f"(~{selected['n_tokens'].mean():.0f} tokens) in {time.perf_counter() - began:.1f}s")

    cfg = MaskConfig(enabled=not args.disabled)
    began, began_cpu = time.perf_counter(), time.process_time()
    masked, summary = mask_responses(selected, cfg, progress=args.progress)
    seconds, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    # CPU time too: on a shared machine the wall clock also counts other people's work.
    print(f"mask_responses: {seconds:.2f}s  {len(masked) / seconds:,.0f} rows/s wall, "
          f"{len(masked) / cpu:,.0f} rows/s per CPU-second  "
          f"masked rows {summary['masked_rows_share']:.1%}  "
          f"masked tokens {summary['masked_token_share']:.1%}  "
          f"steps/row {masked['steps'].map(len).mean():.1f}")

    began = time.perf_counter()
    table = to_table(masked, "masked")
    seconds_arrow = time.perf_counter() - began
    print(f"to_table (Arrow, for the write): {seconds_arrow:.2f}s  "
          f"{len(masked) / seconds_arrow:,.0f} rows/s  steps type {table.schema.field('steps').type}")
    print(f"stage total: {len(masked) / (seconds + seconds_arrow):,.0f} rows/s")


if __name__ == "__main__":
    main()
