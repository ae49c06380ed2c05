"""Which files of a run go to the Hub, under which config and split, and as which datasets.

Discovery maps every exportable Parquet artifact of a run folder to (config, split) by the
split rule of the package docstring; `load_datasets` reads them, schema-checked and unified per
config, and `write_parquet` lays them out as `DatasetDict.push_to_hub` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tops import layout
from tops.artifacts import check_columns
from tops.config.repo_id import check_repo_id  # noqa: F401  (tops.hub.check_repo_id)
from tops.errors import UserError

# Hub config -> artifact kinds that feed it, preferred first.
CONFIG_KINDS: dict[str, tuple[str, ...]] = {
    "samples": ("verified", "samples"),
    "sft": ("masked", "selected"),
    "dpo": ("pairs",),
    "eval": ("eval",),
}
MAIN_SPLIT = "train"  # the top-level file's split; "test" for eval records
INTERNAL_DIRS = ("stages", "problems", "models", layout.EXPORTS)  # stage cache, problem splits, model folders,
# the export stage's per-round folders
MAX_SHARD_BYTES = 500 << 20  # as DatasetDict.push_to_hub: in-memory Arrow bytes per shard
DEFAULT_RUNS_ROOT = Path(layout.RUNS_ROOT)


# ---------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Artifact:
    """One Parquet file of the run and where it goes on the Hub."""

    path: Path
    rel: str  # path inside the run folder, POSIX style
    kind: str  # artifact kind (tops.artifacts.SCHEMAS key)
    config: str  # Hub config
    split: str


@dataclass
class ExportPlan:
    run_dir: Path
    configs: dict[str, dict[str, Artifact]]  # config -> split -> artifact (ordered)
    superseded: list[tuple[Artifact, Artifact]] = field(default_factory=list)  # (dropped, kept)
    empty: list[Artifact] = field(default_factory=list)  # no rows: left out (load_dataset fails on them)



def resolve_run_dir(run: str | Path, root: str | Path | None = None) -> Path:
    """A run folder path, or a run name under `root` (default data/runs). Only a name that
    `run.name` accepts is looked up under `root`, so "../x" means ./../x and nothing else."""
    from tops.config import RunConfig

    root = Path(root) if root is not None else DEFAULT_RUNS_ROOT
    candidates = [Path(run)]
    try:
        candidates.append(root / RunConfig(name=str(run)).name)
    except ValueError:  # a path, not a name
        pass
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise UserError(f"run {str(run)!r}: no such run folder (looked for {looked})")


def split_name(rel: str | PurePosixPath, kind: str) -> str:
    """Split for the file at `rel` (inside the run folder) holding a `kind` artifact."""
    rel = PurePosixPath(rel)
    rest = rel.name.removesuffix(".parquet")[len(kind):].lstrip("-_.")
    name = "_".join(p for p in (*rel.parent.parts, rest) if p)
    name = re.sub(r"\W+", "_", name).strip("_") or ("test" if kind == "eval" else MAIN_SPLIT)
    # "all" means every split to load_dataset; a file's split must not shadow that.
    return f"{name}_" if name == "all" else name


def _kind_of(filename: str) -> str | None:
    stem = filename.removesuffix(".parquet")
    for kinds in CONFIG_KINDS.values():
        for kind in kinds:
            if stem == kind or (stem.startswith(kind) and stem[len(kind)] in "-_."):
                return kind
    return None


def _config_of(kind: str) -> str:
    return next(config for config, kinds in CONFIG_KINDS.items() if kind in kinds)


def split_order(split: str) -> tuple:
    """`train` / `test` first, then natural order (iter2 before iter10)."""
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", split) if p)
    return (split not in (MAIN_SPLIT, "test"), parts)


def _inside_export(run_dir: Path, rel: Path) -> bool:
    parts = rel.parts
    for i, part in enumerate(parts[:-1]):
        if part == "data" and (run_dir.joinpath(*parts[:i]) / "README.md").is_file():
            return True
    return False


def find_artifacts(run_dir: str | Path) -> ExportPlan:
    """Every exportable artifact of the run, schema-checked, mapped to (config, split)."""
    run_dir = Path(run_dir)
    found: dict[tuple[str, str], list[Artifact]] = {}
    empty: list[Artifact] = []
    for path in sorted(run_dir.rglob("*.parquet")):
        rel = path.relative_to(run_dir)
        if any(p.startswith(".") or p.endswith(".shards") for p in rel.parts) or not path.is_file():
            continue  # temporary files of atomic writes, unfinished shard folders
        if _inside_export(run_dir, rel) or (len(rel.parts) > 1 and rel.parts[0] in INTERNAL_DIRS):
            continue  # an earlier `tops export --local-dir` inside the run; the flow's stage cache
        kind = _kind_of(path.name)
        if kind is None:
            continue
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise UserError(f"{path}: not a readable Parquet file ({exc.__class__.__name__})") from None
        check_columns(schema.empty_table(), kind, str(path))
        art = Artifact(path, rel.as_posix(), kind, _config_of(kind), split_name(rel.as_posix(), kind))
        if pq.read_metadata(path).num_rows == 0:
            empty.append(art)
            continue
        found.setdefault((art.config, art.split), []).append(art)

    plan = ExportPlan(run_dir, {}, empty=empty)
    for config, kinds in CONFIG_KINDS.items():
        keys = sorted((k for k in found if k[0] == config), key=lambda k: split_order(k[1]))
        for _, split in keys:
            candidates = sorted(found[(config, split)], key=lambda a: kinds.index(a.kind))
            best = candidates[0]
            for other in candidates[1:]:
                if other.kind == best.kind:
                    raise UserError(f"{run_dir}: {best.rel} and {other.rel} would both be split "
                                    f"'{split}' of config '{config}'; rename one of them")
                plan.superseded.append((other, best))
            plan.configs.setdefault(config, {})[split] = best
    if not plan.configs:
        what = f" with rows ({len(empty)} empty)" if empty else ""
        raise UserError(f"{run_dir}: no artifacts{what} to export (looked for samples*/verified*, "
                        "selected*/masked*, pairs* and eval* Parquet files)")
    return plan


# ---------------------------------------------------------------- datasets


def _read_checked(art: Artifact) -> pa.Table:
    from tops.artifacts import SCHEMAS

    table = pq.read_table(art.path)
    check_columns(table, art.kind, str(art.path))
    for name, (_, nullable) in SCHEMAS[art.kind].items():
        if not nullable and table.column(name).null_count:
            raise UserError(f"{art.path}: column '{name}' has missing values")
    return table


def _unify(tables: dict[str, pa.Table], config: str) -> dict[str, pa.Table]:
    """One schema for every split of a config: columns in first-seen order, missing ones null."""
    try:
        schema = pa.unify_schemas([t.schema.remove_metadata() for t in tables.values()],
                                  promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UserError(f"config '{config}': its files have incompatible columns ({exc})") from None
    schema = pa.schema([f.with_nullable(True) for f in schema])
    out = {}
    for split, table in tables.items():
        columns = [table.column(f.name) if f.name in table.column_names
                   else pa.nulls(len(table), f.type) for f in schema]
        out[split] = pa.Table.from_arrays(columns, names=schema.names).cast(schema)
    return out


def load_datasets(plan: ExportPlan) -> dict[str, Any]:
    """config -> datasets.DatasetDict (split -> Dataset), in the plan's order."""
    from datasets import Dataset, DatasetDict

    dicts = {}
    for config, splits in plan.configs.items():
        tables = _unify({split: _read_checked(art) for split, art in splits.items()}, config)
        dicts[config] = DatasetDict({split: Dataset(table) for split, table in tables.items()})
    return dicts


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def write_parquet(dicts: dict[str, Any], folder: Path, max_shard_bytes: int) -> dict[str, dict]:
    """data/<config>/<split>-NNNNN-of-NNNNN.parquet; returns per config/split shard facts."""
    facts: dict[str, dict] = {}
    with _quiet_datasets():
        for config, dd in dicts.items():
            for split, ds in dd.items():
                nbytes = int(ds.data.nbytes)
                shards = max(1, min(len(ds), math.ceil(nbytes / max_shard_bytes)))
                size = 0
                for index in range(shards):
                    part = ds.shard(num_shards=shards, index=index, contiguous=True) if shards > 1 else ds
                    path = folder / "data" / config / f"{split}-{index:05d}-of-{shards:05d}.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    part.to_parquet(str(path))
                    size += path.stat().st_size
                facts.setdefault(config, {})[split] = {
                    "rows": len(ds), "num_bytes": nbytes, "shards": shards, "parquet_bytes": size}
    return facts


def list_files(folder: str | Path) -> list[tuple[str, int]]:
    folder = Path(folder)
    files = [(p.relative_to(folder).as_posix(), p.stat().st_size)
             for p in folder.rglob("*") if p.is_file()]
    return sorted(files, key=lambda f: (f[0] != "README.md", f[0]))

