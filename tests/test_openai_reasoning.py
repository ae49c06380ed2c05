"""The OpenAI-compatible engine against a local HTTP server that answers like `vllm serve
--reasoning-parser`: the thought in `reasoning_content` (or `reasoning`), the answer in
`content`. The stored response holds both; a thought cut off by the token limit stays open and
verifies as no_answer."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from tops.config import EngineConfig, GenerateConfig, SamplingConfig, VerifyConfig

THOUGHT = "\nFirst 12 + 7 = 18.\nWait, 12 + 7 = 19.\n"
ANSWER = "\n\nThe answer is \\boxed{19}."


class _ReasoningServer(BaseHTTPRequestHandler):
    """Choice 0: finished thought + answer (reasoning_content); choice 1: the newer `reasoning`
    field; choice 2: cut off inside the thought (no content, finish_reason "length")."""

    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        choices = [
            {"index": 0, "finish_reason": "stop",
             "message": {"role": "assistant", "reasoning_content": THOUGHT, "content": ANSWER}},
            {"index": 1, "finish_reason": "stop",
             "message": {"role": "assistant", "reasoning": THOUGHT, "content": ANSWER}},
            {"index": 2, "finish_reason": "length",
             "message": {"role": "assistant", "reasoning_content": "\nMaybe \\boxed{19}? Let me", "content": None}},
        ][:body["n"]]
        payload = json.dumps({"id": "x", "object": "chat.completion", "choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ReasoningServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _ReasoningServer.bodies = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_stored_response_holds_thinking_and_answer(server, tiny_model_dir, tmp_path):
    from tops.engines import make_engine
    from tops.generate import generate_samples
    from tops.verify import verify_samples

    cfg = EngineConfig(kind="openai", base_url=server, vllm_extensions=False, tokenizer=str(tiny_model_dir))
    engine = make_engine("served-model", cfg)
    problems = pd.DataFrame({"problem_id": ["a"], "question": ["What is 12 + 7?"], "answer": ["19"],
                             "difficulty": [None]})
    prompts = {"none": "Solve.", "low": ""}
    gen = GenerateConfig(efforts=["none", "low"], n_samples=3, sampling=SamplingConfig(max_tokens=64))
    try:
        samples, _ = generate_samples(problems, engine, gen, prompts, tmp_path / "s.parquet", "served",
                                      progress=False, template_kwargs={"low": {"enable_thinking": False}})
        whole = f"<think>{THOUGHT}</think>{ANSWER}"
        assert samples["response"].tolist()[:3] == [whole, whole, "<think>\nMaybe \\boxed{19}? Let me"]
        # tokens cover the thought and the answer (no token ids from this server: counted)
        assert samples["n_tokens"].iloc[0] == engine.count_tokens([whole])[0] > engine.count_tokens([ANSWER])[0]
    finally:
        engine.close()
    bodies = {json.dumps(b["messages"]): b for b in _ReasoningServer.bodies}
    low = [b for b in bodies.values() if b["messages"][0]["role"] == "user"]
    assert len(low) == 1 and low[0]["chat_template_kwargs"] == {"enable_thinking": False}
    assert all("chat_template_kwargs" not in b for b in bodies.values() if b is not low[0])
    verified, _ = verify_samples(samples, VerifyConfig(workers=1), progress=False)
    assert verified["verify_status"].tolist() == ["ok", "ok", "no_answer"] * 2
    assert verified["correct"].tolist() == [True, True, False] * 2
