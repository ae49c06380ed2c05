"""Generation through the real vLLM engine (tiny model), the transformers engine, and the
OpenAI-compatible client against a real `vllm serve`; resumability by killing a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from tops.artifacts import read_artifact, write_artifact
from tops.config import GenerateConfig, SamplingConfig
from tops.domains import load_problems
from tops.engines import Request
from tops.errors import UserError
from tops.generate import generate_samples
from tops.stages import run_generate

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_vllm_generate_writes_valid_samples(tmp_path, vllm_engine, smoke_config):
    problems = load_problems(smoke_config.problems, n=4)
    out = tmp_path / "samples.parquet"
    samples, summary = generate_samples(problems, vllm_engine, smoke_config.generate,
                                        smoke_config.efforts.prompts, out, model_name="tiny", progress=False)
    back = read_artifact(out, "samples")
    assert len(back) == 4 * 3 * smoke_config.generate.n_samples == summary["rows"]
    assert not back.duplicated(["problem_id", "effort", "sample_idx"]).any()
    assert set(back["effort"]) == {"low", "medium", "high"}
    assert back["n_tokens"].between(1, 32).all()
    assert set(back["finish_reason"]) <= {"stop", "length"}
    # n_tokens counts generated tokens: a response cut at the budget has exactly the budget
    truncated = back[back["finish_reason"] == "length"]
    assert len(truncated) > 0 and (truncated["n_tokens"] == 32).all()
    assert "operands" in back.columns  # extra problem columns pass through
    assert not out.with_name(out.name + ".shards").exists()


def test_vllm_on_a_cpu_runs_its_engine_core_in_process(vllm_engine):
    """No second process importing vLLM and torch again (engine.in_process: None is in-process on
    a CPU), and torch.set_num_threads, which vLLM's CPU worker turns off, still works afterwards."""
    import torch

    assert type(vllm_engine.llm.llm_engine.engine_core).__name__ == "InprocClient"
    # the variables vLLM read while building the engine are gone again (later children never see them)
    assert not {"VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE"} & set(os.environ)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_the_engine_environment_lets_the_user_and_then_the_config_choose(monkeypatch, smoke_config):
    from tops.engines.vllm_engine import engine_environment, scoped_environment

    cfg = smoke_config.engine
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    wanted = engine_environment(cfg.model_copy(update={"in_process": None}), on_cpu=True)
    assert wanted["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and "VLLM_CPU_KVCACHE_SPACE" not in wanted
    assert engine_environment(cfg.model_copy(update={"in_process": None}), on_cpu=False) == {}
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's own choice ...
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_environment(cfg.model_copy(update={"in_process": None}), True)
    # ... unless the config says it explicitly
    assert engine_environment(cfg.model_copy(update={"in_process": True}), True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    with scoped_environment({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOPS_TEST_ONLY_VARIABLE": "x"}):
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and os.environ["TOPS_TEST_ONLY_VARIABLE"] == "x"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1" and "TOPS_TEST_ONLY_VARIABLE" not in os.environ


def test_per_effort_sample_counts(tmp_path, vllm_engine, smoke_config):
    problems = load_problems(smoke_config.problems, n=3)
    cfg = smoke_config.generate.model_copy(update={"n_samples": 1, "n_samples_by_effort": {"low": 3},
                                                   "shard_size": 4})
    samples, summary = generate_samples(problems, vllm_engine, cfg, smoke_config.efforts.prompts,
                                        tmp_path / "s.parquet", model_name="tiny", progress=False)
    counts = samples.groupby(["problem_id", "effort"]).size().unstack()
    assert (counts["low"] == 3).all() and (counts["medium"] == 1).all() and (counts["high"] == 1).all()
    assert sorted(samples.loc[samples["effort"] == "low", "sample_idx"].unique()) == [0, 1, 2]
    assert summary["rows"] == 3 * (3 + 1 + 1)
    assert summary["n_samples_by_effort"] == {"low": 3, "medium": 1, "high": 1}
    # Shards mix efforts (4 prompts each): rows still come back problem-major, efforts in order.
    first = samples.drop_duplicates(["problem_id", "effort"])
    assert first["effort"].tolist() == ["low", "medium", "high"] * 3


def test_one_engine_call_mixes_sample_counts(vllm_engine, tiny_model_dir, smoke_config):
    """A shard is one engine call with a sample count per request (vLLM keeps its batch full)."""
    from tops.engines import make_engine
    from tops.engines.base import samples_per_request

    reqs = [Request([{"role": "user", "content": f"What is {i} + 2?"}]) for i in range(3)]
    sampling = SamplingConfig(max_tokens=6, temperature=1.0)
    hf = make_engine(str(tiny_model_dir), smoke_config.engine.model_copy(update={"kind": "hf"}))
    for engine in (vllm_engine, hf):
        out = engine.generate(reqs, [3, 1, 2], sampling)
        assert [len(x) for x in out] == [3, 1, 2], engine.name
        assert all(1 <= c.n_tokens <= 6 for x in out for c in x)
    with pytest.raises(ValueError, match="2 sample counts for 3 requests"):
        samples_per_request([1, 2], 3)


def test_truncated_responses_are_marked(vllm_engine, smoke_config):
    reqs = [Request([{"role": "user", "content": "What is 1 + 1?"}])]
    out = vllm_engine.generate(reqs, 3, SamplingConfig(max_tokens=2, temperature=1.0))
    assert all(c.finish_reason == "length" and c.n_tokens == 2 for c in out[0])


def test_stop_strings_and_prefix_continuation(vllm_engine):
    reqs = [Request([{"role": "user", "content": "Count"}], prefix="1 2 3")]
    out = vllm_engine.generate(reqs, 2, SamplingConfig(max_tokens=16, stop=["e"]))
    for c in out[0]:
        assert "e" not in c.text
        assert c.finish_reason in {"stop", "length"}


def test_unknown_effort_and_empty_input(tmp_path, vllm_engine, smoke_config):
    problems = load_problems(smoke_config.problems, n=2)
    with pytest.raises(UserError, match="unknown effort 'ultra'"):
        generate_samples(problems, vllm_engine, GenerateConfig(efforts=["ultra"]), smoke_config.efforts.prompts,
                         tmp_path / "s.parquet", model_name="tiny", progress=False)
    with pytest.raises(UserError, match="empty input"):
        generate_samples(problems.iloc[:0], vllm_engine, smoke_config.generate, smoke_config.efforts.prompts,
                         tmp_path / "s.parquet", model_name="tiny", progress=False)
    assert not list(tmp_path.iterdir())


def test_run_generate_records_manifest(tmp_path, vllm_engine, smoke_config):
    problems_path = write_artifact(load_problems(smoke_config.problems, n=2), tmp_path / "p.parquet", "problems")
    summary = run_generate(smoke_config, tmp_path / "samples.parquet", problems_path=problems_path,
                           engine=vllm_engine, progress=False)
    import json

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["samples"]["rows"] == summary["rows"] == 2 * 3 * smoke_config.generate.n_samples
    assert manifest["stages"]["samples"]["inputs"]["problems"]["path"] == str(problems_path)


def test_hf_engine_matches_the_contract(tiny_model_dir, smoke_config):
    from tops.engines import make_engine

    engine = make_engine(str(tiny_model_dir), smoke_config.engine.model_copy(update={"kind": "hf"}))
    reqs = [Request([{"role": "user", "content": f"What is {i} + 1?"}]) for i in range(3)]
    out = engine.generate(reqs, 2, SamplingConfig(max_tokens=8, temperature=1.0))
    assert [len(x) for x in out] == [2, 2, 2]
    for completions in out:
        for c in completions:
            assert 1 <= c.n_tokens <= 8 and c.finish_reason in {"stop", "length"}
    assert engine.count_tokens(["hello world"])[0] >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_openai_engine_against_real_vllm_serve(tmp_path_factory, smoke_config):
    """A real `vllm serve --reasoning-parser deepseek_r1` on an R1-style model (its generation
    prompt opens `<think>\n`): the stored response is exactly what the same server writes for
    the same prompt without the parser (/v1/completions), with the template's opening put back,
    i.e. what an offline engine stores."""
    import httpx

    from tops.engines import make_engine
    from tops.engines.render import render_chat
    from tops.thinking import self_contained
    from tops.tiny import R1_STYLE_TEMPLATE, build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("models") / "r1", chat_template=R1_STYLE_TEMPLATE)
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--port", str(port), "--host", "127.0.0.1", "--max-model-len", "512", "--enforce-eager",
         "--dtype", "float32", "--reasoning-parser", "deepseek_r1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "vllm serve exited during start-up"
            time.sleep(2)
        cfg = smoke_config.engine.model_copy(update={"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                                     "served_model": str(model)})
        engine = make_engine(str(model), cfg)
        reqs = [Request([{"role": "user", "content": "What is 2 + 2?"}]),
                Request([{"role": "user", "content": "Go on"}], prefix="The answer")]
        out = engine.generate(reqs, 2, SamplingConfig(max_tokens=12, temperature=1.0))
        assert [len(x) for x in out] == [2, 2]
        for completions in out:
            for c in completions:
                assert 1 <= c.n_tokens <= 12 and c.finish_reason in {"stop", "length"}

        greedy = SamplingConfig(max_tokens=16, temperature=0.0)
        for question in ("What is 2 + 2?", "What is 17 + 25?"):
            request = Request([{"role": "user", "content": question}])
            prompt = render_chat(engine.tokenizer, request)
            assert prompt.endswith("<think>\n")  # the template opens the thought
            raw = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60, json={
                "model": str(model), "prompt": prompt, "max_tokens": 16, "temperature": 0.0}).json()
            stored = engine.generate([request], 1, greedy)[0][0]
            assert stored.text == self_contained(prompt, raw["choices"][0]["text"])
            assert stored.text.startswith("<think>\n")
        engine.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.mark.slow
def test_killed_generate_resumes_without_duplicates(tmp_path, tiny_model_dir, smoke_config):
    """Kill a real `tops generate` after its first shard lands; rerunning finishes the job
    with exactly one row per (problem, effort, sample). The resume is the stage's, whatever the
    engine: the transformers engine starts in a second where vLLM-CPU takes ~25 s, twice."""
    problems = load_problems(smoke_config.problems, n=24)
    problems_path = write_artifact(problems, tmp_path / "problems.parquet", "problems")
    out = tmp_path / "samples.parquet"
    cmd = [sys.executable, "-m", "tops.cli", "generate", "--config", str(REPO / "configs" / "smoke.yaml"),
           "--in", str(problems_path), "--out", str(out), "--quiet",
           "--set", f"model.base={tiny_model_dir}", "--set", "engine.kind=hf", "--set", "generate.shard_size=6",
           "--set", "generate.sampling.max_tokens=64"]
    first = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = out.with_name(out.name + ".shards")
    deadline = time.time() + 300
    while time.time() < deadline and not (shards.exists() and any(shards.glob("shard-*.parquet"))):
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = len(list(shards.glob("shard-*.parquet")))
    assert not out.exists() and 1 <= done_before < 12

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    samples = read_artifact(out, "samples")
    assert len(samples) == 24 * 3 * smoke_config.generate.n_samples
    assert not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    expected = pd.MultiIndex.from_product([problems["problem_id"], ["low", "medium", "high"],
                                           range(smoke_config.generate.n_samples)])
    assert set(map(tuple, samples[["problem_id", "effort", "sample_idx"]].to_numpy())) == set(expected)
    assert not shards.exists()
