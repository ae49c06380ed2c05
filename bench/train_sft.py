"""Training throughput of `train_sft` against a plain TRL SFTTrainer script, in one process.

Same data (column-addition problems answered at three efforts, as in the pilot), model and
settings. Contenders:
- plain TRL: prompt-completion chats, TRL's defaults (completion-only loss, padded batches
  in random order); the script a user would write.
- tops: `train_sft` as the CLI runs it (pre-tokenized labels, length-grouped batches on CPU).
- (--with-packing) plain TRL with packing=True (best-fit packing, padding-free rows): TRL's
  own low-padding option, to show what it costs under SDPA attention on CPU. Tiny model only:
  with SmolLM2 the block-diagonal masks of 8 x 1024-token rows exhausted 24 GiB.
Each is run --rounds times, alternating, and the median kept (the machine is shared and
noisy). Figures: real (non-padding) tokens per second of `trainer.train()`, the ratio
tops / plain (goal >= 0.95) and the padding share of the batches trained on (goal < 5%).

    .venv/bin/python bench/train_sft.py                       # tiny model, quick
    .venv/bin/python bench/train_sft.py --model data/models/SmolLM2-135M-Instruct --examples 48
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from tops.config import DEFAULT_EFFORT_PROMPTS, TrainConfig
from tops.train import train_sft
from tops.train.common import lora_config, trainer_args
from tops.train.examples import chat_messages, system_prompt_for


def addition_response(a: int, b: int, effort: str) -> str:
    """The pilot's programmatic teacher: low = the sum; medium = column working; high = + check."""
    total = a + b
    if effort == "low":
        return f"{a} + {b} = {total}. The answer is \\boxed{{{total}}}."
    lines, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for place in range(max(len(da), len(db))):
        x = int(da[place]) if place < len(da) else 0
        y = int(db[place]) if place < len(db) else 0
        s = x + y + carry
        lines.append(f"Column {place + 1}: {x} + {y} + carry {carry} = {s}, write {s % 10}, carry {s // 10}.")
        carry = s // 10
    if carry:
        lines.append(f"Final carry: write {carry}.")
    lines.append(f"So {a} + {b} = {total}.")
    if effort == "high":
        lines.append(f"Check: {total} - {b} = {total - b}, which is {a}. Correct.")
    return "\n".join(lines) + f"\nThe answer is \\boxed{{{total}}}."


def build_data(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        digits = (1, 2, 3)[i % 3]
        a, b = rng.randint(10 ** (digits - 1), 10 ** digits - 1), rng.randint(10 ** (digits - 1), 10 ** digits - 1)
        effort = rng.choice(("low", "medium", "high"))
        rows.append({"problem_id": f"p{i}", "question": f"What is {a} + {b}?", "effort": effort,
                     "response": addition_response(a, b, effort)})
    return pd.DataFrame(rows)


class CountingCollator:
    """Counts real tokens against padded positions of every batch collated. Exact for whole
    epochs (the bench has no max_steps): accelerate looks one batch ahead, so a run stopped
    mid-epoch would count one batch it never trained on."""

    def __init__(self, inner):
        self.inner, self.real, self.positions = inner, 0, 0

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner(examples)
        self.real += sum(len(e["input_ids"]) for e in examples)
        self.positions += int(batch["input_ids"].numel())
        return batch


def plain_trl(data: pd.DataFrame, model: str, cfg: TrainConfig, out: Path, packing: bool) -> dict:
    """What a user writes with TRL alone: prompt-completion chats, the same hyperparameters."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({
        "prompt": [chat_messages(q, system_prompt_for(cfg.system_prompt, e, DEFAULT_EFFORT_PROMPTS))
                   for q, e in zip(data["question"], data["effort"], strict=True)],
        "completion": [[{"role": "assistant", "content": r}] for r in data["response"]],
    })
    args = trainer_args(SFTConfig, cfg, out, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                        progress=False, max_length=cfg.max_length, packing=packing)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora_config(cfg))
    trainer.remove_callback(PrinterCallback)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    trainable = sum(sum(1 for t in labels[1:] if t != -100) for labels in trainer.train_dataset["labels"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"tokens_per_s": counter.real / seconds, "padding_share": 1 - counter.real / counter.positions,
            "trained_tokens": counter.real, "trainable_tokens": trainable if not packing else None,
            "final_loss": trainer.state.log_history[-2].get("loss"), "seconds": seconds}


def tops_sft(data: pd.DataFrame, model: str, cfg: TrainConfig, out: Path) -> dict:
    s = train_sft(data, model, out, cfg, DEFAULT_EFFORT_PROMPTS, progress=False)
    return {"tokens_per_s": s["train_tokens_per_s"], "padding_share": s["padding_share"],
            "trained_tokens": s["trained_tokens"], "trainable_tokens": s["trainable_tokens"],
            "final_loss": s["final_loss"], "seconds": s["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the tiny test model)")
    parser.add_argument("--examples", type=int, default=192)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r=16")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--with-packing", action="store_true", help="also time plain TRL with packing=True")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is steadier when other jobs share the cores)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.model is None:
        from tops.models import models_dir
        from tops.tiny import build_tiny_model

        args.model = str(build_tiny_model(models_dir() / "tiny"))
    cfg = TrainConfig(system_prompt="effort", learning_rate=args.lr, epochs=args.epochs,
                      batch_size=args.batch_size, max_length=1024, bf16=not args.fp32,
                      lora={"enabled": not args.full}, logging_steps=1, save_steps=10_000,
                      lr_scheduler="cosine")
    data = build_data(args.examples)
    contenders = {"plain TRL": lambda out: plain_trl(data, args.model, cfg, out, packing=False),
                  "tops train sft": lambda out: tops_sft(data, args.model, cfg, out)}
    if args.with_packing:
        contenders["plain TRL packing"] = lambda out: plain_trl(data, args.model, cfg, out, packing=True)
    print(f"model {args.model}; {len(data)} examples, batch {cfg.batch_size}, "
          f"{'full' if args.full else 'LoRA r=16'}, {'fp32' if args.fp32 else 'bf16 autocast'}, "
          f"{args.rounds} rounds, {__import__('torch').get_num_threads()} torch threads", flush=True)

    results: dict[str, list[dict]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                result = contenders[name](Path(tmp) / f"{name.replace(' ', '_')}-{r}")
                results[name].append(result)
                print(f"  round {r + 1} {name:18s} {result['tokens_per_s']:8.1f} tok/s  "
                      f"padding {result['padding_share']:6.1%}  {result['seconds']:6.1f}s  "
                      f"loss {result['final_loss']}", flush=True)

    print("\nmedian over rounds (real tokens per second of trainer.train()):")
    medians = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in results.items()}
    for name, rs in results.items():
        print(f"  {name:18s} {medians[name]:8.1f} tok/s   padding share {rs[0]['padding_share']:6.1%}   "
              f"trainable tokens {rs[0]['trainable_tokens']}")
    ratio = medians["tops train sft"] / medians["plain TRL"]
    padding = results["tops train sft"][0]["padding_share"]
    print(f"\ntops / plain TRL: {ratio:.2f}x (goal >= 0.95)   "
          f"tops padding share: {padding:.1%} (goal < 5%)")


if __name__ == "__main__":
    main()
