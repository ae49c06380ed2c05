"""Where a run's curves go: TensorBoard inside the run folder by default, so `tensorboard --logdir
<run>/logs` works offline; or the trackers TRL users know (W&B, MLflow, Trackio), passed to the
TRL trainers through `report_to`.

Trackers are checked before any work starts: one that is not installed, or needs an account that
is not configured, fails in one line (exit 2) instead of prompting for a login or waiting on a
server. Their local files default to folders inside the run (WANDB_DIR, MLFLOW_TRACKING_URI,
TRACKIO_DIR), so a run writes nothing elsewhere unless the user points it there.

Besides the training curves the trainers log, evaluation results (accuracy and mean tokens per
model x effort, accuracy per difficulty) and one summary per round are logged here.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from tops import layout
from tops.errors import UserError

# tracker -> (module to import, package to install)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}
_OFFLINE_WANDB = ("offline", "disabled", "dryrun")


def active(report_to: Iterable[str]) -> list[str]:
    return [t for t in report_to if t != "none"]


def check(report_to: Iterable[str], where: str = "train.report_to") -> None:
    """UserError naming the first tracker that cannot work here: not installed, or (W&B, a Trackio
    Space) an account that is not configured. Reads the environment only: no network, no prompt."""
    for tracker in active(report_to):
        module, package = TRACKERS[tracker]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{where}: {tracker} is not installed (pip install {package}), "
                            "or drop it from the list")
        if tracker == "wandb" and not _wandb_configured():
            raise UserError(f"{where}: wandb needs an account and none is configured: set WANDB_API_KEY "
                            "(or run `wandb login`), or WANDB_MODE=offline to log into the run folder")
        if tracker == "trackio" and os.environ.get("TRACKIO_SPACE_ID") and not _hf_token():
            raise UserError(f"{where}: trackio logs to the Space in TRACKIO_SPACE_ID, which needs a Hugging "
                            "Face token (HF_TOKEN or `hf auth login`); unset TRACKIO_SPACE_ID to log locally")


def _wandb_configured() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in _OFFLINE_WANDB:
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:  # `wandb login` stores the key in ~/.netrc (or NETRC)
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _hf_token() -> bool:
    from huggingface_hub import get_token

    try:
        return bool(get_token())
    except Exception:  # noqa: BLE001 - a broken token setup is no token
        return False


def prepare(report_to: Iterable[str], run_dir: str | Path) -> None:
    """Environment defaults that keep trackers' files in the run folder and bound their waits;
    what the user set stays."""
    logs = (Path(run_dir) / layout.LOGS).resolve()
    trackers = active(report_to)
    if "wandb" in trackers:
        os.environ.setdefault("WANDB_DIR", str(logs))
        os.environ.setdefault("WANDB_PROJECT", "tops")
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "90")  # seconds before wandb.init gives up
    if "mlflow" in trackers:
        os.environ.setdefault("MLFLOW_TRACKING_URI", (logs / "mlruns").as_uri())
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    if "trackio" in trackers:
        os.environ.setdefault("TRACKIO_DIR", str(logs / "trackio"))
    if trackers:
        logs.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- training


def training_logs(train_cfg, out_dir: str | Path) -> Path:
    """TensorBoard's folder for a training output: train.logging_dir, else <run>/logs/<output name>
    (a flow stage's output is `stages/train-<label>-<key>`: every training run has its own)."""
    return Path(train_cfg.logging_dir) if train_cfg.logging_dir is not None else layout.logs_for(out_dir)


def for_trainer(train_cfg, out_dir: str | Path) -> list[str]:
    """TrainingArguments.report_to ([] for none), after checking the trackers (UserError, before
    any training) and setting their folders' defaults inside the run."""
    trackers = active(train_cfg.report_to)
    check(trackers)
    prepare(trackers, layout.run_folder_of(out_dir))
    return trackers


def point_tensorboard(trainer, train_cfg, out_dir: str | Path) -> None:
    """TRL's TensorBoard callback writes into training_logs(...) instead of under the checkpoints."""
    if "tensorboard" not in train_cfg.report_to:
        return
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(training_logs(train_cfg, out_dir))


# ---------------------------------------------------------------- evaluation and rounds


def eval_metrics(evals: pd.DataFrame) -> dict[str, float]:
    """Scalars of an eval artifact: accuracy and mean tokens per model x effort, and accuracy per
    difficulty (when the problems have one)."""
    metrics: dict[str, float] = {}
    for (model, effort), part in evals.groupby(["model", "effort"], sort=True):
        prefix = f"eval/{model}/{effort}"
        metrics[f"{prefix}/accuracy"] = float(part["correct"].mean())
        metrics[f"{prefix}/mean_tokens"] = float(part["n_tokens"].mean())
        if "difficulty" in part and part["difficulty"].notna().any():
            for difficulty, level in part.dropna(subset=["difficulty"]).groupby("difficulty", sort=True):
                metrics[f"{prefix}/accuracy_by_difficulty/{difficulty}"] = float(level["correct"].mean())
    return metrics


def round_metrics(record) -> dict[str, float]:
    """One round's summary: the latest model's held-out accuracy and mean tokens."""
    return {name: float(value) for name, value in (("rounds/accuracy", record.accuracy),
                                                   ("rounds/mean_tokens", record.mean_tokens),
                                                   ("rounds/eval_rows", record.eval_rows)) if value is not None}


def log_eval(report_to: Iterable[str], run_dir: str | Path, evals: pd.DataFrame, step: int = 0,
             table: str | None = None, name: str = "eval") -> None:
    """Evaluation results into every configured tracker (<run>/logs/<name> for TensorBoard)."""
    log(report_to, run_dir, name, eval_metrics(evals), step, {"eval/table": table} if table else None)


def log_eval_file(report_to: Iterable[str], path: str | Path, table: str | None = None) -> None:
    """`tops eval`'s artifact, logged under its own name (<run>/logs/eval for <run>/eval.parquet)."""
    if not active(report_to):
        return
    from tops.artifacts import read_artifact

    path = Path(path)
    log_eval(report_to, layout.run_folder_of(path), read_artifact(path, "eval"), table=table,
             name=path.name.removesuffix(".parquet"))


def check_run(cfg) -> None:
    """Every tracker a run's training stages use (train.report_to and flow.train_overrides)."""
    names = list(cfg.train.report_to)
    for override in cfg.flow.train_overrides.values():
        names += [n for n in override.get("report_to") or [] if isinstance(n, str)]
    check(dict.fromkeys(names))


def log_round(report_to: Iterable[str], run_dir: str | Path, record, evals: pd.DataFrame | None = None) -> None:
    """The flow's summary of one round (step = the round's number), with its evaluation."""
    metrics = round_metrics(record)
    if evals is not None and not evals.empty:
        metrics.update(eval_metrics(evals))
    text = f"round {record.number}: model {record.model_label}, accuracy {record.accuracy}, " \
           f"mean tokens {record.mean_tokens}"
    log(report_to, run_dir, "rounds", metrics, record.number, {"rounds/summary": text})


def log(report_to: Iterable[str], run_dir: str | Path, name: str, metrics: dict[str, float], step: int,
        texts: dict[str, str] | None = None) -> None:
    """Scalars (and texts, where the tracker shows them) at `step` under run `name`."""
    trackers = active(report_to)
    if not trackers or not metrics:
        return
    prepare(trackers, run_dir)
    for tracker in trackers:
        _WRITERS[tracker](Path(run_dir), name, metrics, step, texts or {})


def _tensorboard(run_dir: Path, name: str, metrics: dict[str, float], step: int, texts: dict[str, str]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir / layout.logs(name)))
    try:
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
        for tag, text in texts.items():
            writer.add_text(tag, text, step)
    finally:
        writer.close()


def _wandb(run_dir: Path, name: str, metrics: dict[str, float], step: int, texts: dict[str, str]) -> None:
    import wandb

    run = wandb.init(name=f"{run_dir.name}-{name}", group=run_dir.name, dir=os.environ.get("WANDB_DIR"),
                     reinit="create_new")
    try:
        run.log(dict(metrics), step=step)
    finally:
        run.finish()


def _mlflow(run_dir: Path, name: str, metrics: dict[str, float], step: int, texts: dict[str, str]) -> None:
    import mlflow

    with mlflow.start_run(run_name=f"{run_dir.name}-{name}"):
        mlflow.log_metrics(dict(metrics), step=step)


def _trackio(run_dir: Path, name: str, metrics: dict[str, float], step: int, texts: dict[str, str]) -> None:
    import trackio

    trackio.init(project=os.environ.get("TRACKIO_PROJECT", "tops"), name=f"{run_dir.name}-{name}")
    try:
        trackio.log(dict(metrics), step=step)
    finally:
        trackio.finish()


_WRITERS: dict[str, Any] = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow, "trackio": _trackio}
