"""The CLI contract: exit 2 with one line naming the problem and nothing written."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def tops(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tops.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_user_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_config_field(tmp_path):
    result = tops("problems", "--config", str(REPO / "configs" / "smoke.yaml"), "--set", "problems.n=-3",
                  "--out", str(tmp_path / "p.parquet"))
    assert_user_error(result, "problems.n")
    assert not list(tmp_path.iterdir())


def test_unknown_config_key_in_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  n_sample: 3\n")
    result = tops("problems", "--config", str(cfg), "--out", str(tmp_path / "p.parquet"))
    assert_user_error(result, "generate.n_sample", "unknown field")
    assert not (tmp_path / "p.parquet").exists()


def test_unknown_option_is_a_usage_error_not_a_traceback(tmp_path):
    result = tops("select", "--in", str(tmp_path / "v.parquet"), "--polcy", "shortest")
    assert result.returncode == 2
    assert "No such option" in result.stderr and "Traceback" not in result.stderr


def test_missing_input_file(tmp_path):
    result = tops("verify", "--in", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "v.parquet"))
    assert_user_error(result, "nope.parquet", "file not found")
    assert not (tmp_path / "v.parquet").exists()


@pytest.mark.parametrize("command, column", [("verify", "response"), ("select", "pred"),
                                             ("pairs", "pred")])
def test_missing_column(tmp_path, command, column):
    frame = pd.DataFrame({"problem_id": ["a"], "question": ["q"], "answer": ["1"], "difficulty": [None],
                          "effort": ["low"], "sample_idx": [0], "n_tokens": [3], "finish_reason": ["stop"]})
    if command != "verify":
        frame["response"] = ["x"]
    frame.to_parquet(tmp_path / "in.parquet")
    result = tops(command, "--in", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "out.parquet"))
    assert_user_error(result, f"'{column}'")
    assert not (tmp_path / "out.parquet").exists()


def test_unknown_model_for_generate(tmp_path):
    result = tops("generate", "--config", str(REPO / "configs" / "smoke.yaml"), "--model", "nonexistent-model",
                  "--set", "problems.n=2", "--out", str(tmp_path / "s.parquet"))
    assert_user_error(result, "nonexistent-model")
    assert not list(tmp_path.iterdir())


def test_unknown_effort_for_generate(tmp_path):
    result = tops("generate", "--config", str(REPO / "configs" / "smoke.yaml"), "--set", "generate.efforts=[low,max]",
                  "--out", str(tmp_path / "s.parquet"))
    assert_user_error(result, "unknown effort 'max'")


def test_problems_command_writes_artifact(tmp_path):
    result = tops("problems", "--config", str(REPO / "configs" / "smoke.yaml"), "--n", "9",
                  "--out", str(tmp_path / "p.parquet"))
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(tmp_path / "p.parquet")
    assert len(frame) == 9 and (tmp_path / "manifest.json").exists()


def test_run_dry_run_lists_every_stage_of_the_demo_and_runs_nothing(tmp_path):
    result = tops("run", "--dry-run", "--config", str(REPO / "configs" / "demo.yaml"),
                  "--set", f"run.root={tmp_path}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    stages = ["problems-seed", "problems-train", "problems-iter1", "problems-eval", "seed", "train-tag",
              "generate", "verify", "select-tops", "mask-tops", "train-tops", "generate-iter1", "verify-iter1",
              "eval-base", "eval-tag", "eval-tops", "eval-iter1"]
    positions = [out.index(f". {name}: to run") for name in stages]
    assert positions == sorted(positions)  # in the order they run
    assert "$ tops train sft --data" in out and "$ tops generate --in" in out
    # An evaluation's command may start with its lane's share of the node (VLLM_CPU_OMP_THREADS_BIND=... ).
    assert len(re.findall(r"\$ (?:[A-Z_]+=\S+ )*tops eval --model", out)) == 5
    assert "0 cached" in out and not list(tmp_path.iterdir())  # nothing written


def test_run_dry_run_with_a_bad_config_exits_2(tmp_path):
    result = tops("run", "--dry-run", "--config", str(REPO / "configs" / "demo.yaml"), "--set", f"run.root={tmp_path}",
                  "--set", "flow.iter_method=ppo")
    assert_user_error(result, "flow.iter_method")
