"""Export a finished run's datasets to the Hugging Face Hub.

One Hub dataset repo per run, with up to four configs, each a `datasets.DatasetDict`:

    samples   every generated response (the `verified` artifact, else `samples`)
    sft       the training set: `masked` (selected + erroneous-step spans), else `selected`
    dpo       preference pairs (`pairs`)
    eval      per-sample evaluation records (`eval`)

Split rule: a run may hold several files of one kind (iterations, baselines). The split is
the file's folder inside the run plus what follows the kind in its file name, joined by "_";
the top-level file is `train` (`test` for eval records): `verified.parquet` -> `train`,
`iter1/verified.parquet` -> `iter1`, `masked_random.parquet` -> `random`, `eval.parquet` ->
`test`. Where two kinds feed one config (verified/samples, masked/selected) the preferred kind
wins per split. Empty files are left out (load_dataset cannot read an empty split), and so is
the flow's stage cache `stages/` (its outputs are published under the names above).
Schemas within a config are unified (missing columns become nulls) so every split loads with
the same features.

The repo layout is the one `DatasetDict.push_to_hub` writes, so the Hub viewer and
`datasets.load_dataset(repo_or_folder, config)` read it:

    README.md                                   dataset card (YAML metadata + description)
    data/<config>/<split>-00000-of-0000N.parquet

`--local-dir` writes exactly that folder (atomically: a temporary folder renamed into place);
`--dry-run` builds it in a temporary folder, lists files and sizes, and keeps nothing; otherwise
it is uploaded with the token from HF_TOKEN or the `hf auth login` cache. The token is never
printed, the repo is created private unless asked otherwise, and stale `data/` files of an
earlier export are deleted in the same commit.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from tops.artifacts import check_columns
from tops.errors import UserError

# Hub config -> artifact kinds that feed it, preferred first.
CONFIG_KINDS: dict[str, tuple[str, ...]] = {
    "samples": ("verified", "samples"),
    "sft": ("masked", "selected"),
    "dpo": ("pairs",),
    "eval": ("eval",),
}
MAIN_SPLIT = "train"  # the top-level file's split; "test" for eval records
INTERNAL_DIRS = ("stages", "problems", "models")  # stage cache, problem splits, model folders
DEFAULT_LICENSE = "apache-2.0"
TASK_CATEGORIES = ["text-generation"]
TAGS = ["reasoning", "math", "tops", "efficient-reasoning"]
MAX_SHARD_BYTES = 500 << 20  # as DatasetDict.push_to_hub: in-memory Arrow bytes per shard
DEFAULT_RUNS_ROOT = Path("data/runs")

PAPER_BIBTEX = """\
@inproceedings{yang2025thinkingoptimal,
  title         = {Towards Thinking-Optimal Scaling of Test-Time Compute for LLM Reasoning},
  author        = {Yang, Wenkai and Ma, Shuming and Lin, Yankai and Wei, Furu},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2025},
  eprint        = {2502.18080},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2502.18080}
}"""

_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                    (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                    (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
_POLICY_TEXT = {
    "shortest": "the shortest correct response per problem over all efforts (TOPS' thinking-optimal choice)",
    "random": "a random correct response per problem (the paper's baseline)",
    "laser-d": "a difficulty-aware length budget per problem (LASER-D style)",
    "seed-low": "low-effort responses of the seed set, appended as is",
}
_URL_USERINFO = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")


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


@dataclass
class ExportResult:
    repo_id: str
    run_dir: Path
    files: list[tuple[str, int]]  # (path in repo, bytes)
    rows: dict[str, dict[str, int]]  # config -> split -> rows
    mode: str  # "dry-run", "local" or "push"
    local_dir: Path | None = None
    url: str | None = None
    private: bool = True


def resolve_run_dir(run: str | Path, root: str | Path | None = None) -> Path:
    """A run folder path, or a run name under `root` (default data/runs)."""
    root = Path(root) if root is not None else DEFAULT_RUNS_ROOT
    candidates = [Path(run)]
    if not Path(run).is_absolute():
        candidates.append(root / run)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise UserError(f"run {str(run)!r}: no such run folder (looked for {looked})")


def check_repo_id(repo_id: str) -> str:
    """ORG/NAME as the Hub accepts it, else one UserError line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--repo-id {repo_id!r}: expected ORG/NAME, e.g. my-org/tops-gsm8k")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = str(exc).split("\n")[0].rstrip(".")
        raise UserError(f"--repo-id {repo_id!r}: not a valid Hub repo id ({reason})") from None
    return repo_id


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


