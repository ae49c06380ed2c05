"""Thinking blocks: every stored response is self-contained, `<think>…</think>answer`.

Chat templates of reasoning models differ in where the thinking opens: Qwen3 lets the model
write `<think>`, DeepSeek-R1 distills and QwQ end the generation prompt with `<think>\\n`, so
the generated text holds only `</think>`, and a server with a reasoning parser returns the
thought apart from the answer (`reasoning_content`). The engines restore one shape — the
opening the prompt wrote is put back in front of the response, a separate thought is joined
— so that one rule holds everywhere: a response that opened its thinking and never closed it
was cut off mid-thought and has no answer (tops.answers.extract_answer reads answers only
after `</think>`), and training renders exactly this text (tops.train.examples).
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def open_thinking_tail(prompt: str) -> str:
    """The end of a rendered prompt from a `<think>` it leaves open ("" when none is open):
    the part of the response the template wrote for the model."""
    opened = prompt.rfind(THINK_OPEN)
    if opened < 0 or prompt.find(THINK_CLOSE, opened) >= 0:
        return ""
    return prompt[opened:]


def self_contained(prompt: str, generated: str) -> str:
    """The generated text with the thinking opening its prompt wrote put back in front."""
    tail = open_thinking_tail(prompt)
    return tail + generated if tail and not generated.lstrip().startswith(THINK_OPEN) else generated


def cut_off_in_thinking(response: str) -> bool:
    """True when the response opened a thinking block and never closed it: no answer can be
    read from it, whatever the thought says along the way."""
    opened = response.rfind(THINK_OPEN)
    return opened >= 0 and response.find(THINK_CLOSE, opened) < 0


def join_reasoning(reasoning: str | None, content: str | None, finish_reason: str | None,
                   opening: str = THINK_OPEN) -> str:
    """One response from a server's separate thought and answer. A thought cut off by the
    token limit with no answer after it stays open: the server stopped inside the thinking.
    `opening`: what opened the thought, the prompt's open tail when the template wrote it
    (`<think>\n` for R1 distills: the parser returns only what the model wrote after it), so
    the response reads exactly as an offline engine stores it."""
    content = content or ""
    if not reasoning:
        return content
    if not content and finish_reason == "length":
        return f"{opening}{reasoning}"
    return f"{opening}{reasoning}{THINK_CLOSE}{content}"


def answer_part(response: str) -> str | None:
    """Where a response's final answer is read: the text after the last `</think>`; when nothing
    follows a closed block, the block itself (the model put its whole reply in the thinking);
    None when a block opened and never closed (cut off mid-thought); else the whole response."""
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        after = response[close + len(THINK_CLOSE):]
        return after if after.strip() else response[:close]
    return None if THINK_OPEN in response else response


def after_thinking(text: str) -> str:
    """The text after the last `</think>` (all of it when there is none): a reply without its thought."""
    close = text.rfind(THINK_CLOSE)
    return text if close < 0 else text[close + len(THINK_CLOSE):]


def without_open_tail(prompt: str, response: str) -> str:
    """The prompt to put a self-contained response after: when the prompt itself opens the
    thinking and the response starts with its own `<think>`, the prompt's opening is dropped so
    the text reads as the model wrote it, with a single opening."""
    tail = open_thinking_tail(prompt)
    return prompt[:len(prompt) - len(tail)] if tail and response.startswith(THINK_OPEN) else prompt
