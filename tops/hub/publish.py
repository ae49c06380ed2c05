"""The export stage: the last stage of a run publishes what its round made.

For round k it writes exactly what it pushes to `<run>/exports/round<k>/` (the folder `tops export
--local-dir` writes: Parquet per config/split, the dataset card with the history of rounds, the
rounds' plot), then pushes that folder to the dataset repo as one commit whose message names the
round and its held-out accuracy and mean tokens; with `export.model` the round's latest model goes
to the model repo of the same id in a commit with the same message. The token comes from HF_TOKEN
or `hf auth login`, never from the config: without one the stage fails with one line, and every
other artifact of the run is already written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tops.errors import UserError
from tops.hub.upload import _get_token, export_run, push_folder


@dataclass
class Published:
    round: int
    folder: Path | None  # what was (or would have been) pushed to the dataset repo
    commit_message: str
    dataset_url: str | None = None
    model_url: str | None = None


def commit_message(record) -> str:
    """'Round 3: held-out accuracy 0.717, mean tokens 41.2 (model iter3)'."""
    acc = "n/a" if record.accuracy is None else f"{record.accuracy:.3f}"
    tokens = "n/a" if record.mean_tokens is None else f"{record.mean_tokens:.1f}"
    return f"Round {record.number}: held-out accuracy {acc}, mean tokens {tokens} (model {record.model_label})"


def round_folder(run_dir: str | Path, number: int) -> Path:
    from tops import layout

    return Path(run_dir) / layout.export_round(number)


def export_round(run_dir: str | Path, export_cfg, record, *, hf_api: Any = None) -> Published:
    """Write round `record.number`'s export folder, then push it (and the model when configured)."""
    from tops.rounds import resolve

    run_dir = Path(run_dir)
    repo_id = export_cfg.repo_id
    message = commit_message(record)
    folder = round_folder(run_dir, record.number) if export_cfg.datasets else None
    if folder is not None:
        export_run(run_dir, repo_id, private=export_cfg.private, local_dir=folder, license=export_cfg.license)
    token = _get_token()
    if not token:
        kept = f"; what it would push is in {folder}" if folder is not None else ""
        raise UserError(f"export of round {record.number} to {repo_id}: no Hugging Face token (set HF_TOKEN or "
                        f"run `hf auth login`), nothing was uploaded{kept}")
    published = Published(record.number, folder, message)
    if folder is not None:
        published.dataset_url = push_folder(folder, repo_id, token=token, private=export_cfg.private,
                                            hf_api=hf_api, commit_message=message)
    if export_cfg.model:
        if not record.model:
            raise UserError(f"export of round {record.number}: the round recorded no model to push")
        published.model_url = push_folder(resolve(run_dir, record.model), repo_id, token=token,
                                          private=export_cfg.private, hf_api=hf_api, commit_message=message,
                                          repo_type="model")
    return published
