"""The export stage (tops/hub/publish.py): each round writes exactly what it pushes to
exports/round<k>/ and pushes it as one commit naming the round and its numbers.

The real Hub cannot be reached from CI, so the upload runs against a local stand-in of the Hub HTTP
API (tests/hub_standin.py, a small HTTP server that huggingface_hub talks to through HF_ENDPOINT):
the real HfApi client, real requests, no mocked Python objects.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hub_standin import HubStandIn
from test_hub import _selected, _verified, make_run

from tops import rounds
from tops.artifacts import write_artifact
from tops.config import ExportConfig
from tops.errors import UserError
from tops.hub.publish import export_round


def _round_evals(label: str, correct: list[bool], tokens: int) -> pd.DataFrame:
    return pd.DataFrame({"model": label, "problem_id": [f"e{i}" for i in range(len(correct))], "difficulty": None,
                         "effort": "none", "seed": 0, "n_tokens": tokens, "correct": correct})


def _finished_round_1(run: Path) -> None:
    problems = run / "problems.parquet"  # make_run's problems: the round's training and held-out sets
    rounds.record_first_round(run, {"train": str(problems), "eval": str(problems)}, "tiny", "sft", iterations=1)
    model = run / "stages" / "train-iter1-abc"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / ".tops-complete").write_text("")
    rounds.finish_round(run, 1, str(model), _round_evals("iter1", [True, False], 40))


def _round_2(run: Path, tmp_path: Path) -> None:
    """What the flow adds in round 2: iteration 2's data and model, recorded."""
    from tops.config import load_config

    cfg = load_config(None, [f"run.root={run.parent}", f"run.name={run.name}", "flow.continue_rounds=true",
                             "flow.iter_problems=2"])
    plan = rounds.plan_round(run, cfg)
    rounds.start_round(run, plan, "sft")
    verified = _verified(3)
    write_artifact(verified, run / "iter2" / "verified.parquet", "verified")
    write_artifact(_selected(verified), run / "iter2" / "selected.parquet", "selected")
    model = run / "stages" / "train-iter2-def"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"round": 2}')
    rounds.finish_round(run, 2, str(model), _round_evals("iter2", [True, True], 30))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_each_round_pushes_one_commit_of_exactly_its_export_folder(tmp_path, monkeypatch):
    run = make_run(tmp_path / "runs" / "r1")
    _finished_round_1(run)
    secret = "hf_StandInToken0123456789"
    export_cfg = ExportConfig(repo_id="my-org/tops-nightly", model=True)
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", secret)
        first = export_round(run, export_cfg, rounds.load_rounds(run)[0])
        _round_2(run, tmp_path)
        second = export_round(run, export_cfg, rounds.load_rounds(run)[1])

    dataset = hub.repo("dataset", "my-org/tops-nightly")
    assert dataset.private and hub.tokens == {secret}
    assert [c["summary"] for c in dataset.commits] == [
        "Round 1: held-out accuracy 0.500, mean tokens 40.0 (model iter1)",
        "Round 2: held-out accuracy 1.000, mean tokens 30.0 (model iter2)"]
    assert first.folder == run / "exports" / "round1" and second.folder == run / "exports" / "round2"
    # what the Hub holds after each round is exactly the folder that round wrote
    assert dataset.files == _files(second.folder)
    assert "data/samples/iter2-00000-of-00001.parquet" in dataset.commits[1]["added"]
    assert "data/samples/iter2-00000-of-00001.parquet" not in _files(first.folder)
    card = dataset.files["README.md"].decode()
    assert "## Rounds" in card and "![accuracy and mean tokens per round](rounds.png)" in card
    assert "| 1 | — | iter1 |" in card and "| 2 | 1 | iter2 |" in card and secret not in card
    assert dataset.files["rounds.png"].startswith(b"\x89PNG")
    assert second.dataset_url == f"{hub.url}/datasets/my-org/tops-nightly"
    # the latest model of each round goes to the model repo of the same id, without its marker
    model = hub.repo("model", "my-org/tops-nightly")
    assert [c["summary"] for c in model.commits] == [c["summary"] for c in dataset.commits]
    assert model.files["config.json"] == b'{"round": 2}' and set(model.files) == {"config.json", "README.md"}
    assert "# tops-nightly" in model.files["README.md"].decode()  # its model card (tests/test_model_card.py)
    # the export folders are internal to the run: a later export does not pick them up
    assert not any("exports" in p for p in _files(second.folder))


def test_missing_token_fails_the_export_in_one_line_after_writing_it(tmp_path, monkeypatch):
    run = make_run(tmp_path / "runs" / "r1")
    _finished_round_1(run)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(UserError) as err:
        export_round(run, ExportConfig(repo_id="my-org/tops-nightly"), rounds.load_rounds(run)[0])
    message = str(err.value)
    assert "\n" not in message and message.startswith("export of round 1 to my-org/tops-nightly: no Hugging Face token")
    assert "nothing was uploaded" in message and str(run / "exports" / "round1") in message
    assert (run / "exports" / "round1" / "README.md").exists()
