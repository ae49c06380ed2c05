"""Stage cache keys: the fingerprint of a stage's config section and its input artifacts.

Outputs are content-addressed (`<stage>-<key>.parquet`, `models/<stage>-<key>/`), so a cache
hit always points at the right bytes, a changed config or input reruns the stage and what
depends on it, and nothing upstream. Prefect's result records live in `<run>/.cache/<key>`;
a record whose artifact was deleted is dropped so the stage runs again.

A record is data only. A run folder is shared (copied, downloaded), and Prefect's default record
holds a cloudpickle that runs code when read; its JSON serializer names the module it decodes
with. So a record is never read as found: before Prefect looks a key up, `cache_key` writes the
record itself, from fixed text (JSON, plain `json` serializer) and the output's path in *this*
folder, when the output is complete, and deletes it otherwise. A tampered record is replaced,
a renamed run folder finds its outputs under its new name.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from tops.artifacts import fingerprint, fingerprint_path
from tops.layout import CACHE as CACHE_DIR


@lru_cache(maxsize=256)
def _fingerprint_cached(path: str, mtime_ns: int, size: int) -> str:
    return fingerprint_path(path)


def input_fingerprint(path: str | Path) -> str:
    path = Path(path)
    stat = path.stat()
    marker = path / ".tops-complete" if path.is_dir() else path
    mtime = marker.stat().st_mtime_ns if marker.exists() else stat.st_mtime_ns
    return _fingerprint_cached(str(path), mtime, stat.st_size)


def stage_key(stage: str, section: dict, inputs: dict[str, str | Path]) -> str:
    return fingerprint({"stage": stage, "config": section,
                        "inputs": {name: input_fingerprint(p) for name, p in sorted(inputs.items())}})


def is_complete(out: str | Path) -> bool:
    out = Path(out)
    if out.is_dir():
        return (out / ".tops-complete").exists()
    return out.is_file()


# What a task stores as its result: the output path, as JSON text (tasks.CACHED).
RESULT_SERIALIZER = "json"


def record_bytes(out: str | Path) -> bytes:
    """A Prefect result record whose result is `out`, in the JSON serializer's format."""
    import prefect

    metadata = {"storage_key": None, "expiration": None, "serializer": {"type": RESULT_SERIALIZER},
                "prefect_version": prefect.__version__, "storage_block_id": None}
    return json.dumps({"metadata": metadata, "result": json.dumps(str(out))}).encode()


def write_record(records: Path, key: str, out: str | Path) -> None:
    """Replace `<records>/<key>` atomically (a link there is replaced, never written through)."""
    target = records / key
    content = record_bytes(out)
    if not target.is_symlink() and target.is_file():
        try:
            if target.read_bytes() == content:
                return
        except OSError:
            pass
    records.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=records, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_key(context, parameters: dict) -> str:
    """Prefect cache_key_fn: the precomputed key. Prefect then finds the record this writes (the
    output is complete) or none (it is not): whatever was in the folder is never deserialized."""
    key = parameters["key"]
    records = Path(parameters["run_dir"]) / CACHE_DIR
    if is_complete(parameters["out"]):
        write_record(records, key, parameters["out"])
    else:
        (records / key).unlink(missing_ok=True)
    return key
