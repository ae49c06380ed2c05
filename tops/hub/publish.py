"""The export stage: the last stage of a run publishes what its round made.

For round k it writes exactly what it pushes to `<run>/exports/round<k>/` (the folder `tops export
--local-dir` writes: Parquet per config/split, the dataset card with the history of rounds, the
rounds' plot), then pushes that folder to the dataset repo (export.dataset_repo_id) as one commit
whose message names the round and its held-out accuracy and mean tokens. With a model repo
(export.model_repo_id) the round's latest model goes there in a commit with the same message,
with its model card (tops/hub/model_card.py), from `<run>/exports/round<k>-model/`; the two cards
link each other. The token comes from HF_TOKEN or `hf auth login`, never from the config: without
one the stage fails with one line, and every other artifact of the run is already written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tops.errors import UserError
from tops.hub.upload import _get_token, commit_message, export_run, push_folder


@dataclass
class Published:
    round: int
    folder: Path | None  # what was (or would have been) pushed to the dataset repo
    commit_message: str
    dataset_url: str | None = None
    model_url: str | None = None
    model_folder: Path | None = None  # ... and to the model repo (the model's files + its card)


def round_folder(run_dir: str | Path, number: int) -> Path:
    from tops import layout

    return Path(run_dir) / layout.export_round(number)


def export_round(run_dir: str | Path, export_cfg, record, *, hf_api: Any = None) -> Published:
    """Write round `record.number`'s export folder, then push it (and the model when configured)."""
    from tops.hub.model_card import model_card, stage_model_folder
    from tops.rounds import resolve

    run_dir = Path(run_dir)
    dataset_repo, model_repo = export_cfg.dataset_repo, export_cfg.model_repo
    message = commit_message(record)
    if model_repo and not record.model:
        raise UserError(f"export of round {record.number}: the round recorded no model to push")
    folder = round_folder(run_dir, record.number) if dataset_repo else None
    if folder is not None:
        export_run(run_dir, dataset_repo, private=export_cfg.private, local_dir=folder, license=export_cfg.license,
                   model_repo_id=model_repo)
    model_folder = None
    if model_repo:
        model = resolve(run_dir, record.model)
        card = model_card(run_dir, record, model, model_repo_id=model_repo, dataset_repo_id=dataset_repo)
        model_folder = stage_model_folder(run_dir, record.number, model, card)
    token = _get_token()
    if not token:
        kept = " and ".join(str(f) for f in (folder, model_folder) if f is not None)
        raise UserError(f"export of round {record.number} to {export_cfg.repo_id}: no Hugging Face token (set "
                        f"HF_TOKEN or run `hf auth login`), nothing was uploaded; what it would push is in {kept}")
    published = Published(record.number, folder, message, model_folder=model_folder)
    if folder is not None:
        published.dataset_url = push_folder(folder, dataset_repo, token=token, private=export_cfg.private,
                                            hf_api=hf_api, commit_message=message, timeout_s=export_cfg.timeout_s)
    if model_folder is not None:
        published.model_url = push_folder(model_folder, model_repo, token=token, private=export_cfg.private,
                                          hf_api=hf_api, commit_message=message, repo_type="model",
                                          timeout_s=export_cfg.timeout_s)
    return published
