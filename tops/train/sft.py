"""`tops train sft`: format imitation (tag model) and self-improvement SFT, one function.

The two differ only in data and system prompt (TrainConfig.system_prompt "effort" vs "none").
Examples reach TRL's SFTTrainer pre-tokenized with their labels (tops.train.examples), so the
loss skips prompts and erroneous steps; TRL runs the training loop.

Batching keeps padding a small share of the compute; which way depends on the attention kernel
(measured on CPU with SmolLM2-135M and the tiny model, see bench/train_sft.py):
- flash attention: padding-free batches, each batch's sequences flattened into one row that
  the varlen kernel attends per sequence.
- SDPA / eager (CPU, or GPUs without flash attention): a flattened or packed row carries a
  block-diagonal mask over the whole row, so attention grows with the square of the row:
  TRL's packing ran 3x slower than padded batches on the tiny model and ran out of 24 GiB
  with SmolLM2 (8 rows of 1024 tokens flattened). So batches stay padded, and are cut from
  the examples sorted by length, in shuffled order (`LengthBucketSampler`): padding falls
  from ~25% (random batches) to a few percent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from tops.config import TrainConfig
from tops.train.common import (
    base_summary,
    finish,
    last_checkpoint,
    lora_config,
    open_out_dir,
    progress_bars,
    run_key,
    train_and_save,
    trainer_args,
    uses_cpu,
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
    padding_free = batching_for(cfg) == "padding_free"
    return {
        "packing": False,
        "padding_free": padding_free,
        # examples arrive truncated; TRL refuses max_length with padding-free and no packing
        "max_length": None if padding_free else cfg.max_length,
    }


class LengthBucketSampler:
    """Batches of near-equal length in random order: each epoch sorts the examples by length
    (ties broken at random), cuts consecutive runs of `batch_size`, and shuffles the runs. The
    longest run goes first, so a batch too big for memory fails at once (as in transformers'
    sampler); a short run goes last, so the DataLoader's batches stay aligned with the runs.

    transformers' group_by_length sorts only within random mega-batches of at most 50 batches
    (a quarter of the data on small sets), which left 11% padding on 96 examples. Seeded by
    epoch through `set_epoch`, which the Trainer calls, so a resumed run sees the same batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.lexsort((rng.random(len(self.lengths)), self.lengths))
        runs = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        short = [runs.pop()] if len(runs[-1]) < self.batch_size else []
        longest = runs.pop() if runs else None
        runs = [runs[r] for r in rng.permutation(len(runs))]
        runs = ([longest] if longest is not None else []) + runs + short
        return iter([int(i) for run in runs for i in run])


def _trainer_class():
    from trl import SFTTrainer

    class TopsSFTTrainer(SFTTrainer):
        """SFTTrainer drawing length-bucketed batches when `bucket_lengths` is set, and counting
        the real tokens and positions of the batches it trains on (padding share, tokens/s)."""

        bucket_lengths: list[int] | None = None
        fused_lm_head = True
        real_tokens = 0
        positions = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.fused_lm_head:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            # The model's own loss (full logits); TRL's entropy / token-accuracy metrics are skipped.
            from transformers import Trainer

            return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def _get_train_sampler(self, train_dataset=None):
            if self.bucket_lengths is None:
                return super()._get_train_sampler(train_dataset)
            return LengthBucketSampler(self.bucket_lengths, self.args.per_device_train_batch_size,
                                       self.args.seed)

        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")  # absent when padding-free: no padding at all
            self.positions += inputs["input_ids"].numel()
            self.real_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            return super().training_step(model, inputs, *args, **kwargs)

        def token_totals(self) -> tuple[int, int]:
            """(real tokens, positions) trained on, summed over all processes."""
            import torch

            counts = torch.tensor([self.real_tokens, self.positions], device=self.accelerator.device)
            counts = self.accelerator.reduce(counts, reduction="sum")
            return int(counts[0]), int(counts[1])

    return TopsSFTTrainer


def examples_key(examples: SFTExamples) -> str:
    """Content key of the tokenized examples (ids and labels, so masks count too)."""
    digest = hashlib.sha256()
    for ids, labels in zip(examples.input_ids, examples.labels, strict=True):
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(labels, dtype=np.int64).tobytes())
        digest.update(b"|")
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
    from trl import SFTConfig

    tokenizer = load_tokenizer(base_model)
    examples = build_sft_examples(data, tokenizer, cfg.system_prompt, prompts, cfg.max_length)
    done = open_out_dir(out_dir, run_key("sft", base_model, cfg, examples_key(examples)))
    if done is not None:
        return None, examples, done
    dataset = Dataset.from_dict({"input_ids": examples.input_ids, "labels": examples.labels})
    args = trainer_args(SFTConfig, cfg, out_dir, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                        progress=progress, **sft_trainer_kwargs(cfg))
    trainer = _trainer_class()(model=str(base_model), args=args, train_dataset=dataset,
                               processing_class=tokenizer, peft_config=lora_config(cfg),
                               callbacks=callbacks)
    trainer.fused_lm_head = cfg.fused_lm_head if cfg.fused_lm_head is not None else not uses_cpu()
    if batching_for(cfg) == "length_grouped":
        trainer.bucket_lengths = [len(ids) for ids in examples.input_ids]
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer, examples, None


def train_sft(data: pd.DataFrame, base_model: str | Path, out_dir: str | Path, cfg: TrainConfig,
              prompts: dict[str, str], progress: bool = True, callbacks: list | None = None) -> dict:
    """Fine-tune `base_model` on question/response rows into `out_dir` (layout: tops.train.common).

    Rerunning resumes from the last checkpoint, or returns the summary of a finished folder.
    Raises UserError, before training, for a row with no trainable token.
    """
    with progress_bars(progress):
        return _train_sft(data, base_model, Path(out_dir), cfg, prompts, progress, callbacks)


def _train_sft(data, base_model, out_dir: Path, cfg: TrainConfig, prompts, progress, callbacks) -> dict:
    trainer, examples, done = build_sft_trainer(data, base_model, out_dir, cfg, prompts, progress, callbacks)
    if done is not None:
        return done
    resumed_from = last_checkpoint(out_dir)
    curve, seconds = train_and_save(trainer, base_model=base_model, out_dir=out_dir,
                                       tokenizer=trainer.processing_class)
    real, positions = trainer.token_totals()
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
    return finish(trainer, out_dir, summary, keep_checkpoints=cfg.keep_checkpoints)
