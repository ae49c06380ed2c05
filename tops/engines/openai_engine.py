"""OpenAI-compatible HTTP engine: `vllm serve`, sglang, or a teacher model behind an API.

Requests run concurrently on a thread pool; tokens are counted with the served model's own
tokenizer (engine.tokenizer, or the model name when it is loadable) so lengths are comparable
with the offline engines. A server started with a reasoning parser returns the thought apart
(`reasoning_content`, or `reasoning` in newer vLLM); it is joined back as `<think>…</think>answer`
and counted, so the stored response is the model's whole output (tops.thinking).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx

from tops.engines.base import Completion, Request
from tops.engines.render import count_tokens, render_chat, response_text
from tops.errors import UserError
from tops.thinking import THINK_OPEN, join_reasoning, open_thinking_tail


class OpenAIEngine:
    name = "openai"

    def __init__(self, model: str, cfg):
        from transformers import AutoTokenizer

        self.model = cfg.served_model or model
        self.base_url = cfg.base_url.rstrip("/")
        key = os.environ.get(cfg.api_key_env, "EMPTY")
        self.client = httpx.Client(timeout=cfg.request_timeout_s,
                                   headers={"Authorization": f"Bearer {key}"})
        self.concurrency = cfg.concurrency
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
        response = self.client.post(f"{self.base_url}/chat/completions", json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{self.base_url}: HTTP {response.status_code}: {response.text[:300]}")
        choices = sorted(response.json()["choices"], key=lambda c: c["index"])
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

    def generate(self, requests: list[Request], n: int, sampling) -> list[list[Completion]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda r: self._one(r, n, sampling), requests))

    def count_tokens(self, texts: list[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def close(self) -> None:
        self.client.close()
