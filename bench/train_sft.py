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

--gpu (and --cpu-smoke, the same code on a tiny shape, to know it runs): steady state on a
randomly initialised Qwen2 model of Qwen2.5-1.5B's shape (1.54B parameters), full fine-tuning,
bf16 autocast, chains of 200-4,096 tokens: each contender trains `--warmup` optimizer steps,
then `--steps` (>= 50) more are timed. Printed per contender: real tokens/s, MFU (6 N FLOPs a
real token over the GPU's bf16 peak: H100 / H200 989 TFLOP/s), padding share, peak memory, and
tops / plain TRL. Contenders: plain TRL (padded batches of 4, SDPA), tops (the path it picks on
this machine, micro-batches of <= --max-tokens tokens) and tops per_sequence. See BENCHMARKS.md
for the one command that runs it on a lent GPU.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tops.config import DEFAULT_EFFORT_PROMPTS, TrainConfig
from tops.train import train_sft
from tops.train.common import lora_config, trainer_args
from tops.train.examples import chat_messages, system_prompt_for
from tops.train.kernels import resolve_setup


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
                        progress=False, setup=plain_setup(cfg), max_length=cfg.max_length, packing=packing)
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


def plain_setup(cfg: TrainConfig):
    """The settings a plain TRL script gets: tops's dtype and checkpointing, no kernels."""
    from dataclasses import replace

    return replace(resolve_setup(cfg), batching="padded", attn_implementation=None, liger_kernels=False)


def tops_sft(data: pd.DataFrame, model: str, cfg: TrainConfig, out: Path) -> dict:
    s = train_sft(data, model, out, cfg, DEFAULT_EFFORT_PROMPTS, progress=False)
    return {"tokens_per_s": s["train_tokens_per_s"], "padding_share": s["padding_share"],
            "trained_tokens": s["trained_tokens"], "trainable_tokens": s["trainable_tokens"],
            "final_loss": s["final_loss"], "seconds": s["train_seconds"]}


def main() -> None:
    if "--gpu" in sys.argv or "--cpu-smoke" in sys.argv:
        return steady_main()
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
    parser.add_argument("--also", default="", help="more tops batching paths to time, e.g. per_sequence")
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
    def tops_on(path: str):
        return lambda out: tops_sft(data, args.model, cfg.model_copy(update={"batching": path}), out)

    for path in filter(None, args.also.split(",")):
        contenders[f"tops {path}"] = tops_on(path)
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


# ---------------------------------------------------------------- steady state (--gpu, --cpu-smoke)

# bf16 dense peak, FLOP/s, by a name fragment of torch.cuda.get_device_name()
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}
# Qwen2.5-1.5B's shape (1.54B parameters with its 151,936-token vocabulary)
QWEN2_1_5B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
              "num_key_value_heads": 2, "vocab_size": 151936}
SMOKE_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 512}


