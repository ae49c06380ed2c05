"""`tops export`: a run folder -> Hub dataset layout (Parquet per config/split + dataset card).

No network: the layout is checked through --local-dir and load_dataset, the push path through
a fake HfApi, and the CLI through --dry-run and the no-token error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tops.artifacts import record_stage, write_artifact
from tops.errors import UserError
from tops.hub import export_run, find_artifacts, format_result, split_name

REPO = Path(__file__).resolve().parents[1]
EFFORTS = ("low", "medium", "high")


def _verified(n_problems: int, with_model: bool = True) -> pd.DataFrame:
    rows = []
    for p in range(n_problems):
        for i, effort in enumerate(EFFORTS):
            rows.append({
                "problem_id": f"p{p}", "question": f"What is {p}+{p}?", "answer": str(2 * p),
                "difficulty": "easy" if p % 2 else None, "effort": effort, "sample_idx": 0,
                "response": f"{effort} reasoning ... \\boxed{{{2 * p + (i == 2)}}}",
                "n_tokens": 10 * (i + 1) + p, "finish_reason": "stop" if i < 2 else "length",
                "pred": str(2 * p + (i == 2)), "correct": i < 2, "verify_status": "ok",
                **({"model": "tiny-model"} if with_model else {}),
            })
    return pd.DataFrame(rows)


def _selected(verified: pd.DataFrame) -> pd.DataFrame:
    best = verified[verified["correct"]].sort_values("n_tokens").groupby("problem_id").head(1)
    return best[["problem_id", "question", "answer", "response", "effort", "n_tokens"]].assign(
        policy="shortest").reset_index(drop=True)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "data" / "runs" / "r1")


def make_run(run: Path) -> Path:
    """A small finished run: two iterations, every exported kind, leftovers to ignore."""
    verified = _verified(4)
    write_artifact(verified.drop(columns=["pred", "correct", "verify_status"]), run / "samples.parquet", "samples")
    write_artifact(verified, run / "verified.parquet", "verified")
    record_stage(run / "verified.parquet", "verify", rows=len(verified), summary={"accuracy": 0.66})
    selected = _selected(verified)
    masked = selected.assign(
        steps=[[{"start": 0, "end": 5, "erroneous": i == 0}, {"start": 5, "end": len(r), "erroneous": False}]
               for i, r in enumerate(selected["response"])],
        masked_chars=[5] + [0] * (len(selected) - 1), n_rounds=2, n_erroneous_rounds=[1] + [0] * (len(selected) - 1))
    write_artifact(masked, run / "masked.parquet", "masked")
    record_stage(run / "masked.parquet", "mask", rows=len(masked),
                 config={"mask": {"enabled": True, "mode": "rounds", "step_split": "line"}},
                 summary={"masked_rows_share": 0.25, "masked_token_share": 0.05})
    pairs = pd.DataFrame({"problem_id": ["p0", "p1"], "question": ["q0", "q1"], "chosen": ["short", "s"],
                          "rejected": ["long wrong", "lw"], "chosen_tokens": [3, 2],
                          "rejected_tokens": [9, 8], "pair_kind": ["longest_incorrect", "short_incorrect"]})
    write_artifact(pairs, run / "pairs.parquet", "pairs")
    # Iteration 1: fewer problems, no `model` column, only `selected` (no masking).
    iter1 = _verified(2, with_model=False)
    write_artifact(iter1, run / "iter1" / "verified.parquet", "verified")
    write_artifact(_selected(iter1), run / "iter1" / "selected.parquet", "selected")
    evals = pd.DataFrame({"model": ["base"] * 4, "problem_id": ["p0", "p1"] * 2, "difficulty": [None] * 4,
                          "effort": ["none"] * 4, "seed": [0, 0, 1, 1], "n_tokens": [30, 40, 35, 45],
                          "correct": [True, False, True, True]})
    tops_evals = evals.assign(model="tops", n_tokens=evals["n_tokens"] // 2)
    write_artifact(pd.concat([evals, tops_evals], ignore_index=True), run / "eval.parquet", "eval")
    write_artifact(masked.assign(policy="random"), run / "masked_random.parquet", "masked")
    # The flow's stage cache: content-addressed outputs (one is not even an eval artifact) and
    # a manifest whose records of published outputs are listed in lineage.json.
    write_artifact(verified, run / "stages" / "verify-0123abcd.parquet", "verified")
    write_artifact(verified, run / "stages" / "eval-samples-base.parquet", "verified")
    record_stage(run / "stages" / "mask-tops-0123abcd.parquet", "mask", rows=4,
                 summary={"masked_rows_share": 0.25})
    record_stage(run / "stages" / "mask-old-99999999.parquet", "mask", rows=3)
    record_stage(run / "stages" / "select-tops-0123abcd.parquet", "select", rows=4,
                 config={"select": {"policy": "shortest", "min_effort_accuracy": 0.75}},
                 summary={"dropped_unreliable": 3})
    (run / "lineage.json").write_text(json.dumps({
        "masked.parquet": str(run / "stages" / "mask-tops-0123abcd.parquet"),
        "selected.parquet": str(run / "stages" / "select-tops-0123abcd.parquet")}))
    # Leftovers that are not exported: an empty artifact, shards, problems.
    write_artifact(evals.iloc[:0], run / "iter1" / "eval.parquet", "eval")
    (run / "samples.parquet.shards").mkdir()
    write_artifact(verified, run / "samples.parquet.shards" / "shard-00000-abc.parquet", "verified")
    problems = verified.drop_duplicates("problem_id")[["problem_id", "question", "answer", "difficulty"]]
    write_artifact(problems, run / "problems.parquet", "problems")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "run": {"name": "r1"}, "model": {"base": "tiny"},
        "engine": {"kind": "openai", "base_url": "http://user:hunter2@host:8000/v1"},
        "efforts": {"prompts": {"low": "Be brief."}}}))
    return run


@pytest.mark.parametrize(("rel", "kind", "split"), [
    ("verified.parquet", "verified", "train"),
    ("iter1/verified.parquet", "verified", "iter1"),
    ("eval.parquet", "eval", "test"),
    ("eval_base.parquet", "eval", "base"),
    ("masked_random.parquet", "masked", "random"),
    ("iter2/eval-tops.v2.parquet", "eval", "iter2_tops_v2"),
    ("eval_all.parquet", "eval", "all_"),
])
def test_split_rule(rel, kind, split):
    assert split_name(rel, kind) == split


def test_find_artifacts_prefers_verified_and_masked(run_dir):
    plan = find_artifacts(run_dir)
    assert {c: {s: a.rel for s, a in splits.items()} for c, splits in plan.configs.items()} == {
        "samples": {"train": "verified.parquet", "iter1": "iter1/verified.parquet"},
        "sft": {"train": "masked.parquet", "iter1": "iter1/selected.parquet",
                "random": "masked_random.parquet"},
        "dpo": {"train": "pairs.parquet"},
        "eval": {"test": "eval.parquet"},
    }
    assert [(d.rel, k.rel) for d, k in plan.superseded] == [("samples.parquet", "verified.parquet")]
    assert [a.rel for a in plan.empty] == ["iter1/eval.parquet"]


def test_local_dir_loads_back_with_the_same_rows(run_dir, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    out = tmp_path / "export"
    result = export_run(run_dir, "my-org/tops-r1", local_dir=out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {path for path, _ in result.files}
    assert "data/samples/train-00000-of-00001.parquet" in files
    assert "data/sft/iter1-00000-of-00001.parquet" in files
    assert not list(tmp_path.glob(".export.*"))  # the temporary folder is gone

    cache = str(tmp_path / "hf-cache")
    expected = {"samples": {"train": 12, "iter1": 6}, "sft": {"train": 4, "iter1": 2, "random": 4},
                "dpo": {"train": 2}, "eval": {"test": 8}}
    assert result.rows == expected
    for config, splits in expected.items():
        for split, rows in splits.items():
            ds = load_dataset(str(out), config, split=split, cache_dir=cache)
            assert len(ds) == rows, (config, split)
    samples = load_dataset(str(out), "samples", split="train", cache_dir=cache)
    source = pd.read_parquet(run_dir / "verified.parquet")
    assert samples["response"] == source["response"].tolist()
    assert samples["correct"] == source["correct"].tolist()
    assert samples["difficulty"] == [None if pd.isna(d) else d for d in source["difficulty"]]
    iter1 = load_dataset(str(out), "samples", split="iter1", cache_dir=cache)
    assert iter1["model"] == [None] * 6  # column missing in that file: null, same features
    sft = load_dataset(str(out), "sft", split="train", cache_dir=cache)
    assert sft[0]["steps"][0] == {"start": 0, "end": 5, "erroneous": True}
    assert sft["masked_chars"] == [5, 0, 0, 0]
    assert load_dataset(str(out), "sft", split="iter1", cache_dir=cache)["steps"] == [None, None]
    assert load_dataset(str(out), "eval", split="test", cache_dir=cache)["n_tokens"][4:] == [15, 20, 17, 22]
    assert load_dataset(str(out), "sft", split="random", cache_dir=cache)["policy"] == ["random"] * 4

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"]
    assert set(meta["tags"]) >= {"reasoning", "math", "tops", "efficient-reasoning"}
    assert meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["samples"]["data_files"] == [{"split": "train", "path": "data/samples/train-*"},
                                                {"split": "iter1", "path": "data/samples/iter1-*"}]
    assert configs["sft"].get("default") is True
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in infos["sft"]["splits"]} == {"train": 4, "iter1": 2, "random": 4}
    body = card.text
    for needle in ("2502.18080", "Thinking-Optimal Scaling", "`iter1/verified.parquet`",
                   "shortest", "Be brief.", "masked rows share", "tiny-model", "Split rule",
                   "superseded by `verified.parquet`", "base_url", "no rows: `iter1/eval.parquet`",
                   "mask-tops-0123abcd", "a random correct response",
                   "right on at least 75% of their samples", "3 problems whose only correct"):
        assert needle in body, needle
    assert "mask-old-99999999" not in body  # not in the run's lineage
    assert "hunter2" not in body  # credentials in URLs are scrubbed from the config


def test_large_splits_are_sharded_and_load_back_in_order(run_dir, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "export"
    result = export_run(run_dir, "my-org/tops-r1", local_dir=out, max_shard_bytes=500)
    shards = sorted(p for p, _ in result.files if p.startswith("data/samples/train-"))
    assert len(shards) > 1 and shards[-1].endswith(f"-of-{len(shards):05d}.parquet")
    ds = load_dataset(str(out), "samples", split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["response"] == pd.read_parquet(run_dir / "verified.parquet")["response"].tolist()


def test_local_dir_replaces_an_earlier_export_but_not_other_folders(run_dir, tmp_path):
    out = run_dir / "hub"  # inside the run folder: a later export must not pick it up
    first = export_run(run_dir, "my-org/tops-r1", local_dir=out)
    (run_dir / "pairs.parquet").unlink()
    second = export_run(run_dir, "my-org/tops-r1", local_dir=out)
    assert not (out / "data" / "dpo").exists()
    assert second.rows == {c: s for c, s in first.rows.items() if c != "dpo"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier export"):
        export_run(run_dir, "my-org/tops-r1", local_dir=other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(("setup", "repo_id", "message"), [
    ("missing", "my-org/x", "no such run folder"),
    ("empty", "my-org/x", "no artifacts to export"),
    ("ok", "no-namespace", "expected ORG/NAME"),
    ("ok", "my-org/bad name!", "not a valid Hub repo id"),
])
def test_errors_are_one_line_and_write_nothing(run_dir, tmp_path, setup, repo_id, message):
    run = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "ok": run_dir}[setup]
    if setup == "empty":
        run.mkdir()
        (run / "problems.parquet").write_bytes(b"")  # not an exported kind
    out = tmp_path / "out" / "export"
    with pytest.raises(UserError, match=message) as err:
        export_run(run, repo_id, local_dir=out)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        readme = (folder / "README.md").read_text()
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", kwargs, files, readme))


@pytest.mark.parametrize("private", [True, False])
def test_push_uses_the_env_token_without_showing_it(run_dir, monkeypatch, private):
    secret = "hf_Secret0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)
    (run_dir / "config.yaml").write_text(f"note: {secret}\n")  # even a leaked token stays out
    FakeApi.calls = []
    result = export_run(run_dir, "my-org/tops-r1", private=private, hf_api=FakeApi)
    init, create, upload = FakeApi.calls
    assert init == ("init", secret)
    assert create == ("create_repo", "my-org/tops-r1",
                      {"repo_type": "dataset", "private": private, "exist_ok": True})
    kwargs, files, readme = upload[1:]
    assert kwargs["repo_type"] == "dataset" and kwargs["repo_id"] == "my-org/tops-r1"
    assert kwargs["delete_patterns"] == ["data/**"]
    assert "README.md" in files and "data/dpo/train-00000-of-00001.parquet" in files
    assert secret not in readme
    assert not Path(kwargs["folder_path"]).exists()  # the temporary folder is removed
    text = format_result(result)
    assert result.url.endswith("my-org/tops-r1") and secret not in text and secret not in repr(result)


def test_push_maps_a_refused_token_to_a_user_error(run_dir, monkeypatch):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    secret = "hf_Secret0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)

    class Refusing(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
            raise HfHubHTTPError(f"401 Client Error: Unauthorized ({secret})",
                                 response=httpx.Response(401, request=request))

    with pytest.raises(UserError, match="refused the token") as err:
        export_run(run_dir, "my-org/tops-r1", hf_api=Refusing)
    assert secret not in str(err.value) and "\n" not in str(err.value)


def _cli(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_TOKEN_PATH")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "tops.cli", "export", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_dry_run_lists_files_and_writes_nothing(run_dir, tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir()
    before = sorted(p for p in tmp_path.rglob("*"))
    # --run by name, resolved under data/runs of the working folder
    proc = _cli(["--run", "r1", "--repo-id", "my-org/tops-r1", "--dry-run", "--local-dir", "out"],
                cwd=tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "README.md" in proc.stdout and "data/sft/train-00000-of-00001.parquet" in proc.stdout
    assert "would write to out" in proc.stdout and "kB" in proc.stdout
    assert sorted(p for p in tmp_path.rglob("*")) == before
    text = format_result(export_run(run_dir, "my-org/tops-r1", dry_run=True, private=False))
    assert text.startswith("would upload to my-org/tops-r1 (dataset, public if created)")
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_cli_push_without_token_fails_clearly(run_dir, tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir()
    proc = _cli(["--run", str(run_dir), "--repo-id", "my-org/tops-r1"], cwd=tmp_path, home=home)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no Hugging Face token")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_run_is_a_folder_path_or_a_plain_name_under_the_runs_root(tmp_path, monkeypatch):
    from tops.hub import resolve_run_dir

    root = tmp_path / "data" / "runs"
    (root / "demo").mkdir(parents=True)
    (tmp_path / "data" / "secret").mkdir()
    monkeypatch.chdir(tmp_path / "data" / "runs" / "demo")  # ./../secret does not exist from here
    assert resolve_run_dir("demo", root) == root / "demo"
    assert resolve_run_dir(str(root / "demo"), root) == root / "demo"
    with pytest.raises(UserError, match=r"no such run folder \(looked for \.\./secret\)"):
        resolve_run_dir("../secret", root)  # a path: never root/../secret
