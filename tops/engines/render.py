"""Chat rendering shared by the local engines: template + optional assistant prefix -> ids."""

from __future__ import annotations

from tops.engines.base import Request
from tops.thinking import self_contained, without_open_tail


def render_chat(tokenizer, request: Request) -> str:
    """The chat with the generation prompt, as the template renders it (no prefix)."""
    return tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True,
                                         **request.chat_template_kwargs)


def render_prompt(tokenizer, request: Request) -> str:
    # A prefix is a response so far, self-contained: it carries the thinking opening that the
    # template may have written already, which then is not repeated.
    text = render_chat(tokenizer, request)
    return without_open_tail(text, request.prefix) + request.prefix


def render_ids(tokenizer, request: Request) -> list[int]:
    # The template already holds every special token; encoding it again must add none.
    return tokenizer(render_prompt(tokenizer, request), add_special_tokens=False)["input_ids"]


def response_text(prompt: str, request: Request, generated: str) -> str:
    """The stored response: a fresh answer gets back the thinking opening its prompt wrote
    (tops.thinking); a continuation of a prefix is returned as generated."""
    return generated if request.prefix else self_contained(prompt, generated)


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of plain texts (no special tokens), as every engine reports them."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
