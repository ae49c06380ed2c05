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

    README.md                                   dataset card (YAML metadata + description,
                                                and the history of rounds when the run has rounds)
    data/<config>/<split>-00000-of-0000N.parquet
    rounds.png                                  accuracy and mean tokens per round (runs with rounds)

`--local-dir` writes exactly that folder (atomically: a temporary folder renamed into place);
`--dry-run` builds it in a temporary folder, lists files and sizes, and keeps nothing; otherwise
it is uploaded with the token from HF_TOKEN or the `hf auth login` cache. The token is never
printed, the repo is created private unless asked otherwise, and stale `data/` files of an
earlier export are deleted in the same commit.

Modules, one job each: `collect` (which files, which config and split, the datasets), `card`
(README.md), `upload` (the folder, locally or pushed), `publish` (the flow's export stage: one
commit per round).
"""

from tops.hub.card import dataset_card
from tops.hub.collect import (
    CONFIG_KINDS,
    Artifact,
    ExportPlan,
    check_repo_id,
    find_artifacts,
    load_datasets,
    resolve_run_dir,
    split_name,
)
from tops.hub.upload import ExportResult, build_export, export_run, format_result, push_folder

__all__ = ["CONFIG_KINDS", "Artifact", "ExportPlan", "ExportResult", "build_export", "check_repo_id",
           "dataset_card", "export_run", "find_artifacts", "format_result", "load_datasets", "push_folder",
           "resolve_run_dir", "split_name"]
