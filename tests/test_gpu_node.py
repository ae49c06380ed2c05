"""configs/qwen7b-gsm8k.yaml: what it asks for, the problem counts the flow honours, and a whole
run on this CPU with the tiny model and local files in GSM8K's own format swapped in."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from tops.config import TopsConfig, flow_problem_counts, load_config
from tops.errors import UserError

REPO = Path(__file__).resolve().parents[1]
QWEN7B = REPO / "configs" / "qwen7b-gsm8k.yaml"
GSM8K_TRAIN_ROWS = 7473
SHORT_PROMPTS = "{low: 'Answer at once.', medium: 'Show the working.', high: 'Show the working, then check it.', " \
                "none: 'Solve.'}"


def test_qwen7b_config_asks_for_the_paper_setup():
    cfg = load_config(QWEN7B)
    assert cfg.seed.teacher == "Qwen/QwQ-32B-Preview"  # a model answering under the effort prompts
    assert cfg.problems.source.kind == "hf" and cfg.problems.source.split == "train"
    assert [(b.name, b.n) for b in cfg.eval.benchmarks] == [("gsm8k", 500)]  # the preset is the test split
    counts = flow_problem_counts(cfg)
    assert counts["train"] == cfg.problems.n == 4000
    assert counts["seed"] + counts["train"] + counts["iter1"] <= GSM8K_TRAIN_ROWS
    # the paper's per-stage learning rates, epochs and batches (batch_size x grad_accum x 8 GPUs)
    lr = {s: cfg.train_config(s).learning_rate for s in ("tag", "tops", "iter_sft")}
    assert lr == {"tag": 1e-5, "tops": 1e-5, "iter_sft": 1e-6}
    dpo = cfg.train_config("iter_dpo")
    assert dpo.dpo_learning_rate == 5e-7 and dpo.dpo_epochs == 3
    batch = {s: (t := cfg.train_config(s)).batch_size * t.grad_accum * t.num_processes
             for s in ("tag", "tops", "iter_sft", "iter_dpo")}
    assert batch == {"tag": 32, "tops": 96, "iter_sft": 32, "iter_dpo": 32}
    assert [cfg.train_config(s).epochs for s in ("tag", "tops", "iter_sft")] == [3, 2, 1]


def test_train_count_is_problems_n_unless_the_flow_says_otherwise():
    assert flow_problem_counts(TopsConfig())["train"] == TopsConfig().problems.n
    cfg = load_config(None, ["flow.train_problems=30"])
    assert flow_problem_counts(cfg)["train"] == 30
    both = load_config(None, ["flow.train_problems=30", "problems.n=30", "flow.iterations=2"])
    assert flow_problem_counts(both) == {"seed": 60, "train": 30, "iter1": 60, "iter2": 60, "eval": 60}


def test_conflicting_train_counts_are_refused():
    cfg = load_config(QWEN7B, ["flow.train_problems=120"])
    with pytest.raises(UserError, match=r"problems.n \(4000\) and flow.train_problems \(120\) disagree"):
        flow_problem_counts(cfg)


def test_the_flow_will_not_run_short_of_problems(tmp_path):
    from tops.flow.tasks import light_task

    path = tmp_path / "train.jsonl"
    _write_gsm8k(path, _gsm8k_rows(5, seed=0))
    cfg = load_config(None, [f"problems.source={{kind: file, path: {path}, answer_format: gsm8k}}"])
    with pytest.raises(UserError, match="8 problems asked, the source has only 5"):
        light_task.fn(cfg, key="k", out=str(tmp_path / "p.parquet"), run_dir=str(tmp_path), stage="problems",
                      files={}, params={"n": 8, "seed": 0, "heldout": False}, options={"exact": True})
    assert not (tmp_path / "p.parquet").exists()


# ---------------------------------------------------------------- the whole run on a CPU


def _gsm8k_rows(n: int, seed: int) -> list[dict]:
    """Word problems in GSM8K's own layout: question, answer = worked solution + '#### N'."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        a, b = rng.randint(1, 20), rng.randint(1, 9)
        who, what = rng.choice(["Tom", "Ann", "Sam", "Lia"]), rng.choice(["apples", "books", "coins", "pens"])
        question = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have?"
        if question not in seen:
            seen.add(question)
            rows.append({"question": question,
                         "answer": f"{who} has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} {what}.\n#### {a + b}"})
    return rows


