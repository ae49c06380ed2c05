"""`tops train sft`: format imitation (tag model) and self-improvement SFT, one function.

The two differ only in data and system prompt (TrainConfig.system_prompt "effort" vs "none").
Examples reach TRL's SFTTrainer pre-tokenized with their labels (tops.train.examples), so the
loss skips prompts and erroneous steps; TRL runs the training loop. Micro-batches come from
tops.train.batching (which examples, how many tokens) laid out as the path chosen in
tops.train.kernels needs (padded rows, one packed row, or one sequence per forward).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from tops.config import TrainConfig
from tops.tracking import check as check_trackers
from tops.tracking import point_tensorboard
from tops.train.batching import (
    MicroBatchSampler,
    PackedCollator,
    PaddedCollator,
    positions_and_tokens,
    split_packed,
)
from tops.train.common import (
    base_summary,
    finish,
    last_checkpoint,
    lora_config,
    open_out_dir,
    out_of_memory_guard,
    peak_memory_gib,
    progress_bars,
    run_key,
    train_and_save,
    trainer_args,
    uses_cpu,
)
from tops.train.examples import SFTExamples, build_sft_examples
from tops.train.kernels import TrainSetup, resolve_setup


def _trainer_class():
    from trl import SFTTrainer

    class TopsSFTTrainer(SFTTrainer):
        """SFTTrainer drawing the micro-batches of tops.train.batching, running one forward per
        sequence on the per_sequence path, and counting the real tokens and positions of the
        micro-batches it trains on (padding share, tokens/s)."""

        setup: TrainSetup
        example_lengths: list[int]
        max_length: int
        fused_lm_head = True
        real_tokens = 0
        positions = 0
        largest_micro_batch = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.setup.batching == "per_sequence" and "position_ids" in inputs and not return_outputs:
                return sum(self._one_loss(model, piece, num_items_in_batch) for piece in split_packed(inputs))
            return self._one_loss(model, inputs, num_items_in_batch, return_outputs)

        def _one_loss(self, model, inputs, num_items_in_batch, return_outputs=False):
            if self.fused_lm_head:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            # The model's own loss (full logits); TRL's entropy / token-accuracy metrics are skipped.
            from transformers import Trainer

            return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def _get_train_sampler(self, train_dataset=None):
            return MicroBatchSampler(self.example_lengths, batching=self.setup.batching,
                                     batch_size=self.args.per_device_train_batch_size,
                                     max_tokens=self.setup.max_tokens_per_batch, max_length=self.max_length,
                                     seed=self.args.seed, rank=self.args.process_index,
                                     processes=self.args.world_size)

        def training_step(self, model, inputs, *args, **kwargs):
            positions, real = positions_and_tokens(inputs)
            self.positions += positions
            self.real_tokens += real
            self.largest_micro_batch = max(self.largest_micro_batch, positions)
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
    setup = resolve_setup(cfg)
    dataset = Dataset.from_dict({"input_ids": examples.input_ids, "labels": examples.labels})
    # Examples arrive tokenized, labelled and truncated: TRL neither packs nor pads them.
    args = trainer_args(SFTConfig, cfg, out_dir, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                        progress=progress, setup=setup, packing=False, padding_free=False, max_length=None)
    collator = (PackedCollator(varlen_kwargs=setup.batching == "padding_free_flash") if setup.padding_free
                else PaddedCollator(tokenizer.pad_token_id))
    trainer = _trainer_class()(model=str(base_model), args=args, train_dataset=dataset, data_collator=collator,
                               processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks)
    point_tensorboard(trainer, cfg, out_dir)
    trainer.setup = setup
    trainer.example_lengths = [len(ids) for ids in examples.input_ids]
    trainer.max_length = cfg.max_length
    trainer.fused_lm_head = cfg.fused_lm_head if cfg.fused_lm_head is not None else not uses_cpu()
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer, examples, None


def train_sft(data: pd.DataFrame, base_model: str | Path, out_dir: str | Path, cfg: TrainConfig,
              prompts: dict[str, str], progress: bool = True, callbacks: list | None = None) -> dict:
    """Fine-tune `base_model` on question/response rows into `out_dir` (layout: tops.train.common).

    Rerunning resumes from the last checkpoint, or returns the summary of a finished folder.
    Raises UserError, before training, for a row with no trainable token; out of memory is
    raised as it came (and marked for the launching process, see out_of_memory_guard).
    """
    check_trackers(cfg.report_to)  # one line before anything is written, not a login prompt later
    with progress_bars(progress), out_of_memory_guard(Path(out_dir)):
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
        "rendering": examples.rendering,  # how the chat template's rows kept the whole response
        "batching": trainer.setup.batching,
        "setup": trainer.setup.describe(),
        "largest_micro_batch_tokens": trainer.largest_micro_batch,
        "trained_tokens": real,
        "padding_share": round(1 - real / positions, 4) if positions else 0.0,
        "train_tokens_per_s": round(real / seconds, 1) if seconds > 0 else None,
        "peak_memory_gib": peak_memory_gib(),
    })
    return finish(trainer, out_dir, summary, keep_checkpoints=cfg.keep_checkpoints)
