"""Tracking: a training stage's loss curve lands as TensorBoard events in <run>/logs/<stage>/ (read
back with tensorboard's own EventAccumulator), evaluation results and round summaries too; a
tracker that is missing or needs an account it does not have fails in one line before training."""

from __future__ import annotations

import pandas as pd
import pytest
from test_train import PROMPTS, sft_rows, tiny_cfg

from tops.errors import UserError


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_training_loss_curve_is_in_the_run_folder(tiny_model_dir, tmp_path):
    import torch

    from tops.train import train_sft

    out = tmp_path / "run" / "stages" / "train-tops-0123abcd"  # where a flow stage writes its model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train_sft(sft_rows(8), tiny_model_dir, out, tiny_cfg(max_steps=3, lora={"enabled": False}),
                            PROMPTS, progress=False)
    finally:
        torch.set_num_threads(threads)
    logs = tmp_path / "run" / "logs" / "train-tops-0123abcd"
    scalars = _scalars(logs)
    curve = pd.read_parquet(out / "loss.parquet")
    assert [step for step, _ in scalars["train/loss"]] == curve["step"].tolist() == [1, 2, 3]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx(curve["loss"].tolist(), rel=1e-5)
    assert summary["steps"] == 3 and "train/learning_rate" in scalars
    assert not list(out.rglob("events.out.tfevents.*"))  # nothing inside the model folder


def test_none_logs_nothing(tiny_model_dir, tmp_path):
    from trl import SFTConfig

    from tops.config import TrainConfig
    from tops.train.common import trainer_args
    from tops.train.kernels import resolve_setup

    cfg = TrainConfig(report_to="none")
    args = trainer_args(SFTConfig, cfg, tmp_path / "m", learning_rate=1e-5, epochs=1, progress=False,
                        setup=resolve_setup(cfg))
    assert args.report_to == []
    assert trainer_args(SFTConfig, TrainConfig(), tmp_path / "m", learning_rate=1e-5, epochs=1, progress=False,
                        setup=resolve_setup(cfg)).report_to == ["tensorboard"]


def _evals() -> pd.DataFrame:
    rows = []
    for model, effort, correct, tokens in (("tops", "none", [True, True, False, True], 40),
                                           ("tag", "low", [True, False, False, False], 20)):
        for i, ok in enumerate(correct):
            rows.append({"model": model, "problem_id": f"e{i}", "difficulty": "easy" if i < 2 else "hard",
                         "effort": effort, "seed": 0, "n_tokens": tokens + i, "correct": ok})
    return pd.DataFrame(rows)


def test_evaluation_and_round_summaries(tmp_path):
    from tops import tracking
    from tops.rounds import Round

    run = tmp_path / "run"
    tracking.log_eval(["tensorboard"], run, _evals(), table="| model |")
    record = Round(number=2, parent=1, status="finished", iteration=2, model_label="iter2", problems={},
                   accuracy=0.75, mean_tokens=41.5, eval_rows=4)
    tracking.log_round(["tensorboard"], run, record, _evals())
    evals = _scalars(run / "logs" / "eval")
    assert evals["eval/tops/none/accuracy"] == [(0, 0.75)]
    assert evals["eval/tag/low/mean_tokens"] == [(0, 21.5)]
    assert evals["eval/tops/none/accuracy_by_difficulty/hard"] == [(0, 0.5)]
    rounds = _scalars(run / "logs" / "rounds")
    assert rounds["rounds/accuracy"] == [(2, 0.75)] and rounds["rounds/mean_tokens"] == [(2, 41.5)]
    assert rounds["eval/tag/low/accuracy"] == [(2, 0.25)]
    tracking.log_eval(["none"], tmp_path / "quiet", _evals())
    assert not (tmp_path / "quiet").exists()


def test_tops_eval_artifact_is_logged_under_its_name(tmp_path):
    """What `tops eval --out <run>/eval.parquet` logs after writing its artifact."""
    from tops import tracking
    from tops.artifacts import write_artifact

    write_artifact(_evals(), tmp_path / "run" / "eval.parquet", "eval")
    tracking.log_eval_file(["tensorboard"], tmp_path / "run" / "eval.parquet", "table")
    assert _scalars(tmp_path / "run" / "logs" / "eval")["eval/tops/none/accuracy"] == [(0, 0.75)]


def test_tops_run_checks_every_training_stage_s_trackers():
    from tops import tracking
    from tops.config import load_config

    tracking.check_run(load_config(None, []))
    cfg = load_config(None, ["flow.train_overrides={tag: {report_to: [tensorboard, wandb]}}"])
    if __import__("importlib").util.find_spec("wandb") is None:
        with pytest.raises(UserError, match="wandb is not installed"):
            tracking.check_run(cfg)


def test_a_missing_tracker_fails_in_one_line(monkeypatch):
    from tops import tracking

    for name in ("wandb", "mlflow", "trackio"):
        if __import__("importlib").util.find_spec(name) is None:
            with pytest.raises(UserError, match=f"train.report_to: {name} is not installed \\(pip install {name}\\)"):
                tracking.check([name])
    tracking.check(["tensorboard"])  # installed with tops
    tracking.check(["none"])


def test_wandb_needs_an_account_or_offline(monkeypatch, tmp_path):
    from tops import tracking

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login me password x\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert not tracking._wandb_configured()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking._wandb_configured()
    monkeypatch.delenv("WANDB_MODE")
    netrc.write_text("machine api.wandb.ai login user password 0123\n")
    assert tracking._wandb_configured()


def test_cli_training_with_an_unusable_tracker_exits_2_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    import importlib.util

    from tops.artifacts import write_artifact
    from tops.cli import main

    missing = [t for t in ("trackio", "mlflow", "wandb") if importlib.util.find_spec(t) is None]
    if not missing:
        pytest.skip("every tracker is installed here")
    data = tmp_path / "masked.parquet"
    frame = sft_rows(2)
    frame["answer"], frame["n_tokens"], frame["policy"] = "1", 5, "shortest"
    write_artifact(frame, data, "selected")
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "sft", "--data", str(data), "--kind", "selected", "--out", str(out), "--base",
              str(tiny_model_dir), "--set", f"train.report_to=[tensorboard,{missing[0]}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[-1].startswith(f"error: train.report_to: {missing[0]} is not installed")
    assert not out.exists()


def test_turning_a_tracker_on_changes_no_cache_key():
    from tops.config import config_section, load_config

    watched = load_config(None, ["train.report_to=none", "train.logging_dir=/tmp/tb"])
    assert config_section(watched, "train", "efforts") == config_section(load_config(None, []), "train", "efforts")
    assert "report_to" not in config_section(watched, "train")["train"]
    assert watched.train.report_to == ["none"]  # the config itself keeps it
