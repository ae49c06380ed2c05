"""bfloat16 on a CPU only where it has bfloat16 kernels (tops/cpu_dtype.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from tops import cpu_dtype


def test_detection_agrees_with_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.exists():
        assert cpu_dtype.cpu_has_native_bf16()  # off x86 the config decides
        return
    flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
    assert cpu_dtype.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_runs_as_float32_only_without_bf16_kernels(monkeypatch, capsys, native):
    monkeypatch.setattr(cpu_dtype, "cpu_has_native_bf16", lambda: native)
    for asked in ("bfloat16", "auto"):
        assert cpu_dtype.engine_dtype(asked, on_gpu=False) == (asked if native else "float32")
    assert ("runs as float32" in capsys.readouterr().err) is not native
    assert cpu_dtype.engine_dtype("float16", on_gpu=False) == "float16"  # asked for explicitly: kept
    assert cpu_dtype.train_bf16(True, on_gpu=False) is native
    assert cpu_dtype.train_bf16(True, on_gpu=True) and not cpu_dtype.train_bf16(False, on_gpu=True)


def test_a_training_run_records_the_precision_it_ran_in(monkeypatch):
    from tops.config import TrainConfig
    from tops.train.kernels import resolve_setup

    monkeypatch.setattr(cpu_dtype, "cpu_has_native_bf16", lambda: False)
    setup = resolve_setup(TrainConfig(bf16=True, lora={"enabled": True}))
    assert (setup.bf16, setup.model_dtype) == (False, "float32") and setup.describe()["bf16"] is False
    monkeypatch.setattr(cpu_dtype, "cpu_has_native_bf16", lambda: True)
    setup = resolve_setup(TrainConfig(bf16=True, lora={"enabled": True}))
    assert (setup.bf16, setup.model_dtype) == (True, "bfloat16")
