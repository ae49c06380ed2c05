"""`tops train sft`: format imitation (tag model) and self-improvement SFT, one function.

The two differ only in data and system prompt (TrainConfig.system_prompt "effort" vs "none").
Examples reach TRL's SFTTrainer pre-tokenized with their labels (tops.train.examples), so the
loss skips prompts and erroneous steps; TRL runs the training loop.

Batching keeps padding a small share of the compute, chosen by attention kernel (measured on
CPU with SmolLM2-135M, see bench/train_sft.py):
- flash attention: padding-free batches, each batch's sequences flattened into one row.
- SDPA / eager (CPU, or GPUs without flash attention): padding-free or packed rows carry a
  block-diagonal mask whose cost grows with the square of the *row* length (8 x 128 tokens
  flattened ran 1.5x slower than the same tokens as a padded batch), so batches stay padded
  and are drawn from length-sorted groups (`group_by_length`), which leaves little padding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from tops.config import TrainConfig
from tops.train.common import (
    CountingCollator,
    base_summary,
    finish,
    last_checkpoint,
    lora_config,
    open_out_dir,
    run_key,
    train_and_save,
    trainer_args,
)
from tops.train.examples import SFTExamples, build_sft_examples


def batching_for(cfg: TrainConfig) -> str:
    """"padding_free", "length_grouped" or "padded" (see the module docstring)."""
    if not cfg.packing:
        return "padded"
    if (cfg.attn_implementation or "").replace("kernels-community/", "").startswith(
            ("flash_attention", "flash-attn")):
        return "padding_free"
    return "length_grouped"


def sft_trainer_kwargs(cfg: TrainConfig) -> dict:
    """SFTConfig arguments that depend on the batching strategy."""
    batching = batching_for(cfg)
    return {
        "packing": False,
        "padding_free": batching == "padding_free",
        # examples arrive truncated; TRL refuses max_length with padding-free and no packing
        "max_length": None if batching == "padding_free" else cfg.max_length,
        "train_sampling_strategy": "group_by_length" if batching == "length_grouped" else "random",
    }


def examples_key(examples: SFTExamples) -> str:
    digest = hashlib.sha256()
    for column in (examples.input_ids, examples.labels):
        digest.update(np.asarray([len(x) for x in column], dtype=np.int64).tobytes())
        digest.update(np.concatenate([np.asarray(x, dtype=np.int64) for x in column]).tobytes())
    return digest.hexdigest()[:16]


def load_tokenizer(base_model: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_sft_trainer(data: pd.DataFrame, base_model: str | Path, out_dir: Path, cfg: TrainConfig,
                      prompts: dict[str, str], progress: bool = True, callbacks: list | None = None):
    """(SFTTrainer, its examples, the finished run's summary or None). Split from train_sft so
    tests and benchmarks can look inside the very trainer the command uses."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(base_model)
    examples = build_sft_examples(data, tokenizer, cfg.system_prompt, prompts, cfg.max_length)
    done = open_out_dir(out_dir, run_key("sft", base_model, cfg, examples_key(examples)))
    if done is not None:
        return None, examples, done
    dataset = Dataset.from_dict({"input_ids": examples.input_ids, "labels": examples.labels})
    args = trainer_args(SFTConfig, cfg, out_dir, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                        progress=progress, **sft_trainer_kwargs(cfg))
    trainer = SFTTrainer(model=str(base_model), args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks)
    if not progress:
        trainer.remove_callback(PrinterCallback)
    # Set after __init__: TRL refuses a custom collator when padding-free.
    trainer.data_collator = CountingCollator(trainer.data_collator)
    return trainer, examples, None


def train_sft(data: pd.DataFrame, base_model: str | Path, out_dir: str | Path, cfg: TrainConfig,
              prompts: dict[str, str], progress: bool = True, callbacks: list | None = None) -> dict:
    """Fine-tune `base_model` on question/response rows into `out_dir` (layout: tops.train.common).

    Rerunning resumes from the last checkpoint, or returns the summary of a finished folder.
    Raises UserError, before training, for a row with no trainable token.
    """
    out_dir = Path(out_dir)
    trainer, examples, done = build_sft_trainer(data, base_model, out_dir, cfg, prompts, progress, callbacks)
    if done is not None:
        return done
    resumed_from = last_checkpoint(out_dir)
    _, curve, seconds = train_and_save(trainer, base_model=base_model, out_dir=out_dir,
                                       tokenizer=trainer.processing_class)
    real, positions = trainer.data_collator.totals(trainer.accelerator)
    summary = base_summary("sft", base_model, out_dir, cfg, trainer, curve, seconds, resumed_from)
    summary.update({
        "examples": len(examples),
        "system_prompt": cfg.system_prompt,
        "tokens": examples.tokens,
        "trainable_tokens": examples.trainable_tokens,
        "masked_tokens": examples.masked_tokens,
        "truncated_examples": examples.truncated,
        "batching": batching_for(cfg),
        "trained_tokens": real,
        "padding_share": round(1 - real / positions, 4) if positions else 0.0,
        "train_tokens_per_s": round(real / seconds, 1) if seconds > 0 else None,
    })
    if trainer.accelerator.is_main_process:
        finish(out_dir, summary)
    trainer.accelerator.wait_for_everyone()
    return summary
