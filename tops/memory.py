"""Expected GPU memory per process for training and sampling stages, from the model's
config.json alone (no weights loaded), so a plan can say "will not fit" before a node is booked.

Training (per GPU): weights, gradients and AdamW state (sharded over the processes under
ZeRO-3 / FSDP), LoRA or full fine-tuning, the activations a micro-batch keeps for the backward
pass (all of each layer's, or only each layer's input under gradient checkpointing plus one
layer recomputed), the logits, and DPO's reference model. Sampling (per GPU of an engine):
weights / tensor_parallel_size and the KV cache of full-length sequences.

Activations per token and layer of a Llama/Qwen-shaped decoder, in bytes, under bf16 compute
with flash / SDPA attention (nothing quadratic in the length is kept):
  2 RMSNorms, each an fp32 input and a bf16 normalised copy ...... 2 x (4h + 2h)
  the bf16 inputs of the q/k/v and gate/up projections ............ 2 x 2h
  attention: q and the attention output (2h each), k and v (2kv each)   4h + 4kv
  MLP: gate, silu(gate), up, and their product (the down input) ... 4 x 2I
  total = 20h + 4kv + 8I   (h hidden, kv = kv_heads x head_dim, I intermediate)
It is an estimate (allocator fragmentation and temporary buffers come on top): for a 1.4B
Qwen2-shaped model (h 1536, I 8960, 28 layers) at batch 4 of chains up to 3,000 tokens with
float32 weights under bf16 autocast it gives about 56 GiB; the same run measured 65-68 GiB
peak on an H200 (/work/shared/reference/environment.md): read it as a lower bound, ~20% under.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

GIB = 1024 ** 3
SHIPPED_CONFIGS = Path(__file__).parent / "model_configs"  # <org>/<name>/config.json of Hub models
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# vLLM's CUDA graphs, sampler and activation peak on top of weights and KV cache: a rough allowance.
SAMPLING_OVERHEAD_GIB = 2.0
# An estimate this close to the limit may not fit: measured training peaks ran ~20% above it.
TIGHT_MARGIN = 1.25


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, read from a (dense, decoder-only) model's config.json."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool
    dtype: str = "bfloat16"  # the checkpoint's torch_dtype

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        config = config.get("text_config", config)  # multimodal wrappers nest the language model
        if any(k in config for k in ("num_experts", "num_local_experts", "n_routed_experts")):
            raise ValueError("mixture-of-experts models are not covered by this estimate")
        heads = config["num_attention_heads"]
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            dtype=dtype if dtype in _DTYPE_BYTES else "bfloat16",
        )

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        q_out = self.heads * self.head_dim
        return (self.hidden * q_out + 2 * self.hidden * self.kv_dim + q_out * self.hidden
                + 3 * self.hidden * self.intermediate)

    @property
    def params(self) -> int:
        q_out = self.heads * self.head_dim
        per_layer = self.linear_params_per_layer + 2 * self.hidden  # + two RMSNorm weights
        if self.qkv_bias:
            per_layer += q_out + 2 * self.kv_dim
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden  # + the final norm

    def lora_params(self, r: int) -> int:
        """Adapter parameters with LoRA rank r on every linear layer of every block."""
        q_out = self.heads * self.head_dim
        shapes = [(self.hidden, q_out), (self.hidden, self.kv_dim), (self.hidden, self.kv_dim),
                  (q_out, self.hidden), (self.hidden, self.intermediate), (self.hidden, self.intermediate),
                  (self.intermediate, self.hidden)]
        return self.layers * sum(r * (i + o) for i, o in shapes)

    @property
    def activation_bytes_per_token_layer(self) -> int:
        return 20 * self.hidden + 4 * self.kv_dim + 8 * self.intermediate

    def kv_bytes_per_token(self, dtype_bytes: int, tensor_parallel: int = 1) -> int:
        """K and V of every layer for one token on one GPU (KV heads split over the TP ranks,
        replicated when there are fewer heads than ranks)."""
        heads_per_gpu = math.ceil(self.kv_heads / tensor_parallel)
        return 2 * self.layers * heads_per_gpu * self.head_dim * dtype_bytes


def load_shape(model: str) -> ModelShape:
    """The shape of a model folder or Hub id from its config.json only (a Hub id reads the
    cached file, else the one shipped in tops/model_configs, else downloads that one small
    file). ValueError when it cannot be found."""
    path = Path(model).expanduser()
    config_path = path / "config.json"
    if not config_path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
            shipped = SHIPPED_CONFIGS / model / "config.json"  # the models our configs name (offline plans)
            config_path = (Path(cached) if isinstance(cached, str) else shipped if shipped.is_file()
                           else Path(_download_quietly(model)))
        except Exception as exc:
            raise ValueError(f"no config.json for '{model}' ({exc.__class__.__name__})") from None
    return ModelShape.from_config(json.loads(config_path.read_text()))


def _download_quietly(model: str) -> str:
    """One small file from the Hub, without five logged retries when the Hub cannot be reached
    (an offline plan should say "not estimated" at once, not after half a minute of warnings)."""
    import logging
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, hf_hub_download

    if constants.HF_HUB_OFFLINE:
        raise OSError("HF_HUB_OFFLINE is set")
    socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)  # fails at once offline
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        return hf_hub_download(model, "config.json")
    finally:
        hub_log.setLevel(level)


@dataclass
class Estimate:
    """Bytes per GPU, by part, for one stage."""

    stage: str
    parts: dict[str, float]
    gpus: int  # GPUs the stage runs on (processes x tensor parallel)
    gpu_bytes: float | None  # memory of one GPU, None when unknown
    budget_share: float = 1.0  # share of a GPU the stage may use (vLLM's gpu_memory_utilization)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def room(self) -> float | None:
        return None if self.gpu_bytes is None else self.gpu_bytes * self.budget_share

    @property
    def verdict(self) -> str | None:
        """"fits", "tight" (within the estimate's error of the limit: it ran ~20% under a
        measured peak) or "will not fit"; None when the GPU's memory is unknown."""
        if self.room is None:
            return None
        if self.total > self.room:
            return "will not fit"
        return "tight" if self.total * TIGHT_MARGIN > self.room else "fits"

    @property
    def warning(self) -> str | None:
        if self.verdict == "will not fit":
            return f"{self.stage} will not fit: ~{self.total / GIB:.1f} GiB per GPU, {self.room / GIB:.0f} GiB usable"
        if self.verdict == "tight":
            return (f"{self.stage} may not fit: ~{self.total / GIB:.1f} GiB per GPU of {self.room / GIB:.0f} GiB "
                    f"usable, and real peaks ran ~20% above this estimate")
        return None

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in self.parts.items() if value)
        text = f"{self.stage}: ~{self.total / GIB:.1f} GiB per GPU ({parts})"
        if self.room is not None:
            text += f" of {self.room / GIB:.0f} GiB — {self.verdict.upper() if self.verdict != 'fits' else 'fits'}"
        return "; ".join([text, *self.notes])


