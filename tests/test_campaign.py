"""Scheduled rounds end to end on the smoke profile (tiny model, real engines, real trainers, a real
Prefect server from prefect_test_harness): repeated runs of one config are rounds of one campaign,
each round ends with the export stage, and deployments run the loop like `tops run`.

The real Hub cannot be reached from CI: the export stage uploads to a local stand-in of the Hub
HTTP API (tests/hub_standin.py, a small HTTP server that huggingface_hub talks to through
HF_ENDPOINT), with the real HfApi client.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hub_standin import HubStandIn

from tops import rounds
from tops.artifacts import read_artifact, write_artifact

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _arith_rows(n: int, seed: int, exclude=frozenset()) -> pd.DataFrame:
    from tops.config import ArithLevel, ArithSource
    from tops.domains.arith import make_problems

    source = ArithSource(levels={"easy": ArithLevel(digits=1), "medium": ArithLevel(digits=1, operands=3)})
    return make_problems(source, n=n, seed=seed, exclude=exclude)[["problem_id", "question", "answer", "difficulty"]]


def _task_states(flow_run_id) -> dict[str, str]:
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {run.name: run.state.name for run in runs}

    return anyio.run(read)


def _round(config: Path, overrides: list[str]) -> tuple[dict, dict[str, str]]:
    from tops.flows.pipeline import tops_loop

    state = tops_loop(config=str(config), overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), _task_states(state.state_details.flow_run_id)


def _no_token(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def test_rounds_continue_learn_from_new_rows_and_publish(harness, tmp_path, tiny_model_dir, monkeypatch):
    """Rounds 1 and 2 of the smoke profile (its arith teacher needs generated problems for round 1's
    seed data); the campaign then continues on a local problems file: nothing new, then its new rows."""
    overrides = [f"run.root={tmp_path / 'runs'}", f"model.base={tiny_model_dir}", "flow.continue_rounds=true",
                 "export.repo_id=my-org/tops-smoke", "export.model=true",
                 # round 1 as small as the smoke loop goes: the rounds after it are what this tests
                 "flow.random_baseline=false", "eval.seeds=[0]", "generate.n_samples=2",
                 "flow.train_overrides.tag.epochs=3", "flow.train_overrides.tops.epochs=3"]
    run = tmp_path / "runs" / "smoke"
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_StandInToken0123456789")
        first, _ = _round(SMOKE, overrides)
        second, states = _round(SMOKE, overrides)

    # round 1: the whole loop, recorded with its latest model
    one, two = rounds.load_rounds(run)
    assert first["round"] == 1 and one.status == "finished" and one.model_label == "iter1"
    assert rounds.resolve(run, one.model) == Path(first["lineage"]["models/iter1"])
    # round 2: one more iteration on problems no earlier round used, from round 1's recorded model
    assert second["round"] == 2 and (two.parent, two.start_model, two.model_label) == (1, one.model, "iter2")
    round_one = pd.concat([read_artifact(run / f"problems/{s}.parquet", "problems")
                           for s in ("seed", "train", "iter1", "eval")])
    round_two_ids = set(read_artifact(run / "problems/iter2.parquet", "problems")["problem_id"])
    assert len(round_two_ids) == 6 and not round_two_ids & set(round_one["problem_id"])
    sampled_from = set(read_artifact(run / "iter2/verified.parquet", "verified")["model"])
    assert sampled_from == {rounds.resolve(run, one.model).name}
    if (run / "iter2/masked.parquet").exists():  # the tiny model's samples gave something to learn from
        summary = json.loads((rounds.resolve(run, two.model) / "train_summary.json").read_text())
        assert Path(summary["base_model"]).resolve() == rounds.resolve(run, one.model).resolve()
        assert sorted(states) == ["eval-iter2", "export-round2", "generate-iter2", "mask-iter2", "select-iter2",
                                  "train-iter2", "verify-iter2"], states
    else:  # its noise did not: the iteration keeps the model and says so
        assert two.model == one.model and "iter2: no problem gave a correct response" in " ".join(two.notes)
        assert sorted(states) == ["eval-iter2", "export-round2", "generate-iter2", "verify-iter2"], states
    assert all(state == "Completed" for state in states.values()), states
    evals = read_artifact(run / "eval.parquet", "eval")
    assert set(evals["model"]) == {"base", "tag", "tops", "iter1", "iter2"}
    held_out = read_artifact(run / "problems/eval.parquet", "problems")["problem_id"]
    assert set(evals.loc[evals["model"] == "iter2", "problem_id"]) == set(held_out)  # the same held-out set
    table = rounds.history(run)
    assert table["round"].tolist() == [1, 2] and table["accuracy"].notna().all()
    report = (run / "report.md").read_text()
    assert "## Rounds" in report and "| 2 | 1 | iter2 | 6 |" in report and (run / "rounds.png").exists()
    # each round pushed one commit of exactly its export folder, named after the round
    dataset = hub.repo("dataset", "my-org/tops-smoke")
    assert [c["summary"].split(":")[0] for c in dataset.commits] == ["Round 1", "Round 2"]
    assert f"held-out accuracy {two.accuracy:.3f}, mean tokens {two.mean_tokens:.1f}" in dataset.commits[1]["summary"]
    exported = run / "exports" / "round2"
    assert dataset.files == {p.relative_to(exported).as_posix(): p.read_bytes()
                             for p in exported.rglob("*") if p.is_file()}
    assert "data/samples/iter2-00000-of-00001.parquet" in dataset.files
    assert "model.safetensors" in hub.repo("model", "my-org/tops-smoke").files

    # the campaign moves to a local problems file holding only problems it used: nothing new, nothing changes
    problems_file = tmp_path / "problems.parquet"
    write_artifact(round_one[["problem_id", "question", "answer", "difficulty"]], problems_file, "problems")
    spec = yaml.safe_load(SMOKE.read_text())
    spec["problems"]["source"] = {"kind": "file", "path": str(problems_file),
                                  "columns": {"problem_id": "problem_id", "difficulty": "difficulty"}}
    config = tmp_path / "smoke-file.yaml"
    config.write_text(yaml.safe_dump(spec))
    _no_token(monkeypatch, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and ".cache" not in p.parts}
    nothing, states = _round(config, overrides)
    assert "round 3: nothing new to learn from" in nothing["nothing_new"] and not states
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and ".cache" not in p.parts} == before

    # rows are added to the file: round 3 learns from exactly them; without a token only the export fails
    added = _arith_rows(4, seed=99, exclude=set(round_one["problem_id"]) | round_two_ids)
    write_artifact(pd.concat([read_artifact(problems_file, "problems"), added], ignore_index=True), problems_file,
                   "problems")
    third, _ = _round(config, overrides)
    assert third["round"] == 3
    assert set(read_artifact(run / "problems/iter3.parquet", "problems")["problem_id"]) == set(added["problem_id"])
    three = rounds.load_rounds(run)[2]
    assert (three.new_rows, three.status, three.parent, three.start_model) == (4, "finished", 2, two.model)
    error = third["export_error"]
    assert "\n" not in error and error.startswith("export of round 3 to my-org/tops-smoke: no Hugging Face token")
    assert (run / "exports" / "round3" / "README.md").exists()
    assert "| 3 | 2 | iter3 | 4 | 4 |" in (run / "report.md").read_text()
    assert "## Export\n\n- failed: export of round 3" in (run / "report.md").read_text()


def test_deployment_runs_the_loop_with_its_task_runner(harness, tmp_path, monkeypatch):
    """The deployment `tops serve` builds runs its entrypoint flow, which starts the loop with the
    configured task runner (here Ray) and as a round; the loop body is replaced by a probe."""
    from prefect.context import FlowRunContext
    from prefect.flows import load_flow_from_entrypoint

    import tops.flows.pipeline
    from tops.flows.deploy import build_deployment

    seen = {}

    def probe(cfg):
        seen.update(runner=type(FlowRunContext.get().task_runner).__name__,
                    continue_rounds=cfg.flow.continue_rounds)
        return {}

    monkeypatch.setattr(tops.flows.pipeline, "run_loop", probe)
    deployment = build_deployment(str(SMOKE), ["flow.runner=ray", f"run.root={tmp_path}"], "0 3 * * *", "smoke")
    path, name = deployment.entrypoint.split(":")
    assert (REPO / path).resolve() == (REPO / "flows" / "deploy.py").resolve() and name == "scheduled_loop"
    entry_flow = load_flow_from_entrypoint(f"{REPO / path}:{name}")
    entry_flow(**deployment.parameters)
    assert seen == {"runner": "RayTaskRunner", "continue_rounds": True}
    # prefect.yaml deploys the same entrypoint (tops/flows is a link to flows/)
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    entries = {d["entrypoint"].split(":")[1] for d in spec["deployments"]}
    files = {(REPO / d["entrypoint"].split(":")[0]).resolve() for d in spec["deployments"]}
    assert entries == {name} and files == {(REPO / path).resolve()}


def test_serve_says_when_and_where_the_next_run_is(tmp_path):
    import datetime as dt

    from tops.flows.deploy import schedule_line

    line = schedule_line(str(SMOKE), [f"run.root={tmp_path}"], "30 2 * * *", "nightly",
                         after=dt.datetime(2026, 11, 27, 16, 0, tzinfo=dt.UTC))
    assert "next run 2026-11-28 02:30 UTC" in line and f"round 1 of run folder {tmp_path / 'smoke'}" in line
    assert "'tops-scheduled/nightly'" in line