def random_model(folder: Path, shape: dict, max_length: int) -> Path:
    """A randomly initialised Qwen2 model of `shape` with the tiny model's chat tokenizer
    (token ids only matter as indices: nothing is downloaded)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tops.tiny import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(folder / "tokenizer"))
    config = Qwen2Config(**shape, max_position_embeddings=max(4096, max_length), tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    del model
    return folder / "model"


def long_chain_data(n: int, min_tokens: int, max_tokens: int, tokenizer, seed: int = 0) -> pd.DataFrame:
    """Rows whose chat is ~uniformly 200..max_tokens tokens: column additions worked at length."""
    rng = random.Random(seed)
    unit = addition_response(48213, 97648, "high")
    per_char = len(tokenizer(unit, add_special_tokens=False)["input_ids"]) / len(unit)
    system = system_prompt_for("effort", "high", DEFAULT_EFFORT_PROMPTS)
    frame = tokenizer.apply_chat_template(chat_messages("What is 12345 + 67890?", system,
                                                        addition_response(12345, 67890, "low")), tokenize=True)
    overhead = len(frame["input_ids"] if hasattr(frame, "keys") else frame)  # prompt, template, final line
    rows = []
    for i in range(n):
        a, b = rng.randint(10_000, 99_999), rng.randint(10_000, 99_999)
        target = max(0, rng.randint(min_tokens, max_tokens) - overhead)
        text = ""
        while len(text) * per_char < target:
            text += addition_response(rng.randint(10_000, 99_999), rng.randint(10_000, 99_999), "high") + "\n"
        cut = int(target / per_char * 0.98)
        rows.append({"problem_id": f"p{i}", "question": f"What is {a} + {b}?", "effort": "high",
                     "response": text[:cut] + addition_response(a, b, "low")})
    return pd.DataFrame(rows)


class StepClock:
    """Marks (time, real tokens, positions) at every optimizer step's end; the steady-state
    figures are taken between the mark after warm-up and the last."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        clock = self
        self.warmup, self.marks, self.counts = warmup, [], (lambda: (0, 0))

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.marks.append((time.perf_counter(), *clock.counts()))
                control.should_save = False  # the last step's checkpoint (18 GiB at 1.5B) is not timed
                return control

        self.callback = Callback()

    def figures(self) -> dict:
        (t0, real0, pos0), (t1, real1, pos1) = self.marks[self.warmup - 1], self.marks[-1]
        return {"steps": len(self.marks) - self.warmup, "seconds": t1 - t0, "tokens_per_s": (real1 - real0) / (t1 - t0),
                "padding_share": 1 - (real1 - real0) / (pos1 - pos0), "real_tokens": real1 - real0}


def counting_trl_trainer():
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        real = positions = 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.positions += inputs["input_ids"].numel()
            self.real += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    return CountingSFTTrainer


def steady_plain_trl(data, model, cfg, out, clock) -> object:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig

    dataset = Dataset.from_dict({
        "prompt": [chat_messages(q, system_prompt_for(cfg.system_prompt, e, DEFAULT_EFFORT_PROMPTS))
                   for q, e in zip(data["question"], data["effort"], strict=True)],
        "completion": [[{"role": "assistant", "content": r}] for r in data["response"]],
    })
    args = trainer_args(SFTConfig, cfg, out, learning_rate=cfg.learning_rate, epochs=cfg.epochs, progress=False,
                        setup=plain_setup(cfg), max_length=cfg.max_length, packing=False)
    trainer = counting_trl_trainer()(model=model, args=args, train_dataset=dataset, callbacks=[clock.callback])
    trainer.remove_callback(PrinterCallback)
    clock.counts = lambda: (trainer.real, trainer.positions)
    trainer.train()
    return trainer


def steady_tops(data, model, cfg, out, clock) -> object:
    from tops.train.sft import build_sft_trainer

    trainer, _, _ = build_sft_trainer(data, model, out, cfg, DEFAULT_EFFORT_PROMPTS, progress=False,
                                      callbacks=[clock.callback])
    clock.counts = lambda: (trainer.real_tokens, trainer.positions)
    trainer.train()
    return trainer


