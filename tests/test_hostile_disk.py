"""A full disk (issue 30, item 7): training resumes only from complete checkpoints, its error names
ENOSPC, and atomic writes leave no .tmp file behind.

The disk fills up through a patched write that raises ENOSPC (after writing part of its bytes,
as a real full disk does); the training case is a real TRL run of the tiny model.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from tops.artifacts import atomic_write_text
from tops.train.common import checkpoint_complete, drop_incomplete_checkpoints, last_checkpoint


def _checkpoint(root: Path, step: int, *, state: str | None = '{"global_step": 1}', weights: bool = True) -> Path:
    folder = root / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    if weights:
        (folder / "model.safetensors").write_bytes(b"w")
    (folder / "optimizer.pt").write_bytes(b"half")
    return folder


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    good = _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)  # the newest complete one ("checkpoint-10" < "checkpoint-2" as text)
    _checkpoint(tmp_path, 11, state='{"global_st')  # trainer_state.json cut short
    _checkpoint(tmp_path, 12, state=None)  # the disk filled before trainer_state.json
    _checkpoint(tmp_path, 13, weights=False)
    assert checkpoint_complete(good) and not checkpoint_complete(tmp_path / "checkpoints" / "checkpoint-12")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "checkpoint-10")  # by step, not by name
    drop_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-2"]
    assert last_checkpoint(tmp_path / "nothing") is None


def test_an_atomic_write_on_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    target = tmp_path / "lineage.json"
    target.write_text("before\n")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, text):
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError) as exc:
        atomic_write_text(json.dumps({"x": "y" * 1000}), target)
    assert exc.value.errno == errno.ENOSPC
    assert target.read_text() == "before\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lineage.json"]  # no .tmp left


@pytest.mark.slow
def test_training_on_a_disk_that_fills_up_mid_checkpoint_resumes_after(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from test_train import PROMPTS, sft_rows, tiny_cfg

    from tops.models import COMPLETE_MARKER
    from tops.train import train_sft

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt") and "checkpoint-6" in str(f):
            Path(f).write_bytes(b"\x80\x02half")  # what was written before the disk filled
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed") from OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    cfg = tiny_cfg(lora={"enabled": False}, save_steps=3, bf16=True)
    out = tmp_path / "full"
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as exc:
        train_sft(sft_rows(12), tiny_model_dir, out, cfg, PROMPTS, progress=False)
    assert exc.value.errno == errno.ENOSPC and "disk full (ENOSPC)" in str(exc.value).splitlines()[0]
    half = out / "checkpoints" / "checkpoint-6"
    assert half.is_dir() and not (half / "trainer_state.json").exists()  # what a full disk leaves
    assert not (out / COMPLETE_MARKER).exists()

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the rerun resumes from checkpoint-3
    summary = train_sft(sft_rows(12), tiny_model_dir, out, cfg, PROMPTS, progress=False)
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["steps"] == 6
    assert (out / COMPLETE_MARKER).exists() and not list(out.rglob("*.tmp"))
