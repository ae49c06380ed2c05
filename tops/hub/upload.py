"""Writing an export folder and pushing it: atomically to a local folder, or to the Hub in one
commit with the token from the environment (never printed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tops import layout
from tops.errors import UserError
from tops.hub.card import DEFAULT_LICENSE, _scrub, dataset_card
from tops.hub.collect import (
    MAX_SHARD_BYTES,
    ExportPlan,
    check_repo_id,
    find_artifacts,
    list_files,
    load_datasets,
    resolve_run_dir,
    write_parquet,
)
from tops.hub.deadline import DEFAULT_TIMEOUT_S, HubTimeout, deadline

ROUNDS_PLOT = layout.ROUNDS_PLOT  # accuracy and mean tokens per round, shown in the card


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



def build_export(plan: ExportPlan, folder: str | Path, repo_id: str, *,
                 license: str = DEFAULT_LICENSE, redact: Iterable[str] = (),
                 max_shard_bytes: int = MAX_SHARD_BYTES, model_repo_id: str | None = None) -> list[tuple[str, int]]:
    """Write the repo's files (Parquet shards + README.md, and the rounds' plot when the run has
    rounds) into `folder`; list (path, bytes)."""
    from tops.rounds import history_section

    folder = Path(folder)
    dicts = load_datasets(plan)
    facts = write_parquet(dicts, folder, max_shard_bytes)
    history = history_section(plan.run_dir, folder / ROUNDS_PLOT, ROUNDS_PLOT)
    card = dataset_card(plan, dicts, facts, repo_id, license=license, redact=redact, history=history,
                        model_repo_id=model_repo_id)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return list_files(folder)



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
                hf_api: Callable[..., Any] | None = None, commit_message: str | None = None,
                repo_type: str = "dataset", timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Create the repo (private unless told otherwise) and upload `folder` in one commit.

    A dataset export's files under data/ that this export does not contain are deleted in the same
    commit, so an earlier export's shards cannot linger next to the new ones; a model folder goes up
    without its completion marker and trainer checkpoints. An existing repo keeps its visibility.
    The Hub is HF_ENDPOINT's when set (read now, not at import). Never prints or returns the token.
    Every Hub request has `timeout_s` in all (tops/hub/deadline.py): a Hub that does not answer
    fails the push with one line instead of holding it.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = hf_api(token=token) if hf_api else HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    files = ({"delete_patterns": ["data/**"]} if repo_type == "dataset"
             else {"ignore_patterns": [".tops-complete", "checkpoint-*", "checkpoint-*/**"]})
    try:
        with deadline(timeout_s):
            repo = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                              commit_message=commit_message or "Export TOPS run datasets", **files)
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        reason = _scrub(str(exc).split("\n")[0], [token])
        if status in (401, 403):
            raise UserError(f"{repo_id}: the Hub refused the token (HTTP {status}); check that it "
                            f"has write access ({reason})") from None
        raise RuntimeError(f"{repo_id}: upload failed: {reason}") from None
    except HubTimeout as exc:
        raise HubTimeout(f"{repo_id}: upload failed: {exc}; nothing more was sent") from None
    prefix = "datasets/" if repo_type == "dataset" else ""
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{prefix}{repo_id}")


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
               max_shard_bytes: int = MAX_SHARD_BYTES, model_repo_id: str | None = None,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> ExportResult:
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
                                        max_shard_bytes=max_shard_bytes, model_repo_id=model_repo_id)
            _install(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        with tempfile.TemporaryDirectory(prefix="tops-export-") as tmp:
            result.files = build_export(plan, tmp, repo_id, license=license,
                                        redact=[token] if token else (),
                                        max_shard_bytes=max_shard_bytes, model_repo_id=model_repo_id)
            if token is not None:
                result.url = push_folder(tmp, repo_id, token=token, private=private, hf_api=hf_api,
                                         commit_message=f"Export TOPS run {run_dir.resolve().name}",
                                         timeout_s=timeout_s)
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


def commit_message(record) -> str:
    """A round's Hub commit message, for its dataset and model repos alike:
    'Round 3: held-out accuracy 0.717, mean tokens 41.2 (model iter3)'."""
    acc = "n/a" if record.accuracy is None else f"{record.accuracy:.3f}"
    tokens = "n/a" if record.mean_tokens is None else f"{record.mean_tokens:.1f}"
    return f"Round {record.number}: held-out accuracy {acc}, mean tokens {tokens} (model {record.model_label})"
