"""Where a run lives, which model it starts from, and the engine that samples it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from tops.config.base import Strict
from tops.layout import RUNS_ROOT


class RunConfig(Strict):
    name: str = "demo"
    root: Path = Path(RUNS_ROOT)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _a_name_not_a_path(cls, name: str) -> str:
        """The run folder is root/name and a flow deletes inside it: a name cannot leave root."""
        if not name or name in (".", "..") or len(name) > 128:
            raise ValueError("must be a folder name of 1 to 128 characters, not '.' or '..'")
        if any(char in name for char in "/\\\0") or Path(name).is_absolute():
            raise ValueError("must be a plain folder name (no '/', '\\' or absolute path)")
        if not name.isprintable():
            raise ValueError("must be printable (no control characters)")
        return name

    @property
    def dir(self) -> Path:
        return self.root / self.name


class ModelConfig(Strict):
    # An alias ("smollm2-135m-instruct", "tiny"), a local folder, or a Hub id.
    base: str = "smollm2-135m-instruct"


class EngineConfig(Strict):
    kind: Literal["vllm", "hf", "openai"] = "vllm"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0
    max_model_len: int | None = Field(2048, ge=64)
    # vLLM
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = True
    cpu_kv_cache_gb: float = Field(2.0, gt=0)
    enable_prefix_caching: bool = True
    # The engine core (scheduler and model) in the stage's own process instead of the separate
    # process vLLM spawns by default (which imports vLLM and torch again). None: in-process on a
    # CPU, where the spawn was most of a small engine's start (BENCHMARKS.md), vLLM's own way on GPUs.
    in_process: bool | None = None
    # transformers fallback
    batch_size: int = Field(32, ge=1)
    # OpenAI-compatible HTTP (vllm serve, a teacher API)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model: str | None = None
    tokenizer: str | None = None
    # Requests in flight at once (`concurrency` is its old name, still read).
    max_concurrency: int = Field(8, ge=1, le=1024, validation_alias=AliasChoices("max_concurrency", "concurrency"))
    # The server is vLLM: ask for token ids (exact counts) and allow continuing partial answers.
    vllm_extensions: bool = True
    # One attempt's total deadline, connection to last byte (a server dripping bytes is cut off).
    request_timeout_s: float = Field(600, gt=0, le=86400)
    # Retries of a 429, 408, 5xx, dropped connection or deadline (tops/engines/retrying.py): waits
    # double from retry_backoff_s with jitter, at most retry_max_wait_s; a Retry-After is honoured
    # up to that cap. After the last one the shard fails with one line; a rerun resumes.
    max_retries: int = Field(6, ge=0, le=100)
    retry_backoff_s: float = Field(1.0, ge=0, le=3600)
    retry_max_wait_s: float = Field(60.0, ge=0, le=3600)
    # Engine processes (tops/gpus.py): on GPUs, gpus / tensor_parallel_size of them, each pinned to
    # its own GPUs with CUDA_VISIBLE_DEVICES, sampling a disjoint shard of the problems.
    gpus: int | None = Field(None, ge=0)  # GPUs of this node to use; None: the machine's count
    gpu_memory_gib: float | None = Field(None, gt=0)  # one GPU, for the memory estimate; None: the machine's
    # How many engine processes: None = as many as the GPUs allow (one on a CPU); on a CPU, set
    # it to run several engine processes over the cores.
    data_parallel_size: int | None = Field(None, ge=1)

    @property
    def remote(self) -> bool:
        """Served by another process (an OpenAI-compatible server holds its own GPUs)."""
        return self.kind == "openai"

    @property
    def gpus_per_engine(self) -> int:
        """GPUs one engine process of ours takes: vLLM's tensor-parallel group; the transformers
        engine runs on one GPU; a remote engine none (tops.gpus, tops.memory, the Ray placement)."""
        if self.remote:
            return 0
        return self.tensor_parallel_size if self.kind == "vllm" else 1

    @model_validator(mode="after")
    def _openai_needs_url(self) -> EngineConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("engine.base_url is required when engine.kind is 'openai'")
        return self


class SamplingConfig(Strict):
    temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)
