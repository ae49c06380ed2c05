"""A pushed model gets a model card (tops/hub/model_card.py) and its own repo: the card parses with
huggingface_hub's ModelCard, carries base_model / datasets / library_name / tags / license, the
training settings, the held-out table and the round history, and goes up with the model through
the local Hub stand-in the publish tests use; the dataset card links the model back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hub_standin import HubStandIn
from test_hub import make_run
from test_publish import _finished_round_1

from tops import rounds
from tops.artifacts import write_artifact
from tops.config import ExportConfig

MODEL = "stages/train-iter1-abc"  # the model _finished_round_1 records


def _trained_run(tmp_path: Path, system_prompt: str = "none") -> Path:
    """make_run's finished round 1, with what a real training stage leaves: its summary, its
    checkpoints' run key and the config the child ran with; the base is the packaged default."""
    run = make_run(tmp_path / "runs" / "r1")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["base"] = "smollm2-135m-instruct"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _finished_round_1(run)
    model = run / MODEL
    (model / "train_summary.json").write_text(json.dumps({
        "kind": "sft", "steps": 12, "epochs": 2.0, "lora": True, "examples": 48, "trained_tokens": 5120,
        "final_loss": 0.4321, "system_prompt": system_prompt}))
    (model / "checkpoints").mkdir()
    (model / "checkpoints" / "run_key.json").write_text('{"key": "x"}')
    (model / "model.safetensors").write_bytes(b"weights" * 100)
    (run / "stages" / "train-iter1-abc.yaml").write_text(yaml.safe_dump(
        {"train": {"learning_rate": 1e-6, "batch_size": 8, "grad_accum": 2, "max_length": 1024,
                   "lora": {"r": 16, "alpha": 32}}}))
    evals = pd.DataFrame({"model": ["base", "base", "iter1", "iter1"], "problem_id": ["p0", "p1"] * 2,
                          "difficulty": None, "effort": "none", "seed": 0, "n_tokens": [40, 50, 20, 24],
                          "correct": [True, False, True, True]})
    write_artifact(evals, run / "eval.parquet", "eval")
    return run


def test_model_goes_to_its_own_repo_with_a_card(tmp_path, monkeypatch):
    from huggingface_hub import DatasetCard, ModelCard

    from tops.hub.publish import export_round

    run = _trained_run(tmp_path)
    export_cfg = ExportConfig(dataset_repo_id="my-org/tops-data", model_repo_id="my-org/tops-model")
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_StandInToken0123456789")
        published = export_round(run, export_cfg, rounds.load_rounds(run)[0])

    model_repo = hub.repo("model", "my-org/tops-model")
    assert set(model_repo.files) == {"README.md", "config.json", "train_summary.json", "model.safetensors"}
    assert [c["summary"] for c in model_repo.commits] == [published.commit_message]
    assert ("model", "my-org/tops-data") not in hub.repos and ("dataset", "my-org/tops-model") not in hub.repos
    assert published.model_url == f"{hub.url}/my-org/tops-model"

    path = tmp_path / "README.md"
    path.write_bytes(model_repo.files["README.md"])
    card = ModelCard.load(path)
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["my-org/tops-data"] and meta["library_name"] == "transformers"
    assert {"tops", "reasoning", "sft"} <= set(meta["tags"]) and meta["pipeline_tag"] == "text-generation"
    text = card.text
    assert "**Method.**" in text and "shortest" in text
    assert "| learning rate | 1e-06 |" in text and "| LoRA | r=16, alpha=32 (merged) |" in text
    assert "| batch (examples x accumulation) | 8 x 2 |" in text
    assert "| `iter1` | `none` | 2 | 1.000 | 22.0 |" in text and "| `base` | `none` | 2 | 0.500 | 45.0 |" in text
    assert "## Rounds" in text and "| 1 | — | iter1 |" in text
    assert 'pipeline("text-generation", model="my-org/tops-model")' in text and "No effort prompt" in text
    assert "https://huggingface.co/datasets/my-org/tops-data" in text

    # the dataset card links the model; each repo has only its own files
    data_card = DatasetCard(hub.repo("dataset", "my-org/tops-data").files["README.md"].decode())
    assert "[`my-org/tops-model`](https://huggingface.co/my-org/tops-model)" in data_card.text
    # what went up is in the run folder, the weights hard-linked rather than copied
    staged = run / "exports" / "round1-model"
    assert published.model_folder == staged and (staged / "README.md").read_bytes() == model_repo.files["README.md"]
    assert os.stat(staged / "model.safetensors").st_ino == os.stat(run / MODEL / "model.safetensors").st_ino
    assert not (staged / "checkpoints").exists() and not (staged / ".tops-complete").exists()


