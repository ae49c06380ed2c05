"""Where problems come from: the arith world, a Hub dataset, a local file, or a benchmark preset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from tops.config.base import Strict


class ArithLevel(Strict):
    # Digits of every operand, or one entry per operand (e.g. [2, 1] for "47 + 5").
    digits: Annotated[int, Field(ge=1, le=12)] | list[Annotated[int, Field(ge=1, le=12)]]
    operands: int = Field(2, ge=2, le=6)
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+"])

    @model_validator(mode="after")
    def _digits_per_operand(self) -> ArithLevel:
        if isinstance(self.digits, list) and len(self.digits) != self.operands:
            raise ValueError(f"digits lists {len(self.digits)} operands but operands is {self.operands}")
        return self

    @property
    def digits_per_operand(self) -> list[int]:
        return self.digits if isinstance(self.digits, list) else [self.digits] * self.operands


def _default_levels() -> dict[str, ArithLevel]:
    return {
        "easy": ArithLevel(digits=1),
        "medium": ArithLevel(digits=2),
        "hard": ArithLevel(digits=3),
    }


class ArithSource(Strict):
    kind: Literal["arith"] = "arith"
    levels: dict[str, ArithLevel] = Field(default_factory=_default_levels)


class ColumnMap(Strict):
    question: str = "question"
    answer: str = "answer"
    problem_id: str | None = None
    difficulty: str | None = None


class HFSource(Strict):
    kind: Literal["hf"] = "hf"
    path: str
    name: str | None = None
    split: str = "train"
    columns: ColumnMap = Field(default_factory=ColumnMap)
    answer_format: Literal["auto", "gsm8k", "boxed", "plain", "choice"] = "auto"


class FileSource(Strict):
    kind: Literal["file"] = "file"
    path: Path
    columns: ColumnMap = Field(default_factory=ColumnMap)
    answer_format: Literal["auto", "gsm8k", "boxed", "plain", "choice"] = "auto"


def _source_kind(value: Any) -> str | None:
    """`kind` picks the source class; a source without one is the default arith world."""
    if isinstance(value, dict):
        return value.get("kind", "arith")
    return getattr(value, "kind", None)


SourceConfig = Annotated[
    Annotated[ArithSource, Tag("arith")] | Annotated[HFSource, Tag("hf")] | Annotated[FileSource, Tag("file")],
    Discriminator(_source_kind),
]


class ProblemsConfig(Strict):
    source: SourceConfig = Field(default_factory=ArithSource)
    n: int = Field(48, ge=1)  # problems drawn for one `tops problems` call
    seed: int = 0


class BenchmarkConfig(Strict):
    """A benchmark preset (tops/benchmarks.py): the Hub dataset, or `path`, a local file with
    the same columns."""

    name: Literal["gsm8k", "math500", "aime24", "aime25", "gpqa_diamond", "mmlu_pro", "lsat"]
    path: Path | None = None
    n: int | None = Field(None, ge=1)  # a random subset of this many problems (None: all)
    # The checker of its answers (tops/checkers.py); None: the preset's (choice for the
    # multiple-choice sets), else verify.checker.
    checker: str | None = None

    @field_validator("checker")
    @classmethod
    def _checker_installed(cls, name: str | None) -> str | None:
        from tops.checkers import check_name

        return None if name is None else check_name(name)
