"""SFT / DPO training: LoRA, batching, memory and kernel settings (resolved in tops/train/kernels.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tops.config.base import Strict


class LoraConfig(Strict):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class TrainConfig(Strict):
    system_prompt: str = "none"  # an effort name, or "effort" to use each row's own effort
    learning_rate: float = Field(1e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    # Keep padding a small share of the compute (see tops/train/batching.py). False: plain
    # padded batches in random order, whatever `batching` says.
    packing: bool = True
    # How micro-batches are laid out. "auto": padding_free_flash (flash-attn varlen) when
    # flash-attn is installed, else length_grouped; padding_free_flex and per_sequence are
    # opt-in (slow on an H200, see tops/train/kernels.py); the train summary names the path.
    batching: Literal["auto", "padding_free_flash", "padding_free_flex", "per_sequence",
                      "length_grouped", "padded"] = "auto"
    # Token budget of one micro-batch on one process: positions computed (rows x longest when
    # padded, the sum of lengths when padding-free). None: `batch_size` examples per micro-batch.
    # With a budget, a micro-batch holds as many examples as fit and `batch_size` is not used.
    max_tokens_per_batch: int | None = Field(None, ge=16)
    bf16: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
    beta: float = Field(0.1, gt=0)  # DPO
    num_processes: int = Field(1, ge=1)
    # Nodes one training stage spans (flow.runner: ray places one `accelerate launch` per node,
    # tops/flow/ray_cluster.py); num_processes is the total over them.
    num_machines: int = Field(1, ge=1)
    accelerate_config: Path | None = None
    logging_steps: int = Field(5, ge=1)
    # Where the curves go (tops/tracking.py): TensorBoard into <run>/logs/<stage>/ by default;
    # wandb / mlflow / trackio as TRL passes them on; "none" for nothing. Checked before training.
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio", "none"]] = Field(
        default_factory=lambda: ["tensorboard"])
    # TensorBoard's folder; None: <run>/logs/<the output folder's name> (tops.layout.logs_for).
    logging_dir: Path | None = None
    save_steps: int = Field(50, ge=1)
    # Trainer checkpoints (weights + optimizer state, ~3x the model) only serve a resume; a
    # finished run deletes them unless this is True.
    keep_checkpoints: bool = False
    seed: int = 0
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke runs, benchmarks)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    # Saves activation memory on long sequences for ~30% more compute. None: on when max_length
    # >= LONG_SEQUENCE_TOKENS (tops/train/kernels.py).
    gradient_checkpointing: bool | None = None
    # Weights while training ("auto": as stored). None: with bf16, bfloat16 where the optimizer
    # keeps its own float32 master copy (DeepSpeed ZeRO) or the weights are frozen (LoRA); a
    # plain or FSDP AdamW updates the weights themselves (float32: bf16 rounds away lr-1e-5 steps).
    model_dtype: Literal["float32", "bfloat16", "auto"] | None = None
    attn_implementation: str | None = None  # None: follows `batching` (e.g. flash_attention_2)
    # Liger's Triton kernels (RMSNorm, SwiGLU, RoPE) on CUDA when liger-kernel is installed:
    # opt-in (True), since the H200 runs with it on were slow; TRL's chunked LM head already
    # keeps the logits off memory.
    liger_kernels: bool | None = None
    torch_compile: bool = False  # torch.compile the model (recompiles per new shape)
    # SFT: TRL's chunked log-prob LM head never builds the full logits (memory on GPUs, large
    # vocabularies) but runs the head in float32: on CPU it took ~1.5 s of a 4 s SmolLM2 step.
    # None: on with CUDA, off on CPU (the model's own loss under bf16 autocast).
    fused_lm_head: bool | None = None
    # DPO: None = learning_rate / 20 (the paper: SFT 1e-5, Iter-DPO 5e-7) and `epochs`.
    dpo_learning_rate: float | None = Field(None, gt=0)
    dpo_epochs: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _processes_per_machine(self):
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) must be a multiple of num_machines "
                             f"({self.num_machines}): every node runs the same number of processes")
        return self

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        """`--set train.report_to=none` or a list; "none" means nothing, so it stands alone."""
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and "none" in value and len(value) > 1:
            raise ValueError("'none' cannot be combined with a tracker")
        if isinstance(value, list) and len(set(map(str, value))) != len(value):
            raise ValueError("a tracker is named twice")
        return value

    @model_validator(mode="after")
    def _budget_fits_one_example(self):
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < self.max_length:
            raise ValueError(f"max_tokens_per_batch ({self.max_tokens_per_batch}) must be at least "
                             f"max_length ({self.max_length}): one example has to fit in a micro-batch")
        return self
