"""The OpenAI-compatible engine against a local server that misbehaves the ways real ones do: 429
with Retry-After, 5xx, dropped connections, a server that never recovers, one that drips bytes,
and answers with the wrong number of choices. Every row is stored exactly once; what cannot be
had fails its shard with one line, and a rerun resumes from the finished shards."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from tops.config import EngineConfig, GenerateConfig, SamplingConfig
from tops.errors import ServiceError

PROMPTS = {"low": "Be brief."}


class _Flaky(BaseHTTPRequestHandler):
    """Answers each question after the failures scripted for it (one per attempt, in order):
    an HTTP status ("429" comes with Retry-After: 1), "drop" (connection closed, no answer), "drip" /
    "drip-head" (a byte every 0.1 s of the body / of the status line), "forever" (503 every time),
    or a number k: k choices instead of n. Each answer echoes the question."""

    script: dict[str, list] = {}
    attempts: dict[str, list[float]] = {}
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = body["messages"][-1]["content"]
        with self.lock:
            times = self.attempts.setdefault(question, [])
            times.append(time.monotonic())
            plan = self.script.get(question, [])
            step = "forever" if plan == ["forever"] else plan[len(times) - 1] if len(times) <= len(plan) else "ok"
        if step == "forever" or isinstance(step, str) and step.isdigit():
            status = 503 if step == "forever" else int(step)
            self._send(status, b'{"error": "busy"}', {"Retry-After": "1"} if status == 429 else {})
        elif step == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif step in ("drip", "drip-head"):
            self._drip(head=step == "drip-head")
        else:
            n = step if isinstance(step, int) else body["n"]
            choices = [{"index": i, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"{question} -> \\boxed{{{i}}}"}}
                       for i in range(n)]
            self._send(200, json.dumps({"choices": choices, "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                                                      "total_tokens": 18}}).encode())

    def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _drip(self, head: bool) -> None:
        prefix = b"" if head else b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        self.wfile.write(prefix)
        self.wfile.flush()
        data = b"HTTP/1.1 200 OK\r\n" if head else b"{" + b" " * 99_999
        for byte in data[:300]:  # 30 s at most, whatever the client does
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Flaky.script, _Flaky.attempts = {}, {}
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _engine(url: str, tokenizer, **retry):
    from tops.engines import make_engine

    cfg = EngineConfig(kind="openai", base_url=url, vllm_extensions=False, tokenizer=str(tokenizer),
                       served_model="served", **{"retry_backoff_s": 0.01, "max_retries": 3, **retry})
    return make_engine("served", cfg)


def _problems(questions: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(len(questions))], "question": questions,
                         "answer": ["0"] * len(questions), "difficulty": [None] * len(questions)})


def test_retries_store_every_row_exactly_once(server, tiny_model_dir, tmp_path):
    from tops.generate import generate_samples

    questions = [f"q{i}" for i in range(6)]
    _Flaky.script = {"q0": ["429"], "q1": ["500", "500"], "q2": ["drop"], "q3": ["drop", "503"], "q5": ["502"]}
    engine = _engine(server, tiny_model_dir, max_concurrency=3)
    gen = GenerateConfig(efforts=["low"], n_samples=2, shard_size=2, sampling=SamplingConfig(max_tokens=16))
    try:
        samples, summary = generate_samples(_problems(questions), engine, gen, PROMPTS, tmp_path / "s.parquet",
                                            "served", progress=False)
    finally:
        engine.close()
    assert len(samples) == 12
    assert not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    for row in samples.itertuples():  # each row holds its own problem's answer
        assert row.response == f"{row.question} -> \\boxed{{{row.sample_idx}}}"
    assert {q: len(t) for q, t in _Flaky.attempts.items()} == {"q0": 2, "q1": 3, "q2": 2, "q3": 3, "q4": 1, "q5": 2}
    # Retry-After: 1 was waited for (the backoff alone is 10 ms)
    assert _Flaky.attempts["q0"][1] - _Flaky.attempts["q0"][0] >= 0.9
    assert summary["api_usage"] == {"requests": 6, "retries": 7, "prompt_tokens": 66, "completion_tokens": 42,
                                    "total_tokens": 108}


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from tops.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code or 0, capsys.readouterr().err


def test_server_that_never_recovers_fails_one_shard_and_rerun_resumes(server, tiny_model_dir, tmp_path, capsys):
    problems = tmp_path / "problems.parquet"
    _problems(["q0", "q1", "q2", "q3"]).to_parquet(problems)
    out = tmp_path / "samples.parquet"
    _Flaky.script = {"q2": ["forever"]}
    args = ["generate", "--in", str(problems), "--out", str(out), "--model", str(tiny_model_dir), "--quiet",
            "--set", "engine.kind=openai", "--set", f"engine.base_url={server}", "--set", "engine.served_model=served",
            "--set", "engine.vllm_extensions=false", "--set", "engine.max_retries=1",
            "--set", "engine.retry_backoff_s=0.01", "--set", "generate.efforts=[low]",
            "--set", "generate.n_samples=2", "--set", "generate.shard_size=1", "--set", "run.root=" + str(tmp_path)]
    code, err = _cli(args, capsys)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "HTTP 503" in last and "after 2 attempts" in last
    assert "the request for problem 'p2', effort 'low' failed" in last
    assert not out.exists()
    shards = sorted(p.name for p in out.with_name(out.name + ".shards").glob("shard-*.parquet"))
    assert [s[:11] for s in shards] == ["shard-00000", "shard-00001"]  # q0 and q1 finished and kept

    _Flaky.script = {}  # the server is back
    code, err = _cli(args, capsys)
    assert code == 0, err
    samples = pd.read_parquet(out)
    assert sorted(samples["problem_id"]) == ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
    assert not samples.duplicated(["problem_id", "effort", "sample_idx"]).any()
    # the finished shards were not asked for again
    assert {q: len(t) for q, t in _Flaky.attempts.items()} == {"q0": 1, "q1": 1, "q2": 3, "q3": 1}


@pytest.mark.parametrize("mode", ["drip", "drip-head"])
def test_dripping_server_meets_the_deadline(server, tiny_model_dir, mode):
    from tops.engines import Request

    _Flaky.script = {"slow": [mode, mode]}
    engine = _engine(server, tiny_model_dir, request_timeout_s=1, max_retries=1)
    outcome: list = []

    def call():
        try:
            engine.generate([Request(messages=[{"role": "user", "content": "slow"}])], 1,
                            SamplingConfig(max_tokens=8))
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=30)  # a bound on the test, not a measurement: the server drips for 30 s per attempt
    try:
        assert not worker.is_alive(), "the request outlived its deadline"
        [error] = outcome
        assert isinstance(error, ServiceError)
        assert "no complete answer within 1 s" in str(error) and "after 2 attempts" in str(error)
        assert len(_Flaky.attempts["slow"]) == 2
    finally:
        engine.close()


@pytest.mark.parametrize("count", [0, 1, 7])
def test_wrong_number_of_choices_is_the_servers_fault(server, tiny_model_dir, tmp_path, count):
    from tops.generate import generate_samples

    _Flaky.script = {"q0": [count]}
    engine = _engine(server, tiny_model_dir)
    gen = GenerateConfig(efforts=["low"], n_samples=4, sampling=SamplingConfig(max_tokens=16))
    try:
        with pytest.raises(ServiceError, match=f"returned {count} choices for n=4") as info:
            generate_samples(_problems(["q0"]), engine, gen, PROMPTS, tmp_path / "s.parquet", "served",
                             progress=False)
    finally:
        engine.close()
    assert "s.parquet" not in str(info.value)  # the input artifact is not blamed
    assert not (tmp_path / "s.parquet").exists()


def test_refused_key_is_the_users_error(server, tiny_model_dir):
    """A 4xx other than 408/409/425/429 is not retried: the request as configured is wrong."""
    from tops.engines import Request
    from tops.errors import UserError

    _Flaky.script = {"x": ["401"]}
    engine = _engine(server, tiny_model_dir)
    try:
        with pytest.raises(UserError, match="HTTP 401.*engine.api_key_env"):
            engine.generate([Request(messages=[{"role": "user", "content": "x"}])], 1, SamplingConfig(max_tokens=8))
    finally:
        engine.close()
    assert len(_Flaky.attempts["x"]) == 1


def test_retry_after_and_backoff():
    from tops.engines.retrying import Policy, retry_after_seconds

    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    policy = Policy(timeout_s=1, retries=5, backoff_s=1, max_wait_s=10)
    assert policy.wait(0, 30.0) == 10  # Retry-After honoured up to the cap
    waits = [policy.wait(k, None) for k in range(6)]
    assert all(2 ** k / 2 <= w <= 2 ** k for k, w in enumerate(waits[:4]))
    assert 5 <= waits[5] <= 10


def test_eval_through_the_api_records_usage_and_logs_results(server, tiny_model_dir, tmp_path, capsys):
    """`tops eval` on the API engine: the server's usage per model in the stage's record, the
    results in <run>/logs/eval (TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    problems = tmp_path / "heldout.parquet"
    _problems(["q0", "q1"]).to_parquet(problems)
    out = tmp_path / "run" / "eval.parquet"
    code, err = _cli(["eval", "--model", str(tiny_model_dir), "--label", "served", "--problems", str(problems),
                      "--out", str(out), "--quiet", "--set", "engine.kind=openai", "--set", f"engine.base_url={server}",
                      "--set", "engine.served_model=served", "--set", "engine.vllm_extensions=false",
                      "--set", "eval.seeds=[0]", "--set", f"run.root={tmp_path}"], capsys)
    assert code == 0, err
    manifest = json.loads((out.parent / "manifest.json").read_text())
    [record] = [r for r in manifest["stages"].values() if r.get("stage") == "eval"]
    assert record["summary"]["api_usage"]["served"] == {"requests": 2, "retries": 0, "prompt_tokens": 22,
                                                        "completion_tokens": 14, "total_tokens": 36}
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "eval"))
    events.Reload()
    [accuracy] = events.Scalars("eval/served/none/accuracy")
    assert accuracy.value == 1.0  # the server answers \boxed{0}, the gold answer


@pytest.mark.parametrize(("answer", "message"), [
    ({"choices": [{"index": 0, "message": {"content": 5}}]}, "message text is not a string"),
    ({"choices": [{"index": 1, "message": {"content": "x"}}]}, r"choice indexes \[1\] are not 0..0"),
    ({"choices": [{"index": 0}]}, "without a `message` object"),
    ({"error": "x"}, "no `choices` list"),
])
def test_malformed_answers_are_named(answer, message):
    from tops.engines.openai_engine import _exactly_n

    with pytest.raises(ServiceError, match=message):
        _exactly_n(answer, 1, "http://server/v1/chat/completions", "the request")
    assert _exactly_n({"choices": [{"index": 1, "message": {"content": "b"}}, {"index": 0, "message": {"content": "a"}}]},
                      2, "u", "w")[0]["message"]["content"] == "a"  # in index order