def _split_key(split: str) -> tuple:
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
        keys = sorted((k for k in found if k[0] == config), key=lambda k: _split_key(k[1]))
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


def _write_parquet(dicts: dict[str, Any], folder: Path, max_shard_bytes: int) -> dict[str, dict]:
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


def size_category(rows: int) -> str:
    for bound, label in _SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1B"


def build_export(plan: ExportPlan, folder: str | Path, repo_id: str, *,
                 license: str = DEFAULT_LICENSE, redact: Iterable[str] = (),
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> list[tuple[str, int]]:
    """Write the repo's files (Parquet shards + README.md) into `folder`; list (path, bytes)."""
    folder = Path(folder)
    dicts = load_datasets(plan)
    facts = _write_parquet(dicts, folder, max_shard_bytes)
    card = dataset_card(plan, dicts, facts, repo_id, license=license, redact=redact)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return list_files(folder)


def list_files(folder: str | Path) -> list[tuple[str, int]]:
    folder = Path(folder)
    files = [(p.relative_to(folder).as_posix(), p.stat().st_size)
             for p in folder.rglob("*") if p.is_file()]
    return sorted(files, key=lambda f: (f[0] != "README.md", f[0]))


# ---------------------------------------------------------------- dataset card


def _scrub(text: str, secrets: Iterable[str]) -> str:
    text = _URL_USERINFO.sub("***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):  # shares and accuracies; token means come as text
            value = f"{value:.3f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _frame(ds: Any, columns: list[str]):
    present = [c for c in columns if c in ds.column_names]
    return ds.data.table.select(present).to_pandas()


def _manifests(plan: ExportPlan) -> dict[str, dict]:
    """folder inside the run ("" for the top) -> its manifest's stage records.

    Stage commands write `manifest.json` beside their output (the run folder, an iteration's
    folder); the Prefect flow writes its stages into `stages/` and publishes stable names, listed
    in `lineage.json`: of `stages/manifest.json` only the records of published outputs are kept.
    """
    parents = {PurePosixPath(a.rel).parent for splits in plan.configs.values() for a in splits.values()}
    folders = sorted({""} | {p.as_posix() for p in parents if p != PurePosixPath(".")}, key=_split_key)
    out = {}
    for folder in [*folders, *INTERNAL_DIRS]:
        stages = _read_json(plan.run_dir / folder / "manifest.json").get("stages")
        if not isinstance(stages, dict):
            continue
        if folder in INTERNAL_DIRS:
            lineage = _read_json(plan.run_dir / "lineage.json")
            published = {PurePosixPath(str(v)).name for v in lineage.values()}
            if published:
                stages = {k: v for k, v in stages.items()
                          if isinstance(v, dict) and v.get("output") in published}
        if stages:
            out[folder] = stages
    return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stage_records(manifests: dict[str, dict], stage: str) -> list[dict]:
    return [entry for stages in manifests.values() for entry in stages.values()
            if isinstance(entry, dict) and entry.get("stage") == stage]


def _record_for(manifests: dict[str, dict], stage: str, outputs: set[str]) -> dict | None:
    """The stage's record of one of `outputs` if there is one, else its first record."""
    records = sorted(_stage_records(manifests, stage), key=lambda e: e.get("output") not in outputs)
    return records[0] if records else None


def _mean(series) -> str:
    return f"{float(series.mean()):.1f}" if len(series) else "-"


def _token_stats(series) -> list[Any]:
    return [_mean(series), int(series.median()), int(series.min()), int(series.max())]


def _section_samples(dd: Any) -> list[str]:
    rows = []
    for split, ds in dd.items():
        df = _frame(ds, ["effort", "n_tokens", "correct", "finish_reason"])
        for effort, part in df.groupby("effort", sort=False):
            acc = float(part["correct"].mean()) if "correct" in part and part["correct"].notna().any() else "-"
            trunc = float((part["finish_reason"] == "length").mean()) if "finish_reason" in part else "-"
            rows.append([split, effort, len(part), *_token_stats(part["n_tokens"]), acc, trunc])
    return ["### Responses by effort (`samples`)", "",
            _md_table(["split", "effort", "rows", "mean tokens", "median", "min", "max",
                       "accuracy", "truncated share"], rows), ""]


def _section_sft(dd: Any, masked: bool, manifests: dict[str, dict], outputs: set[str]) -> list[str]:
    """`outputs`: file names of the `train` split's artifact (published and cached name)."""
    rows, policies = [], {}
    for split, ds in dd.items():
        df = _frame(ds, ["effort", "n_tokens", "policy", "masked_chars"])
        for policy, count in df["policy"].value_counts().items():
            policies[policy] = policies.get(policy, 0) + int(count)
        for effort, part in df.groupby("effort", sort=False):
            share = float((part["masked_chars"].fillna(0) > 0).mean()) if "masked_chars" in part else "-"
            rows.append([split, effort, len(part), *_token_stats(part["n_tokens"]), share])
    lines = ["### Selection (`sft`)", "",
             "One response per problem that has a correct one; the `policy` column names the rule:", ""]
    lines += [f"- `{p}` ({n} rows): {_POLICY_TEXT.get(p, 'see the run configuration')}"
              for p, n in policies.items()]
    # The select record behind the sft rows: the masking stage's input, else the rows themselves.
    mask_entry = _record_for(manifests, "mask", outputs) if masked else None
    selected_path = (((mask_entry or {}).get("inputs") or {}).get("selected") or {}).get("path")
    select_entry = _record_for(manifests, "select", {Path(selected_path).name} if selected_path else outputs)
    if select_entry:
        threshold = ((select_entry.get("config") or {}).get("select") or {}).get("min_effort_accuracy")
        if threshold:
            dropped = (select_entry.get("summary") or {}).get("dropped_unreliable", "?")
            lines += ["", f"Candidates came only from efforts right on at least {threshold:.0%} of their "
                          f"samples of the problem (`select.min_effort_accuracy`), so a lucky guess is not "
                          f"taken for a short answer; {dropped} problems whose only correct responses were "
                          "such guesses were dropped."]
    lines += ["", _md_table(["split", "effort", "rows", "mean tokens", "median", "min", "max",
                             "masked rows share"], rows), "", "### Erroneous-step masking", ""]
    if not masked:
        lines += ["Not applied: the `sft` config holds the selected responses as they are.", ""]
        return lines
    lines += [
        "`steps` lists `[start, end)` character spans that tile `response`, each with an "
        "`erroneous` flag; `masked_chars` counts the flagged characters. TOPS training keeps "
        "the flagged spans (wrong intermediate answers later corrected by a reflection) out of "
        "the loss while training on the rest, including the reflection that fixes them; "
        "`n_rounds` / `n_erroneous_rounds` count reasoning rounds (a round ends with an answer).",
        ""]
    if mask_entry:
        cfg = (mask_entry.get("config") or {}).get("mask", {})
        summary = mask_entry.get("summary") or {}
        facts = {"enabled": cfg.get("enabled", summary.get("enabled")),
                 "mode": cfg.get("mode", summary.get("mode")),
                 "step split": cfg.get("step_split"),
                 "masked rows share": summary.get("masked_rows_share"),
                 "masked token share (estimated)": summary.get("masked_token_share")}
        lines += [f"- {k}: `{v}`" for k, v in facts.items() if v is not None] + [""]
    return lines


def _section_dpo(dd: Any) -> list[str]:
    rows = []
    for split, ds in dd.items():
        df = _frame(ds, ["pair_kind", "chosen_tokens", "rejected_tokens"])
        for kind, part in df.groupby("pair_kind", sort=False):
            rows.append([split, kind, len(part), _mean(part["chosen_tokens"]),
                         _mean(part["rejected_tokens"])])
    return ["### Preference pairs (`dpo`)", "",
            "`chosen` is a short correct response, `rejected` a longer incorrect one of the same "
            "problem (`pair_kind` says which rule built the pair).", "",
            _md_table(["split", "pair kind", "pairs", "mean chosen tokens",
                       "mean rejected tokens"], rows), ""]


def _section_eval(dd: Any) -> list[str]:
    rows = []
    for split, ds in dd.items():
        df = _frame(ds, ["model", "effort", "n_tokens", "correct", "seed"])
        for (model, effort), part in df.groupby(["model", "effort"], sort=False):
            rows.append([split, model, effort, part["seed"].nunique(), len(part),
                         float(part["correct"].mean()), _mean(part["n_tokens"])])
    return ["### Evaluation (`eval`)", "", "One row per model, problem, effort and seed.", "",
            _md_table(["split", "model", "effort", "seeds", "rows", "accuracy", "mean tokens"], rows), ""]


def _models(dicts: dict[str, Any], manifests: dict[str, dict], config: dict) -> dict[str, str]:
    models: dict[str, str] = {}
    base = (config.get("model") or {}).get("base")
    if base:
        models[str(base)] = "base model (`model.base`)"
    teacher = (config.get("seed") or {}).get("teacher")
    if teacher:
        models[str(teacher)] = ("seed data: the arith domain's programmatic teacher"
                                if teacher == "arith" else "seed-data teacher (`seed.teacher`)")
    mask = config.get("mask") or {}
    if mask.get("mode") == "judge":
        models[str(mask.get("judge_model") or base or "the run's model")] = "masking judge"
    for entry in _stage_records(manifests, "generate"):
        base = ((entry.get("config") or {}).get("model") or {}).get("base")
        if base:
            models.setdefault(str(base), "configured model (`model.base`)")
    for config, role in (("samples", "generated the responses"),
                         ("eval", "evaluated (its label in `eval`)")):
        for ds in dicts.get(config, {}).values():
            if "model" in ds.column_names:
                for name in _frame(ds, ["model"])["model"].dropna().unique():
                    models[str(name)] = role
    return models


def _effort_prompts(dicts: dict[str, Any], config: dict) -> dict[str, str]:
    from tops.config import DEFAULT_EFFORT_PROMPTS

    prompts = dict(DEFAULT_EFFORT_PROMPTS)
    prompts.update(((config.get("efforts") or {}).get("prompts")) or {})
    seen: list[str] = []
    for config in ("samples", "sft", "eval"):
        for ds in dicts.get(config, {}).values():
            for effort in _frame(ds, ["effort"])["effort"].dropna().unique():
                if effort not in seen:
                    seen.append(str(effort))
    return {e: prompts.get(e, "(not in the run's configuration)") for e in seen}


def dataset_card(plan: ExportPlan, dicts: dict[str, Any], facts: dict[str, dict], repo_id: str, *,
                 license: str = DEFAULT_LICENSE, redact: Iterable[str] = ()) -> str:
    """README.md: YAML metadata (configs, dataset_info, license, task, tags, size) + description."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    redact = [s for s in redact if s]
    run_name = plan.run_dir.resolve().name
    total = sum(f["rows"] for splits in facts.values() for f in splits.values())
    default = "sft" if "sft" in dicts else next(iter(dicts))
    card_data = DatasetCardData(
        license=license, task_categories=TASK_CATEGORIES, tags=TAGS,
        size_categories=[size_category(total)], pretty_name=f"TOPS run {run_name}")
    MetadataConfigs({
        config: {"data_files": [{"split": s, "path": f"data/{config}/{s}-*"} for s in dd],
                 **({"default": True} if config == default else {})}
        for config, dd in dicts.items()}).to_dataset_card_data(card_data)
    infos = DatasetInfosDict()
    for config, dd in dicts.items():
        splits = SplitDict()
        for split in dd:
            splits.add(SplitInfo(name=split, num_bytes=facts[config][split]["num_bytes"],
                                 num_examples=facts[config][split]["rows"]))
        download = sum(f["parquet_bytes"] for f in facts[config].values())
        size = sum(f["num_bytes"] for f in facts[config].values())
        infos[config] = DatasetInfo(config_name=config, features=next(iter(dd.values())).features,
                                    splits=splits, download_size=download, dataset_size=size)
    infos.to_dataset_card_data(card_data)

    manifests = _manifests(plan)
    config_path = plan.run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    body = _card_body(plan, dicts, facts, repo_id, default, manifests, config_text)
    return f"---\n{card_data.to_yaml()}\n---\n\n{_scrub(body, redact)}"


def _card_body(plan: ExportPlan, dicts: dict[str, Any], facts: dict[str, dict], repo_id: str,
               default: str, manifests: dict[str, dict], config_text: str | None) -> str:
    run_name = plan.run_dir.resolve().name
    lines = [
        f"# TOPS run `{run_name}`", "",
        "Reasoning data made with `tops`, an implementation of **TOPS (Thinking-Optimal "
        "Scaling)** ([Yang et al., 2025](https://arxiv.org/abs/2502.18080)): a model answers each problem at several reasoning "
        "efforts (low, medium, high), the answers are verified against the gold answer, and the "
        "shortest correct response per problem is kept as training data, so the model learns "
        "to spend just as many tokens as a problem needs.", "",
        "## Configs and splits", "",
        _md_table(["config", "split", "source file", "rows", "Parquet shards", "Parquet bytes"],
                  [[f"`{c}`", f"`{s}`", f"`{plan.configs[c][s].rel}`", f["rows"], f["shards"],
                    f["parquet_bytes"]] for c, splits in facts.items() for s, f in splits.items()]),
        "",
        "- `samples`: every generated response with its verification (`verified` artifact; the "
        "unverified `samples` artifact only where no verified one exists).",
        "- `sft`: one selected response per problem (`masked` artifact with erroneous-step spans, "
        "else `selected`).",
        "- `dpo`: preference pairs (`pairs` artifact).",
        "- `eval`: per-sample evaluation records (`eval` artifact).", "",
        "Split rule: a split is named after the file's folder inside the run plus whatever follows "
        "the kind in its file name, joined by `_`; the top-level file is `train` (`test` for "
        "`eval`). For example `verified.parquet` -> `train`, `iter1/verified.parquet` -> `iter1`, "
        "`masked_random.parquet` -> `random`, `eval.parquet` -> `test`. Within a config every "
        "split has the same columns (a column missing from one file is null there).", ""]
    if plan.superseded:
        lines += ["Files left out because a preferred kind fills the same split: "
                  + ", ".join(f"`{d.rel}` (superseded by `{k.rel}`)" for d, k in plan.superseded), ""]
    if plan.empty:
        lines += ["Files left out because they have no rows: "
                  + ", ".join(f"`{a.rel}`" for a in plan.empty), ""]
    lines += ["## Loading", "", "```python", "from datasets import load_dataset", ""]
    for config, dd in dicts.items():
        lines.append(f'{config}_data = load_dataset("{repo_id}", "{config}", split="{next(iter(dd))}")')
    lines += ["```", "", f"The default config is `{default}`.", "", "## How the data was made", ""]

    try:
        config = yaml.safe_load(config_text) if config_text else {}
    except yaml.YAMLError:
        config = {}
    config = config if isinstance(config, dict) else {}
    models = _models(dicts, manifests, config)
    if models:
        lines += ["### Models", "", _md_table(["model", "role"], [[f"`{m}`", r] for m, r in models.items()]), ""]
    prompts = _effort_prompts(dicts, config)
    if prompts:
        lines += ["### Reasoning efforts", "",
                  "Each effort is a system prompt that asks for more or less reasoning:", "",
                  _md_table(["effort", "system prompt"], [[f"`{e}`", p] for e, p in prompts.items()]), ""]
    if "samples" in dicts:
        lines += _section_samples(dicts["samples"])
    if "sft" in dicts:
        masked = any(a.kind == "masked" for a in plan.configs["sft"].values())
        main = next(iter(plan.configs["sft"].values()))
        lineage = _read_json(plan.run_dir / "lineage.json")
        outputs = {main.path.name, PurePosixPath(str(lineage.get(main.rel, ""))).name}
        lines += _section_sft(dicts["sft"], masked, manifests, outputs)
    if "dpo" in dicts:
        lines += _section_dpo(dicts["dpo"])
    if "eval" in dicts:
        lines += _section_eval(dicts["eval"])
    lines += ["Token counts (`n_tokens`, `chosen_tokens`, `rejected_tokens`) are counted with the "
              "generating model's tokenizer.", "", "## Columns", ""]
    for config, dd in dicts.items():
        features = next(iter(dd.values())).features
        lines.append(f"- `{config}`: " + ", ".join(f"`{name}`" for name in features))
    lines.append("")

    if manifests:
        stage_rows = [[f"`{folder or '.'}`", f"`{name}`", entry.get("stage", ""), entry.get("rows", ""),
                       entry.get("seconds", ""), entry.get("finished_at", "")]
                      for folder, stages in manifests.items() for name, entry in stages.items()
                      if isinstance(entry, dict)]
        records = {folder or ".": {name: {k: v for k, v in entry.items() if k != "inputs"}
                                   for name, entry in stages.items() if isinstance(entry, dict)}
                   for folder, stages in manifests.items()}
        lines += ["## Pipeline stages", "",
                  _md_table(["folder", "output", "stage", "rows", "seconds", "finished"], stage_rows), "",
                  "<details><summary>Stage records (manifest.json, input paths left out)</summary>", "",
                  "```json", json.dumps(records, indent=2, default=str), "```", "", "</details>", ""]
    lines += ["## Run configuration", ""]
    if config_text:
        lines += ["The run's resolved configuration (`config.yaml`):", "", "```yaml",
                  config_text.rstrip("\n"), "```", ""]
    else:
        lines += ["The run folder holds no `config.yaml`; see the stage records above.", ""]
    lines += ["## License", "",
              "The license in the metadata covers this export. The problems come from the "
              "configured problem source and the responses from the models above: their own "
              "licenses and terms apply too.", "",
              "## Citation", "", "```bibtex", PAPER_BIBTEX, "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- writing and pushing


def _is_previous_export(folder: Path) -> bool:
    children = {p.name for p in folder.iterdir()}
    if not children:
        return True
    if not children <= {"README.md", "data"} or "README.md" not in children:
        return False
    from huggingface_hub import DatasetCard

    try:
        tags = DatasetCard.load(folder / "README.md").data.to_dict().get("tags") or []
    except Exception:
        return False
    return "tops" in tags


def _install(tmp: Path, dest: Path) -> None:
    """Rename the finished folder into place (replacing an earlier export)."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    backup = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    backup.rmdir()
    os.replace(dest, backup)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(backup, dest)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def push_folder(folder: str | Path, repo_id: str, *, token: str, private: bool = True,
                hf_api: Callable[..., Any] | None = None, commit_message: str | None = None) -> str:
    """Create the dataset repo (private unless told otherwise) and upload `folder` in one commit.

    Files under data/ that this export does not contain are deleted in the same commit, so an
    earlier export's shards cannot linger next to the new ones. An existing repo keeps its
    visibility. Never prints or returns the token.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = (hf_api or HfApi)(token=token)
    try:
        repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="dataset",
                          commit_message=commit_message or "Export TOPS run datasets",
                          delete_patterns=["data/**"])
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        reason = _scrub(str(exc).split("\n")[0], [token])
        if status in (401, 403):
            raise UserError(f"{repo_id}: the Hub refused the token (HTTP {status}); check that it "
                            f"has write access ({reason})") from None
        raise RuntimeError(f"{repo_id}: upload failed: {reason}") from None
    return str(getattr(repo, "url", None) or f"https://huggingface.co/datasets/{repo_id}")


def _get_token() -> str | None:
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as exc:  # e.g. HF_OIDC_RESOURCE set but the exchange failed
        raise UserError(f"could not get a Hugging Face token: {exc.__class__.__name__}") from None


def export_run(run: str | Path, repo_id: str, *, private: bool = True,
               local_dir: str | Path | None = None, dry_run: bool = False,
               license: str = DEFAULT_LICENSE, root: str | Path | None = None,
               hf_api: Callable[..., Any] | None = None,
               max_shard_bytes: int = MAX_SHARD_BYTES) -> ExportResult:
    """Export a run: list (`dry_run`), write to `local_dir`, or push to `repo_id` on the Hub.

    Everything is checked before anything is written; on error nothing is left behind.
    """
    run_dir = resolve_run_dir(run, root)
    check_repo_id(repo_id)
    if not license.strip():
        raise UserError("--license: must not be empty (e.g. apache-2.0, cc-by-4.0, other)")
    plan = find_artifacts(run_dir)
    dest = Path(local_dir) if local_dir is not None else None
    if dest is not None and dest.exists() and not (dest.is_dir() and _is_previous_export(dest)):
        raise UserError(f"--local-dir {dest}: already exists and is not an earlier export; "
                        "remove it or choose another folder")
    token = None
    if dest is None and not dry_run:
        token = _get_token()
        if not token:
            raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                            "(or use --local-dir / --dry-run); nothing was uploaded")
    result = ExportResult(repo_id, run_dir, [], {}, "dry-run" if dry_run else "local" if dest else "push",
                          local_dir=dest, private=private)
    result.rows = {c: {} for c in plan.configs}

    if dest is not None and not dry_run:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
        try:
            result.files = build_export(plan, tmp, repo_id, license=license,
                                        max_shard_bytes=max_shard_bytes)
            _install(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        with tempfile.TemporaryDirectory(prefix="tops-export-") as tmp:
            result.files = build_export(plan, tmp, repo_id, license=license,
                                        redact=[token] if token else (),
                                        max_shard_bytes=max_shard_bytes)
            if token is not None:
                result.url = push_folder(tmp, repo_id, token=token, private=private, hf_api=hf_api,
                                         commit_message=f"Export TOPS run {run_dir.resolve().name}")
    for config, splits in plan.configs.items():
        for split, art in splits.items():
            result.rows[config][split] = pq.read_metadata(art.path).num_rows
    return result


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def format_result(result: ExportResult) -> str:
    """What the CLI prints: the files (dry run) or where the export went, and row counts."""
    lines = []
    if result.mode == "dry-run":
        lines.append(f"would write to {result.local_dir}:" if result.local_dir is not None else
                     f"would upload to {result.repo_id} (dataset, "
                     f"{'private' if result.private else 'public'} if created):")
        width = max(len(_human(s)) for _, s in result.files)
        lines += [f"  {_human(size):>{width}}  {path}" for path, size in result.files]
        lines.append(f"  {len(result.files)} files, {_human(sum(s for _, s in result.files))}")
    elif result.mode == "local":
        lines.append(f"{result.local_dir}: {len(result.files)} files, "
                     f"{_human(sum(s for _, s in result.files))}")
    else:
        lines.append(f"{result.url}: uploaded {len(result.files)} files, "
                     f"{_human(sum(s for _, s in result.files))}")
    for config, splits in result.rows.items():
        lines.append(f"  {config}: " + ", ".join(f"{s}={n}" for s, n in splits.items()))
    return "\n".join(lines)
