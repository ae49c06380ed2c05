"""What the installed stack offers a training run, and the settings chosen from it.

Every choice here is detected, never assumed: the same config runs on a CPU laptop, a GPU
without flash-attn, and a GPU node with flash-attn, Liger and DeepSpeed, and the train summary
says which path ran (`TrainSetup.describe`).

Batching paths (measured in bench/train_sft.py; losses equal those of plain padded batches,
tests/test_batching.py):
- padding_free_flash: the micro-batch's sequences in one row with per-sequence position_ids;
  flash-attn's varlen kernel attends per sequence. No padding, no mask. Chosen by itself when
  flash-attn is installed; not yet measured on a GPU here.
- length_grouped: padded rows of near-equal length with a padding mask (SDPA): the default
  everywhere else. On an H200 this path (before the token budget) ran 1.61x plain TRL at a
  1.4B model, padding 1.1% against 33% (BENCHMARKS.md).
- padding_free_flex: the packed row under flex attention (block-sparse document mask). Opt-in:
  on an H200 it had not finished 55 steps of a 1.5B model in 270 s where plain TRL took 57 s
  (row lengths vary, so it keeps compiling).
- per_sequence: the packed row split back into its sequences, one forward each, SDPA with
  `is_causal` and no mask. Opt-in: on the same H200 run (with Liger) it had not finished in 175 s,
  and on CPU it ran 0.6x.
- padded: plain padded rows in random order (the baseline, `packing: false`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

from tops.config import TrainConfig

# Sequences at least this long get gradient checkpointing by default: at 3,000 tokens a 1.4B
# model's activations took ~40 GiB of a 65 GiB peak (issue 16), at 384 (the demo) a few MiB.
LONG_SEQUENCE_TOKENS = 2048

FLASH_ATTENTION = "flash_attention_2"
PADDING_FREE = ("padding_free_flash", "padding_free_flex", "per_sequence")


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def flex_attention_available() -> bool:
    """Flex attention trains only on CUDA (no backward on CPU) and compiles through Triton."""
    if not cuda_available() or not has_module("triton"):
        return False
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flash_attention_available() -> bool:
    return cuda_available() and has_module("flash_attn")


def deepspeed_config(cfg: TrainConfig) -> bool:
    """The run shards under DeepSpeed ZeRO (its optimizer keeps float32 master weights)."""
    if cfg.num_processes <= 1 or cfg.accelerate_config is None:
        return False
    import yaml

    try:
        text = cfg.accelerate_config.read_text()
    except OSError:
        return False
    return (yaml.safe_load(text) or {}).get("distributed_type") == "DEEPSPEED"


def choose_batching(cfg: TrainConfig) -> str:
    """The batching path: the configured one, or the best the installed kernels allow."""
    if not cfg.packing:
        return "padded"
    if cfg.batching != "auto":
        return cfg.batching
    attn = (cfg.attn_implementation or "").replace("kernels-community/", "")
    if attn.startswith(("flash_attention", "flash-attn")) or (not attn and flash_attention_available()):
        return "padding_free_flash"
    if attn == "flex_attention":
        return "padding_free_flex"
    # Everything else: see the module docstring for what the other paths measured.
    return "length_grouped"


def attention_for(cfg: TrainConfig, batching: str) -> str | None:
    """attn_implementation to load the model with (None: transformers' default, SDPA)."""
    if cfg.attn_implementation:
        return cfg.attn_implementation
    return {"padding_free_flash": FLASH_ATTENTION, "padding_free_flex": "flex_attention"}.get(batching)


def bf16_for(cfg: TrainConfig) -> bool:
    """train.bf16 where the hardware computes in bfloat16 (tops/cpu_dtype.py: not on an AVX2-only CPU)."""
    from tops.cpu_dtype import train_bf16

    return train_bf16(cfg.bf16, cuda_available())


def model_dtype_for(cfg: TrainConfig, bf16: bool) -> str:
    """Weights' dtype when bf16 mixed precision does (`bf16`) or does not run."""
    if cfg.model_dtype is not None:
        return cfg.model_dtype
    if bf16 and (cfg.lora.enabled or deepspeed_config(cfg)):
        return "bfloat16"
    return "float32"


def gradient_checkpointing_for(cfg: TrainConfig) -> bool:
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    return cfg.max_length >= LONG_SEQUENCE_TOKENS


def liger_for(cfg: TrainConfig) -> bool:
    """Opt-in: the two H200 runs that had Liger on by default were the two slow ones (not isolated)."""
    return bool(cfg.liger_kernels) and cuda_available() and has_module("liger_kernel")


@dataclass(frozen=True)
class TrainSetup:
    """The resolved settings of one run (what the summary reports as `setup`)."""

    batching: str
    attn_implementation: str | None
    model_dtype: str
    bf16: bool  # mixed precision as it runs (train.bf16 on hardware with bfloat16 kernels)
    gradient_checkpointing: bool
    liger_kernels: bool
    torch_compile: bool
    max_tokens_per_batch: int | None

    @property
    def padding_free(self) -> bool:
        return self.batching in PADDING_FREE

    def describe(self) -> dict:
        return asdict(self)


def resolve_setup(cfg: TrainConfig) -> TrainSetup:
    batching = choose_batching(cfg)
    bf16 = bf16_for(cfg)
    return TrainSetup(batching=batching, attn_implementation=attention_for(cfg, batching),
                      model_dtype=model_dtype_for(cfg, bf16), bf16=bf16,
                      gradient_checkpointing=gradient_checkpointing_for(cfg),
                      liger_kernels=liger_for(cfg), torch_compile=cfg.torch_compile,
                      max_tokens_per_batch=cfg.max_tokens_per_batch)
