"""`tops train dpo`: Iter-DPO on shortest-correct (chosen) vs incorrect (rejected) pairs.

TRL's DPOTrainer does the work. The paper's Iter-DPO used lr 5e-7 at 32B against 1e-5 for its
SFT stages, so without `dpo_learning_rate` the rate is the config's SFT rate / 20: it scales
with whatever rate the config found right for its model size and for LoRA vs full weights.
With LoRA the reference model is the base with the adapter switched off (no second copy). With
full weights on one process the reference log-probs are computed once, by the policy before its
first step (TRL's precompute_ref_log_probs), so no second model is held while training; on
several processes TRL prepares the reference model like the policy (sharded under ZeRO-3 /
FSDP), since its precompute writes a datasets cache file that the other ranks cannot open.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from tops.artifacts import fingerprint
from tops.config import TrainConfig
from tops.errors import UserError
from tops.tracking import check as check_trackers
from tops.tracking import point_tensorboard
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
)
from tops.train.examples import preference_texts, system_prompt_for
from tops.train.kernels import resolve_setup
from tops.train.sft import load_tokenizer

DPO_LR_FACTOR = 1 / 20  # paper: SFT 1e-5 -> Iter-DPO 5e-7


def dpo_learning_rate(cfg: TrainConfig) -> float:
    return cfg.dpo_learning_rate or cfg.learning_rate * DPO_LR_FACTOR


def reference_of(cfg: TrainConfig) -> str:
    """Where DPO's reference log-probs come from (see the module docstring)."""
    if cfg.lora.enabled:
        return "adapter off"
    return "log-probs precomputed" if cfg.num_processes == 1 else "reference model prepared like the policy"


def preference_dataset(pairs: pd.DataFrame, cfg: TrainConfig, prompts: dict[str, str], tokenizer):
    """Pairs -> TRL preference rows as rendered text (tops.train.examples.preference_texts: the
    whole responses, thinking included), under the configured system prompt."""
    from datasets import Dataset

    for column in ("question", "chosen", "rejected"):
        if column not in pairs.columns:
            raise UserError(f"pairs: column '{column}' is missing")
        if pairs[column].isna().any():
            raise UserError(f"pairs: column '{column}' has missing values")
    if pairs.empty:
        raise UserError("pairs: no rows")
    if cfg.system_prompt == "effort":
        if "effort" not in pairs.columns:
            raise UserError("train.system_prompt 'effort' needs an 'effort' column in the pairs")
        systems = [system_prompt_for("effort", e, prompts) for e in pairs["effort"]]
    else:
        systems = [system_prompt_for(cfg.system_prompt, None, prompts)] * len(pairs)
    return Dataset.from_dict(preference_texts(pairs, tokenizer, systems))


def train_dpo(pairs: pd.DataFrame, base_model: str | Path, out_dir: str | Path, cfg: TrainConfig,
              prompts: dict[str, str], progress: bool = True, callbacks: list | None = None) -> dict:
    """DPO-train `base_model` on question/chosen/rejected rows into `out_dir` (same layout,
    resume and completion rules as train_sft)."""
    check_trackers(cfg.report_to)
    with progress_bars(progress), out_of_memory_guard(Path(out_dir)):
        return _train_dpo(pairs, base_model, Path(out_dir), cfg, prompts, progress, callbacks)


def _train_dpo(pairs, base_model, out_dir: Path, cfg: TrainConfig, prompts, progress, callbacks) -> dict:
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(base_model)
    dataset = preference_dataset(pairs, cfg, prompts, tokenizer)
    lr, epochs = dpo_learning_rate(cfg), cfg.dpo_epochs or cfg.epochs
    data_key = fingerprint([dataset["prompt"], dataset["chosen"], dataset["rejected"]])
    done = open_out_dir(out_dir, run_key("dpo", base_model, cfg, data_key))
    if done is not None:
        return done

    # TRL's DPO collator pads batch_size pairs: no packed rows or token budget here, so only a
    # flash-attn model (which unpads inside attention) or a configured kernel is asked for.
    setup = resolve_setup(cfg)
    flex_only = setup.batching == "padding_free_flex" and not cfg.attn_implementation
    setup = replace(setup, batching="padded", max_tokens_per_batch=None,
                    attn_implementation=None if flex_only else setup.attn_implementation)
    args = trainer_args(DPOConfig, cfg, out_dir, learning_rate=lr, epochs=epochs, progress=progress,
                        setup=setup, beta=cfg.beta, max_length=cfg.max_length,
                        precompute_ref_log_probs=reference_of(cfg) == "log-probs precomputed")
    trainer = DPOTrainer(model=str(base_model), args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks)
    point_tensorboard(trainer, cfg, out_dir)
    if not progress:
        trainer.remove_callback(PrinterCallback)
    resumed_from = last_checkpoint(out_dir)
    curve, seconds = train_and_save(trainer, base_model=base_model, out_dir=out_dir,
                                       tokenizer=tokenizer, extra_panel="rewards/margins")
    summary = base_summary("dpo", base_model, out_dir, cfg, trainer, curve, seconds, resumed_from)
    margins = curve["rewards/margins"].tolist() if curve is not None and "rewards/margins" in curve else []
    summary.update({
        "pairs": len(pairs),
        "system_prompt": cfg.system_prompt,
        "rendering": "generation",  # prompt + whole response + end-of-turn (preference_texts)
        "beta": cfg.beta,
        "learning_rate": lr,
        "dpo_epochs": epochs,
        "setup": setup.describe(),
        "reference": reference_of(cfg),
        "peak_memory_gib": peak_memory_gib(),
        "first_margin": margins[0] if margins else None,
        "final_margin": margins[-1] if margins else None,
    })
    return finish(trainer, out_dir, summary, keep_checkpoints=cfg.keep_checkpoints)
