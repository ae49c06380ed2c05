"""The `grpo:` section: reinforcement learning with LASER's length rewards (tops/rewards.py) on
TRL's GRPOTrainer (tops/train/grpo.py). Batch, epochs, LoRA and processes come from `train`
(and flow.train_overrides.iter_grpo); what is RL-specific lives here.

Defaults follow LASER's 1.5B recipe where it carries over (alpha 0.5, 8 rollouts, temperature
0.6, lr 1e-6, KL 0.001, clip 0.2 / 0.28, targets from 1,024 in steps of 1,024, monitor every 20
steps); the batch and the response limit are smaller than theirs (128 prompts, 16,384 tokens).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tops.config.base import MAX_SAMPLES, Strict

MAX_TOKENS = 1 << 20  # a completion length no model reaches: bounds a mistyped value


class GrpoConfig(Strict):
    # accuracy: +1 / -0.5 / -1 only; laser: + alpha within target_length; laser-d: the target of
    # the response's difficulty bucket, re-estimated on a monitor set; laser-de: also + alpha for
    # a long wrong response that does not loop.
    reward: Literal["accuracy", "laser", "laser-d", "laser-de"] = "laser-d"
    alpha: float = Field(0.5, ge=0)
    target_length: int = Field(4096, ge=1, le=MAX_TOKENS)  # laser's one target (theirs: 2,048 / 4,096 / 8,192)
    # LASER-D candidate targets: target_lower, then steps of target_interval up to
    # max_completion_length (rewards.length_thresholds).
    target_lower: int = Field(1024, ge=1, le=MAX_TOKENS)
    target_interval: int = Field(1024, ge=1, le=MAX_TOKENS)
    expected_correct: int = Field(1, ge=1, le=MAX_SAMPLES)
    monitor_every: int = Field(20, ge=1)  # steps between target re-estimates (and one before the first)
    monitor_problems: int = Field(64, ge=1)  # training problems the monitor samples (theirs: 500)
    monitor_rollouts: int | None = Field(None, ge=1, le=MAX_SAMPLES)  # None: num_generations
    num_generations: int = Field(8, ge=2, le=MAX_SAMPLES)  # rollouts per prompt (the group)
    prompts_per_step: int = Field(16, ge=1)  # prompts per optimizer step
    max_completion_length: int = Field(4096, ge=8, le=MAX_TOKENS)
    temperature: float = Field(0.6, gt=0)
    learning_rate: float = Field(1e-6, gt=0)
    beta: float = Field(0.001, ge=0)  # KL to the reference; 0 loads no reference model
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float | None = Field(0.28, gt=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # auto: transformers' generate on CPU, vLLM on GPUs (when installed). vLLM runs inside the
    # trainer (colocate) or is a `trl vllm-serve` at vllm_server_base_url (server).
    rollouts: Literal["auto", "transformers", "vllm"] = "auto"
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_server_base_url: str | None = None
    logging_steps: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _targets_fit(self) -> GrpoConfig:
        if self.reward in ("laser-d", "laser-de") and self.target_lower > self.max_completion_length:
            raise ValueError(f"target_lower ({self.target_lower}) is above max_completion_length "
                             f"({self.max_completion_length}): no candidate target")
        return self

    @property
    def rollouts_per_monitor_problem(self) -> int:
        return self.monitor_rollouts or self.num_generations