def _sharded(train_cfg) -> bool:
    """ZeRO-3 or FSDP: weights, gradients and optimizer state split over the processes."""
    if train_cfg.num_processes <= 1 or train_cfg.accelerate_config is None:
        return False
    try:
        launch = yaml.safe_load(Path(train_cfg.accelerate_config).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    if launch.get("distributed_type") == "FSDP":
        return True
    return launch.get("distributed_type") == "DEEPSPEED" and \
        (launch.get("deepspeed_config") or {}).get("zero_stage") == 3


def _deepspeed(train_cfg) -> bool:
    try:
        launch = yaml.safe_load(Path(train_cfg.accelerate_config).read_text()) or {}
    except (OSError, TypeError, yaml.YAMLError):
        return False
    return launch.get("distributed_type") == "DEEPSPEED"


def train_estimate(shape: ModelShape, train_cfg, method: str = "sft", gpu_bytes: float | None = None,
                   stage: str = "train") -> Estimate:
    """Per-GPU memory of one training stage with this TrainConfig (`method` sft or dpo), with the
    settings training resolves it to (tops.train.kernels: weights dtype, checkpointing)."""
    from tops.train.kernels import gradient_checkpointing_for, model_dtype_for

    model_dtype = model_dtype_for(train_cfg, train_cfg.bf16)  # planned for GPUs: bf16 as asked
    weight_bytes = _DTYPE_BYTES.get(model_dtype, _DTYPE_BYTES[shape.dtype])
    processes = train_cfg.num_processes
    shards = processes if _sharded(train_cfg) else 1
    p = shape.params
    notes = []
    parts: dict[str, float] = {}
    if train_cfg.lora.enabled:
        lora = shape.lora_params(train_cfg.lora.r)
        parts["weights"] = p * weight_bytes / shards + lora * 4
        parts["gradients"] = lora * 4
        parts["optimizer"] = lora * 8
    elif _sharded(train_cfg) and _deepspeed(train_cfg) and train_cfg.bf16:
        # DeepSpeed mixed precision: bf16 weights and gradients, fp32 master weights + 2 moments.
        parts["weights"] = p * 2 / shards
        parts["gradients"] = p * 2 / shards
        parts["optimizer"] = p * 12 / shards
    else:
        # torch AdamW keeps its two moments in the weights' dtype.
        parts["weights"] = p * weight_bytes / shards
        parts["gradients"] = p * weight_bytes / shards
        parts["optimizer"] = p * 2 * weight_bytes / shards
    if weight_bytes == 4 and train_cfg.bf16 and not _sharded(train_cfg):
        parts["autocast copies"] = p * 2  # bf16 casts of the fp32 weights, cached for the step

    # SFT with a token budget: at most that many positions a micro-batch; else batch_size
    # sequences of max_length (the worst case). DPO: chosen + rejected, no budget.
    if method == "sft" and train_cfg.max_tokens_per_batch is not None:
        tokens, batch_note = train_cfg.max_tokens_per_batch, "the token budget"
    else:
        sequences = train_cfg.batch_size * (2 if method == "dpo" else 1)
        tokens = sequences * train_cfg.max_length
        batch_note = (f"batch {train_cfg.batch_size} x max_length {train_cfg.max_length}"
                      f"{' x 2 for DPO' if method == 'dpo' else ''}, the worst case")
    per_layer = shape.activation_bytes_per_token_layer
    if gradient_checkpointing_for(train_cfg):
        # the residual stream is in the weights' dtype (DeepSpeed's bf16 mode casts the weights)
        bf16_weights = weight_bytes == 2 or (_sharded(train_cfg) and _deepspeed(train_cfg) and train_cfg.bf16)
        residual = 2 if bf16_weights else 4
        parts["activations"] = tokens * (shape.layers * residual * shape.hidden + per_layer)
    else:
        parts["activations"] = tokens * shape.layers * per_layer
    # SFT on a GPU uses TRL's chunked LM head (fused_lm_head None or True): the full logits are
    # never built. Without it: bf16 logits, the loss's fp32 copy and its saved log-softmax (10
    # bytes per token and vocabulary entry). DPO: bf16 logits, the bf16 log-softmax TRL keeps
    # row by row, and their gradient (6).
    if method == "dpo":
        parts["logits"] = tokens * shape.vocab * 6
    elif train_cfg.fused_lm_head is False:
        parts["logits"] = tokens * shape.vocab * 10
    # DPO's reference: the adapter switched off (LoRA), log-probs computed before training (one
    # process), else a second model prepared like the policy (tops.train.dpo.reference_of).
    if method == "dpo" and not train_cfg.lora.enabled and processes > 1:
        parts["reference model"] = p * weight_bytes / shards
    notes.append(f"{processes} process(es), {'sharded (ZeRO-3/FSDP)' if shards > 1 else 'weights on every GPU'}, "
                 f"{tokens:,} tokens per micro-batch ({batch_note})")
    return Estimate(stage, parts, gpus=processes, gpu_bytes=gpu_bytes, notes=notes)


def sampling_estimate(shape: ModelShape, engine_cfg, gpu_bytes: float | None = None,
                      stage: str = "sample") -> Estimate:
    """Per-GPU memory of one engine process: weights over its tensor-parallel GPUs, runtime
    overhead, and the KV cache of one sequence at max_model_len (the least vLLM must hold)."""
    dtype_bytes = _DTYPE_BYTES.get(engine_cfg.dtype, _DTYPE_BYTES[shape.dtype])
    tp = max(engine_cfg.gpus_per_engine, 1)
    length = engine_cfg.max_model_len or 32768
    kv_token = shape.kv_bytes_per_token(dtype_bytes, tp)
    parts = {"weights": shape.params * dtype_bytes / tp, "runtime": SAMPLING_OVERHEAD_GIB * GIB}
    notes = []
    if engine_cfg.kind == "vllm":
        parts["KV cache (1 sequence)"] = length * kv_token
        share = engine_cfg.gpu_memory_utilization
        if gpu_bytes is not None:
            room = gpu_bytes * share - parts["weights"] - parts["runtime"]
            notes.append(f"KV cache room for ~{max(0, int(room // (length * kv_token)))} sequences of "
                         f"{length:,} tokens at once ({kv_token / 1024:.0f} KiB per token per GPU)")
    else:  # transformers: a padded batch of full-length sequences, no paging
        parts[f"KV cache ({engine_cfg.batch_size} sequences)"] = engine_cfg.batch_size * length * kv_token
        share = 1.0
    return Estimate(stage, parts, gpus=tp, gpu_bytes=gpu_bytes, budget_share=share, notes=notes)


def gpu_memory_bytes(engine_cfg) -> float | None:
    """One GPU's memory: engine.gpu_memory_gib, else the first visible GPU's, else None."""
    if engine_cfg.gpu_memory_gib is not None:
        return engine_cfg.gpu_memory_gib * GIB
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:
        return None
    return None


@functools.cache
def _shape_or_reason(model: str) -> ModelShape | str:
    try:
        return load_shape(_local_model(model))
    except (ValueError, KeyError) as exc:
        return f"not estimated: {exc}"


def estimate_line(cfg, stage: str, *, train: bool = False, method: str = "sft", engine=None,
                  model: str | None = None) -> tuple[str, str | None]:
    """(the plan's memory note for one stage, a warning when it will not or may not fit). A
    training stage reads cfg.train; a sampling stage `engine` (cfg.engine by default)."""
    shape = _shape_or_reason(model or cfg.model.base)
    if isinstance(shape, str):
        return shape, None
    engine = engine or cfg.engine
    if not train and engine.remote:
        return f"served by {engine.base_url}", None
    gpu_bytes = gpu_memory_bytes(engine) or gpu_memory_bytes(cfg.engine)
    estimate = (train_estimate(shape, cfg.train, method, gpu_bytes, stage) if train
                else sampling_estimate(shape, engine, gpu_bytes, stage))
    line = estimate.line().split(": ", 1)[1]
    if gpu_bytes is None:
        line += "; GPU memory unknown here (engine.gpu_memory_gib), fit not checked"
    return line, estimate.warning


def _local_model(name: str) -> str:
    """Aliases to their folder without building or converting anything (a plan loads nothing)."""
    from tops.models import alias_folder

    folder = alias_folder(name)
    return str(folder) if folder is not None else name
