"""OpenAI-compatible HTTP engine: `vllm serve`, sglang, or a teacher model behind an API.

Requests run concurrently on a thread pool; tokens are counted with the served model's own
tokenizer (engine.tokenizer, or the model name when it is loadable) so lengths are comparable
with the offline engines. A server started with a reasoning parser returns the thought apart
(`reasoning_content`, or `reasoning` in newer vLLM); it is joined back as `<think>…</think>answer`
and counted, so the stored response is the model's whole output (tops.thinking).

The server is not trusted to be up or well behaved (tops.engines.retrying): 429 / 5xx / dropped
connections are retried with backoff, every attempt has a total deadline, and an answer must hold
exactly the `n` choices asked for. A request that still fails fails the whole call (its shard),
with one line; the server's `usage` is summed for the stage's record.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from tops.config.base import quoted
from tops.engines.base import Completion, Request, samples_per_request
from tops.engines.render import count_tokens, render_chat, response_text
from tops.engines.retrying import Policy, RetryingClient
from tops.errors import ServiceError, UserError
from tops.thinking import THINK_OPEN, join_reasoning, open_thinking_tail


class OpenAIEngine:
    name = "openai"

    def __init__(self, model: str, cfg):
        from transformers import AutoTokenizer

        self.model = cfg.served_model or model
        self.base_url = cfg.base_url.rstrip("/")
        key = os.environ.get(cfg.api_key_env, "EMPTY")
        self.http = RetryingClient({"Authorization": f"Bearer {key}"},
                                   Policy(timeout_s=cfg.request_timeout_s, retries=cfg.max_retries,
                                          backoff_s=cfg.retry_backoff_s, max_wait_s=cfg.retry_max_wait_s))
        self.concurrency = cfg.max_concurrency
        self.vllm_extensions = cfg.vllm_extensions
        tokenizer_name = cfg.tokenizer or model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
        except OSError as exc:
            raise UserError(
                f"engine.tokenizer: cannot load tokenizer '{tokenizer_name}' to count tokens; "
                "set engine.tokenizer to a local folder or Hub id of the served model's tokenizer"
            ) from exc

    def _one(self, request: Request, n: int, sampling) -> list[Completion]:
        messages = list(request.messages)
        body: dict = {
            "model": self.model,
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if request.chat_template_kwargs:  # vLLM / sglang pass these to the chat template
            body["chat_template_kwargs"] = dict(request.chat_template_kwargs)
        if self.vllm_extensions:
            body["return_token_ids"] = True  # exact generated-token counts from vLLM's server
        if request.prefix:
            if not self.vllm_extensions:
                raise UserError("continuing a partial answer needs engine.vllm_extensions=true (a vLLM server)")
            # vLLM's server continues a partial assistant turn with these two switches.
            messages.append({"role": "assistant", "content": request.prefix})
            body.update(add_generation_prompt=False, continue_final_message=True)
        body["messages"] = messages
        url = f"{self.base_url}/chat/completions"
        what = _describe(request)
        choices = _exactly_n(self.http.post(url, body, what), n, url, what)
        prompt = self._local_prompt(request)  # once per request, not per choice
        texts = [self._response(request, prompt, c) for c in choices]
        if all(c.get("token_ids") is not None for c in choices):
            counts = [len(c["token_ids"]) for c in choices]
        else:
            counts = self.count_tokens(texts)
        return [
            Completion(text=t, n_tokens=k, finish_reason=c.get("finish_reason") or "stop",
                       stop_reason=c.get("stop_reason") if isinstance(c.get("stop_reason"), str) else None)
            for t, k, c in zip(texts, counts, choices, strict=True)
        ]

    def _response(self, request: Request, prompt: str | None, choice: dict) -> str:
        """The whole response of one choice: the thought joined back in front of the answer; with
        no separate thought, the thinking opening the (local copy of the) template wrote, if any."""
        message = choice["message"]
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        content = message.get("content") or ""
        if reasoning:
            opening = (open_thinking_tail(prompt) if prompt and not request.prefix else "") or THINK_OPEN
            return join_reasoning(reasoning, content, choice.get("finish_reason"), opening)
        return content if prompt is None else response_text(prompt, request, content)

    def _local_prompt(self, request: Request) -> str | None:
        """The prompt as the local copy of the chat template renders it (None: it cannot)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        from jinja2 import TemplateError

        try:
            return render_chat(self.tokenizer, request)
        except (TemplateError, ValueError):
            return None

    def generate(self, requests: list[Request], n: int | Sequence[int], sampling) -> list[list[Completion]]:
        """n completions per request; the first request that fails for good stops the others
        (none starts or retries after it) and its error is raised."""
        self.http.stop.clear()
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._one, r, count, sampling)
                       for r, count in zip(requests, samples_per_request(n, len(requests)), strict=True)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                self.http.stop.set()
                for future in futures:
                    future.cancel()
                raise failed.exception()
            return [f.result() for f in futures]

    def usage(self) -> dict[str, int]:
        """Requests, retries and the server's reported tokens so far (summed `usage`)."""
        return self.http.usage.as_dict()

    def count_tokens(self, texts: list[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def close(self) -> None:
        self.http.close()


def _describe(request: Request) -> str:
    """The request as an error line names it (its prompt row and effort, when generate set them)."""
    meta = request.meta or {}
    if "problem_id" in meta:
        return f"the request for problem {quoted(meta['problem_id'])}, effort {quoted(meta.get('effort'))}"
    where = ", ".join(f"{k} {meta[k]}" for k in ("row", "effort") if k in meta)
    return f"the request for prompt {where}" if where else "a request"


def _exactly_n(answer: dict, n: int, url: str, what: str) -> list[dict]:
    """The answer's choices in index order, exactly indexes 0..n-1, each with a message; anything
    else is the server's fault, named as such (never the input artifact's)."""
    choices = answer.get("choices")
    if not isinstance(choices, list):
        raise ServiceError(f"{url}: {what}: the answer has no `choices` list (keys: {sorted(answer)[:8]})")
    if len(choices) != n:
        raise ServiceError(f"{url}: {what}: the server returned {len(choices)} choices for n={n}; tops needs "
                           "exactly n per request (a server that ignores `n` cannot be used as is)")
    if not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
        raise ServiceError(f"{url}: {what}: a choice without a `message` object")
    texts = [c["message"].get(k) for c in choices for k in ("content", "reasoning_content", "reasoning")]
    if not all(t is None or isinstance(t, str) for t in texts):
        raise ServiceError(f"{url}: {what}: a choice whose message text is not a string")
    indexes = [c.get("index", i) for i, c in enumerate(choices)]
    if sorted(indexes, key=str) != sorted(range(n), key=str) or not all(type(i) is int for i in indexes):
        raise ServiceError(f"{url}: {what}: choice indexes {indexes[:8]} are not 0..{n - 1}, each once")
    return [c for _, c in sorted(zip(indexes, choices, strict=True), key=lambda p: p[0])]
