"""GRPO with LASER rewards on the tiny model, CPU only: a real run changes the weights and writes
the summary; two processes hold the same targets and see whole groups; the flow's
`iter_method: grpo` end to end on the smoke profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tops.config import GrpoConfig, TrainConfig, VerifyConfig

REPO = Path(__file__).resolve().parents[1]
PROMPTS = {"none": "Solve.", "low": "Effort: low.", "medium": "Effort: medium.", "high": "Effort: high."}

pytestmark = pytest.mark.slow


def arith_rows(n: int = 16) -> pd.DataFrame:
    rows = []
    for i in range(n):
        a, b = i % 5, (i * 3) % 5
        rows.append({"problem_id": f"p{i}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                     "difficulty": None, "effort": "none",
                     "response": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."})
    return pd.DataFrame(rows)


def problems_frame(n: int = 16) -> pd.DataFrame:
    return arith_rows(n)[["problem_id", "question", "answer", "difficulty"]]


@pytest.fixture(scope="module")
def format_model(tiny_model_dir, tmp_path_factory):
    """The tiny model after a short SFT on boxed answers: a random model never answers, so every
    reward would be -1 and GRPO would have no signal to follow."""
    import torch

    from tops.train import train_sft

    out = tmp_path_factory.mktemp("grpo") / "format"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_sft(arith_rows(), tiny_model_dir, out,
                  TrainConfig(system_prompt="none", learning_rate=3e-3, epochs=15, batch_size=8, max_length=128,
                              logging_steps=50, warmup_ratio=0.0, lr_scheduler="constant", lora={"enabled": False}),
                  PROMPTS, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def grpo_cfg(**overrides) -> GrpoConfig:
    base = {"reward": "laser-d", "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 24,
            "target_lower": 8, "target_interval": 8, "monitor_every": 2, "monitor_problems": 4,
            "learning_rate": 1e-3, "temperature": 1.0}
    return GrpoConfig(**{**base, **overrides})


TRAIN = {"system_prompt": "none", "epochs": 1, "batch_size": 4, "max_steps": 3, "lora": {"enabled": False},
         "save_steps": 100, "warmup_ratio": 0.0, "lr_scheduler": "constant"}


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_grpo_run_changes_weights_and_writes_summary(format_model, tmp_path):
    import torch

    from tops.train.grpo import train_grpo

    out = tmp_path / "laser-d"
    torch.set_num_threads(1)
    summary = train_grpo(problems_frame(), format_model, out, TrainConfig(**TRAIN), PROMPTS, grpo=grpo_cfg(),
                         verify=VerifyConfig(workers=1), progress=False)
    before, after = weights(format_model), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert summary["kind"] == "grpo" and summary["steps"] == 3 and summary["reward"] == "laser-d"
    # the monitor ran before the first step and again at step 2, with 4 problems x 4 rollouts
    assert [t["step"] for t in summary["targets"]] == [0, 2]
    assert all(t["monitor_rollouts"] == 16 and t["easy"] in (8, 16, 24) for t in summary["targets"])
    assert set(summary["reward_means"]) == {"accuracy", "laser", "laser-d", "laser-de"}
    assert len(summary["tokens_per_step"]) == 3 and all(0 < t <= 24 for t in summary["tokens_per_step"])
    assert len(summary["accuracy_per_step"]) == 3
    assert summary["group_sizes_by_process"] == [[4]]  # the reward saw every group whole
    assert summary["rollout_tokens"] == pytest.approx(sum(summary["tokens_per_step"]) * 8, abs=1)
    on_disk = json.loads((out / "train_summary.json").read_text())
    assert on_disk["targets"] == summary["targets"]
    assert (out / "grpo.png").exists() and (out / ".tops-complete").exists()
    # a rerun returns the finished folder instead of training again
    again = train_grpo(problems_frame(), format_model, out, TrainConfig(**TRAIN), PROMPTS, grpo=grpo_cfg(),
                       verify=VerifyConfig(workers=1), progress=False)
    assert again["train_seconds"] == summary["train_seconds"]


def test_batch_that_splits_groups_is_refused(format_model, tmp_path):
    from tops.errors import UserError
    from tops.train.grpo import train_grpo

    with pytest.raises(UserError, match="prompts_per_step x num_generations"):
        train_grpo(problems_frame(), format_model, tmp_path / "x", TrainConfig(**{**TRAIN, "batch_size": 3}),
                   PROMPTS, grpo=grpo_cfg(), verify=VerifyConfig(workers=1), progress=False)
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_laser_demo_configuration(tmp_path):
    """configs/laser-demo.yaml: LASER-D from the demo's TOPS model, one step of whole groups per
    micro-batch plan, evaluated on the demo's held-out problems; refused before the demo ran."""
    from tops.config import load_config
    from tops.errors import UserError
    from tops.laser_demo import laser_demo_commands
    from tops.train.grpo import steps_per_generation

    config = REPO / "configs" / "laser-demo.yaml"
    cfg = load_config(config, [f"run.root={tmp_path}"])
    assert cfg.grpo.reward == "laser-d" and cfg.grpo.rollouts == "transformers"
    assert steps_per_generation(cfg.train, cfg.grpo) == 2
    assert cfg.flow.iter_problems >= cfg.train.max_steps * cfg.grpo.prompts_per_step  # no problem twice
    source = tmp_path / "demo"
    with pytest.raises(UserError, match="run `tops demo` first"):
        laser_demo_commands(config, cfg, source)
    (source / "models" / "tops").mkdir(parents=True)
    (source / "problems").mkdir()
    for split in ("train", "eval"):
        problems_frame(4).to_parquet(source / "problems" / f"{split}.parquet")
    problems, train, evaluate = laser_demo_commands(config, cfg, source)
    assert problems[0] == "problems" and problems.count("--exclude") == 2
    drawn = problems[problems.index("--out") + 1]
    assert train[:2] == ["train", "grpo"] and train[train.index("--problems") + 1] == drawn
    assert train[train.index("--base") + 1] == str(source / "models" / "tops")
    assert evaluate[evaluate.index("--problems") + 1] == str(source / "problems" / "eval.parquet")
    assert [evaluate[i + 1] for i, a in enumerate(evaluate) if a == "--label"] == ["tops", "laser-d"]


