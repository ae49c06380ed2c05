"""Chat rendering shared by the local engines: template + optional assistant prefix -> ids."""

from __future__ import annotations

from tops.engines.base import Request


def render_prompt(tokenizer, request: Request) -> str:
    text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
    return text + request.prefix


def render_ids(tokenizer, request: Request) -> list[int]:
    # The template already holds every special token; encoding it again must add none.
    return tokenizer(render_prompt(tokenizer, request), add_special_tokens=False)["input_ids"]


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of plain texts (no special tokens), as every engine reports them."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