def _write_gsm8k(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _teacher(tiny_model_dir: Path, problems: pd.DataFrame, out: Path, prompts: dict[str, str]) -> Path:
    """The tiny model taught to answer these problems at three lengths, one per effort prompt: a
    real model teacher the seed stage samples, verifies and keeps."""
    from tops.config import TrainConfig
    from tops.train import train_sft

    rows = []
    for record in problems.to_dict("records"):
        work, gold = re.search(r"<<(.+?)>>", record["solution"]).group(1), record["answer"]
        for effort, response in (("low", f"\\boxed{{{gold}}}"),
                                 ("medium", f"{work}. \\boxed{{{gold}}}"),
                                 ("high", f"{work}. Check: {work}. \\boxed{{{gold}}}")):
            rows.append({**record, "effort": effort, "sample_idx": 0, "response": response, "n_tokens": 0,
                         "finish_reason": "stop"})
    cfg = TrainConfig(system_prompt="effort", learning_rate=3e-3, epochs=30, batch_size=2, max_length=256,
                      lora={"enabled": False}, save_steps=1000)
    train_sft(pd.DataFrame(rows), str(tiny_model_dir), out, cfg, prompts, progress=False)
    return out


@pytest.mark.slow
def test_qwen7b_config_runs_end_to_end_on_cpu(harness, tmp_path, tiny_model_dir):
    from tops.artifacts import read_artifact
    from tops.domains import load_problems
    from tops.flow.pipeline import tops_loop

    train_file = _write_gsm8k(tmp_path / "gsm8k-train.jsonl", _gsm8k_rows(30, seed=1))
    source = f"{{kind: file, path: {train_file}, answer_format: gsm8k}}"
    test_file = _write_gsm8k(tmp_path / "gsm8k-test.jsonl", _gsm8k_rows(6, seed=2))
    overrides = [
        # the tiny model instead of Qwen2.5-7B and QwQ-32B-Preview, on the CPU
        f"model.base={tiny_model_dir}", "engine.kind=hf", "engine.dtype=float32", "engine.max_model_len=512",
        "seed.engine={kind: hf, dtype: float32, max_model_len: 512}", "seed.sampling={temperature: 0, max_tokens: 48}",
        "seed.min_gap_tokens=4", f"efforts.prompts={SHORT_PROMPTS}",
        "train.num_processes=1", "train.accelerate_config=null", "train.max_length=256",
        "generate.sampling.max_tokens=32", "eval.sampling.max_tokens=32", "eval.seeds=[0, 1]",
        # GSM8K's own format from local files, at CPU scale
        f"problems.source={source}", "problems.n=10", "flow.seed_problems=6", "flow.iter_problems=6",
        "flow.iter_samples=2", "eval.n_problems=6", f"run.root={tmp_path / 'runs'}",
        # held out from a different source: the GSM8K preset over a local file in its test layout
        f"eval.benchmarks=[{{name: gsm8k, path: {test_file}}}]",
        # TOPS and random-correct SFT side by side, one core each (a CPU host)
        "flow.concurrent_trains=2",
    ]
    cfg = load_config(QWEN7B, overrides)
    # the teacher knows the seed split's problems (the flow draws it with run.seed)
    seed_split = load_problems(cfg.problems, n=cfg.flow.seed_problems, seed=cfg.run.seed)
    solutions = {json.loads(line)["question"]: json.loads(line)["answer"] for line in train_file.read_text().splitlines()}
    seed_split["solution"] = seed_split["question"].map(solutions)
    teacher = _teacher(tiny_model_dir, seed_split, tmp_path / "teacher", cfg.efforts.prompts)
    overrides.append(f"seed.teacher={teacher}")

    result = tops_loop(config=str(QWEN7B), overrides=overrides)
    run = Path(result["run_dir"])
    counts = {name: len(read_artifact(run / f"problems/{name}.parquet", "problems"))
              for name in ("seed", "train", "iter1", "eval")}
    assert counts == {"seed": 6, "train": 10, "iter1": 6, "eval": 6}
    held_out = read_artifact(run / "problems/eval.parquet", "problems")
    assert held_out["problem_id"].str.startswith("gsm8k/").all() and set(held_out["benchmark"]) == {"gsm8k"}
    seed = read_artifact(run / "seed.parquet", "samples")
    assert len(seed) > 0 and set(seed["effort"]) == {"low", "medium", "high"}
    samples = read_artifact(run / "samples.parquet", "samples")
    assert len(samples) == 10 * 3 and not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    evals = read_artifact(run / "eval.parquet", "eval")
    assert set(evals["model"]) == {"base", "tag", "tops", "random", "iter1"}
    assert not evals.duplicated(["model", "problem_id", "effort", "seed"]).any()
    report = (run / "report.md").read_text()
    assert "| tops | none |" in report
    if len(os.sched_getaffinity(0)) >= 2:  # the two trainings ran at once, each on its own core
        assert "train (tops, random, 2 at a time)" in report
        manifest = json.loads((run / "stages" / "manifest.json").read_text())["stages"]
        cores = {name.split("-")[1]: record["summary"]["device_share"]["cores"]
                 for name, record in manifest.items() if name.startswith(("train-tops-", "train-random-"))}
        assert set(cores) == {"tops", "random"} and cores["tops"] != cores["random"], cores