def test_two_processes_gather_whole_groups_and_hold_the_same_targets(format_model, tmp_path):
    """`tops train grpo` under `accelerate launch` on 2 processes: one prompt's 4 rollouts are
    split 2 + 2 over the processes, yet the reward buckets every group whole, and the monitor's
    targets (re-estimated before step 1 and at step 1) are the same on both processes."""
    import yaml

    problems = tmp_path / "problems.parquet"
    problems_frame().to_parquet(problems)
    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump({
        "efforts": {"prompts": PROMPTS},
        "train": {**TRAIN, "batch_size": 2, "max_steps": 2, "num_processes": 2},
        "grpo": grpo_cfg(prompts_per_step=1, monitor_every=1).model_dump(mode="json"),
        "verify": {"workers": 1},
    }))
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tops.cli", "train", "grpo", "--problems", str(problems),
                           "--base", str(format_model), "--out", str(out), "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 2
    first, second = summary["targets_by_process"]
    assert [t["step"] for t in first] == [0, 1] and first == second
    assert all(t["monitor_rollouts"] == 16 for t in first)  # 4 problems x 4 rollouts, gathered from both
    assert summary["group_sizes_by_process"] == [[4], [4]]


def test_smoke_flow_with_grpo_iteration(harness, smoke_run, tmp_path):
    """`flow.iter_method: grpo` end to end on the smoke profile: iteration 1 is GRPO from the TOPS
    model on its problems, with no sampling stage before it, evaluated with the others, in the
    report and the rounds. It continues a copy of the session's smoke run (everything up to the
    TOPS model is a cache hit); GRPO itself runs in one process."""
    from conftest import run_smoke_flow

    from tops.artifacts import read_artifact

    result, states = run_smoke_flow([*smoke_run.continue_in(tmp_path), "flow.iter_method=grpo",
                                     "flow.train_overrides.iter_grpo.num_processes=1"])
    run_dir = Path(result["run_dir"])
    assert states["train-tops"] == "Cached" and states["train-iter1"] == states["eval-iter1"] == "Completed", states
    assert "generate-iter1" not in states  # GRPO samples its own rollouts
    summary = json.loads((run_dir / "models" / "iter1" / "train_summary.json").read_text())
    assert summary["kind"] == "grpo" and summary["reward"] == "laser-d" and summary["steps"] == 2
    assert summary["base_model"].endswith(os.readlink(run_dir / "models" / "tops").split("/")[-1])
    assert [t["step"] for t in summary["targets"]] == [0]
    evals = read_artifact(run_dir / "eval.parquet", "eval")
    assert "iter1" in set(evals["model"])
    report = (run_dir / "report.md").read_text()
    assert "Reinforcement learning (GRPO" in report and (run_dir / "grpo_iter1.png").exists()
    rounds = json.loads((run_dir / "rounds.json").read_text())["rounds"]
    assert rounds[0]["method"] == "grpo" and rounds[0]["model_label"] == "iter1"


@pytest.mark.parametrize("args, named", [
    (["--set", "grpo.reward=ppo"], "grpo.reward"),
    (["--set", "grpo.target_lower=99999"], "target_lower"),
    (["--problems", "missing.parquet"], "missing.parquet"),
])
def test_bad_grpo_input_is_one_line_and_exit_2(tmp_path, args, named):
    problems = tmp_path / "problems.parquet"
    problems_frame(4).to_parquet(problems)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tops.cli", "train", "grpo", "--problems", str(problems), "--out", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and named in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
