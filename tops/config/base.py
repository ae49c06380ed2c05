"""What every config section shares: no unknown fields, and short quotes in error lines."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

_QUOTE_CHARS = 80  # longest value an error message quotes
# Upper bounds that keep a typo (1e9) from planning or allocating without end (issue 30).
MAX_SAMPLES = 4096  # responses per (problem, effort)
MAX_ITERATIONS = 1000  # self-improvement iterations of one run


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def quoted(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """repr(value) cut to `limit` characters: an error line never carries a whole input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