def steady_main() -> None:
    import gc
    import json

    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the 1.5B-shaped model on this machine's GPU")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on a tiny shape, on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="optimizer steps before timing (5; smoke 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (50; smoke 3)")
    parser.add_argument("--max-length", type=int, default=None, help="longest chain (4096; smoke 512)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tops micro-batch budget (4 x max-length)")
    parser.add_argument("--batch-size", type=int, default=4, help="plain TRL's batch")
    parser.add_argument("--contenders", default="plain,tops,tops-per-sequence",
                        help="comma-separated, of plain, tops, tops-per-sequence, tops-length-grouped, tops-flex, "
                             "tops-no-checkpointing")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    smoke = args.cpu_smoke
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device")
    warmup, steps = max(1, args.warmup or (1 if smoke else 5)), args.steps or (3 if smoke else 50)
    max_length = args.max_length or (512 if smoke else 4096)
    budget = args.max_tokens or args.batch_size * max_length
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)

    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(Path(tmp), SMOKE_SHAPE if smoke else QWEN2_1_5B, max_length)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        with torch.device("meta"):  # shapes only
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
        tokenizer = AutoTokenizer.from_pretrained(model)
        lengths_mean = (200 + max_length) / 2
        n = int(1.2 * (warmup + steps) * budget / lengths_mean) + 8
        data = long_chain_data(n, min(200, max_length // 2), max_length, tokenizer)
        base = {"system_prompt": "effort", "learning_rate": 1e-5, "epochs": 1, "max_length": max_length,
                "bf16": True, "lora": {"enabled": False}, "logging_steps": 10_000, "save_steps": 10_000,
                "max_steps": warmup + steps, "lr_scheduler": "constant", "warmup_ratio": 0.0}
        cfgs = {"plain": TrainConfig(**base, batch_size=args.batch_size, packing=False),
                "tops": TrainConfig(**base, max_tokens_per_batch=budget),
                "tops-per-sequence": TrainConfig(**base, max_tokens_per_batch=budget, batching="per_sequence"),
                "tops-length-grouped": TrainConfig(**base, max_tokens_per_batch=budget, batching="length_grouped"),
                "tops-flex": TrainConfig(**base, max_tokens_per_batch=budget, batching="padding_free_flex"),
                "tops-no-checkpointing": TrainConfig(**base, max_tokens_per_batch=budget, gradient_checkpointing=False)}
        print(f"{device}; {params / 1e6:,.1f}M-parameter Qwen2 (random), {len(data)} chains of <= {max_length} "
              f"tokens, {warmup} warm-up + {steps} timed optimizer steps; plain TRL batch {args.batch_size}, "
              f"tops micro-batches <= {budget} tokens; bf16 autocast, float32 weights", flush=True)
        results = {}
        for name in args.contenders.split(","):
            clock = StepClock(warmup)
            run = steady_plain_trl if name == "plain" else steady_tops
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                trainer = run(data, str(model), cfgs[name], Path(tmp) / name, clock)
            except Exception as exc:  # one contender's failure (a kernel, memory) still leaves the others' figures
                print(f"  {name:18s} failed: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                gc.collect()
                continue
            result = clock.figures()
            result["wall_s"] = time.perf_counter() - start
            result["path"] = trainer.setup.batching if name != "plain" else "padded (TRL collator)"
            result["setup"] = trainer.setup.describe() if name != "plain" else None
            result["mfu"] = result["tokens_per_s"] * 6 * params / peak if peak else None
            result["peak_memory_gib"] = (torch.cuda.max_memory_allocated() / 2**30
                                         if torch.cuda.is_available() else None)
            results[name] = result
            mfu = f"{result['mfu']:6.1%}" if result["mfu"] is not None else "   n/a"
            memory = f"{result['peak_memory_gib']:6.1f} GiB" if result["peak_memory_gib"] is not None else "n/a"
            print(f"  {name:18s} {result['tokens_per_s']:9.0f} tok/s  MFU {mfu}  padding {result['padding_share']:6.1%}"
                  f"  peak {memory}  {result['steps']} steps in {result['seconds']:.1f}s (wall {result['wall_s']:.0f}s)"
                  f"  path {result['path']}", flush=True)
            del trainer
            gc.collect()
    if "tokens_per_s" in results.get("plain", {}):
        for name, result in results.items():
            if name != "plain" and "tokens_per_s" in result:
                print(f"{name} / plain TRL: {result['tokens_per_s'] / results['plain']['tokens_per_s']:.2f}x")
    static = 16 * params / 2**30  # float32 weights + gradients + Adam's two moments
    print(f"weights + gradients + optimizer state (float32 AdamW): {static:.1f} GiB")
    if args.out:
        args.out.write_text(json.dumps({"device": device, "params": params, "max_length": max_length,
                                        "budget": budget, "static_gib": static, "results": results}, indent=2))


if __name__ == "__main__":
    main()