def test_a_tag_model_card_lists_the_effort_prompts(tmp_path):
    from huggingface_hub import ModelCard

    from tops.hub.model_card import model_card

    run = _trained_run(tmp_path, system_prompt="effort")
    text = model_card(run, rounds.load_rounds(run)[0], run / MODEL, model_repo_id="my-org/tag")
    card = ModelCard(text)
    assert "effort-control" in card.data.tags and "datasets" not in card.data.to_dict()
    assert "A tag model follows an effort system prompt" in card.text
    assert "| `low` | Be brief. |" in card.text  # the run's own prompt for `low`
    assert '"role": "system"' in card.text


@pytest.mark.parametrize(("sets", "dataset", "model"), [
    ({"repo_id": "o/d"}, "o/d", None),  # the older name of dataset_repo_id
    ({"repo_id": "o/d", "model": True}, "o/d", "o/d"),  # as before: the model repo of the same id
    ({"dataset_repo_id": "o/d", "model_repo_id": "o/m"}, "o/d", "o/m"),
    ({"model_repo_id": "o/m", "datasets": False}, None, "o/m"),
])
def test_export_repos(sets, dataset, model):
    cfg = ExportConfig(**sets)
    assert (cfg.dataset_repo, cfg.model_repo) == (dataset, model) and cfg.repo_id == (dataset or model)


def test_export_repo_errors_are_one_line():
    from tops.config import load_config
    from tops.errors import UserError

    for sets, message in ((["export.model=true"], "export.model is true but no repo is set"),
                          (["export.model_repo_id=o/m", "export.model=false"], "model_repo_id is set but export.model"),
                          (["export.model_repo_id=o m"], "export.model_repo_id: 'o m'")):
        with pytest.raises(UserError, match=message) as info:
            load_config(None, sets)
        assert "\n" not in str(info.value)


def test_tops_export_pushes_the_latest_model(tmp_path, monkeypatch):
    """What `tops export --model-repo-id` calls: the latest finished round's model and its card."""
    from huggingface_hub import ModelCard

    from tops.errors import UserError
    from tops.hub.model_card import export_latest_model

    run = _trained_run(tmp_path)
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_StandInToken0123456789")
        folder, url = export_latest_model(run, "my-org/latest", dataset_repo_id="my-org/data")
    repo = hub.repo("model", "my-org/latest")
    assert url == f"{hub.url}/my-org/latest" and folder == run / "exports" / "round1-model"
    assert repo.commits[0]["summary"].startswith("Round 1: held-out accuracy 0.500")
    assert ModelCard(repo.files["README.md"].decode()).data.datasets == ["my-org/data"]
    with pytest.raises(UserError, match="no finished round with a model"):
        export_latest_model(make_run(tmp_path / "runs" / "plain"), "my-org/latest", push=False)


def test_cli_export_with_a_model_repo(tmp_path, monkeypatch, capsys):
    from tops.cli import main

    run = _trained_run(tmp_path)
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_StandInToken0123456789")
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--run", str(run), "--repo-id", "my-org/data", "--model-repo-id", "my-org/model"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None)
    assert f"{hub.url}/my-org/model: round 1's model with its card" in out
    assert "README.md" in hub.repo("model", "my-org/model").files
    assert "https://huggingface.co/my-org/model" in hub.repo("dataset", "my-org/data").files["README.md"].decode()
    with pytest.raises(SystemExit) as exit_info:  # a run without rounds: one line, nothing written
        main(["export", "--run", str(make_run(tmp_path / "runs" / "plain")), "--repo-id", "my-org/data",
              "--model-repo-id", "my-org/model", "--local-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    assert "no finished round with a model" in capsys.readouterr().err
