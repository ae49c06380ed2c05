"""The one protocol every generation backend implements.

"Generate n completions for these chats", where a chat may end in a partial assistant message
that the model must continue (step-wise depth controls resubmit such prefixes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int  # counted with the generating model's tokenizer
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    stop_reason: str | None = None  # the stop string that ended it, when one did
    # Depth controls (tops/depth.py): which one shaped it, and the strings it appended.
    depth_control: str = "none"
    n_injected: int = 0
    injected: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    messages: list[Message]
    # Text the assistant has already written; the completion continues it.
    prefix: str = ""
    meta: dict = field(default_factory=dict, compare=False)
    # Arguments to the chat template (an effort such as Qwen3's enable_thinking=False).
    chat_template_kwargs: dict = field(default_factory=dict, compare=False)


@runtime_checkable
class Engine(Protocol):
    name: str

    def generate(self, requests: list[Request], n: int | Sequence[int], sampling) -> list[list[Completion]]:
        """n completions per request (or n[i] for request i), in request order."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of plain texts with this model's tokenizer."""
        ...

    def close(self) -> None:
        ...


def samples_per_request(n: int | Sequence[int], count: int) -> list[int]:
    """One sample count per request. A list lets one engine call mix counts (the demo samples its
    low effort 4 times and the others once), so a continuous-batching engine keeps its batch full
    instead of finishing one call's long tail before the next call starts."""
    if isinstance(n, int):
        return [n] * count
    counts = [int(k) for k in n]
    if len(counts) != count:
        raise ValueError(f"{len(counts)} sample counts for {count} requests")
    return counts


def positions_by_count(counts: Sequence[int]) -> dict[int, list[int]]:
    """Request positions grouped by sample count, for a path that takes one count per call."""
    groups: dict[int, list[int]] = {}
    for i, count in enumerate(counts):
        groups.setdefault(count, []).append(i)
    return groups
