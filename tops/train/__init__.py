"""Training stage: SFT (tag model, self-improvement, Iter-SFT) and DPO with TRL, LoRA or full
weights, resumable, merged into plain model folders that vLLM and transformers load."""

from tops.train.common import maybe_relaunch, relaunch_command
from tops.train.dpo import train_dpo
from tops.train.grpo import train_grpo
from tops.train.sft import train_sft

__all__ = ["maybe_relaunch", "relaunch_command", "train_dpo", "train_grpo", "train_sft"]
