"""Stage cache keys: the fingerprint of a stage's config section and its input artifacts.

Outputs are content-addressed (`<stage>-<key>.parquet`, `models/<stage>-<key>/`), so a cache
hit always points at the right bytes, a changed config or input reruns the stage and what
depends on it, and nothing upstream. Prefect's result records live in `<run>/.cache/<key>`;
a record whose artifact was deleted is dropped so the stage runs again.
"""

from __future__ import annotations

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


def cache_key(context, parameters: dict) -> str:
    """Prefect cache_key_fn: the precomputed key; forget a record whose output is gone."""
    key = parameters["key"]
    if not is_complete(parameters["out"]):
        (Path(parameters["run_dir"]) / CACHE_DIR / key).unlink(missing_ok=True)
    return key
