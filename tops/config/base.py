"""What every config section shares: no unknown fields, and short quotes in error lines."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

_QUOTE_CHARS = 80  # longest value an error message quotes


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def quoted(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """repr(value) cut to `limit` characters: an error line never carries a whole input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
