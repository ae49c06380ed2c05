"""Held-out problems: benchmark presets (GSM8K, MATH-500, AIME 2024/2025) or another source.

Each preset knows its dataset's own columns and answer format, so the Hub dataset or a local
file with the same columns loads as is (`eval.benchmarks: [{name: math500, path: m.jsonl}]`).
Problem ids are namespaced by benchmark (`math500/test/algebra/1.json`) and a `benchmark`
column rides along to the eval rows, where tops.evaluate reports per benchmark and difficulty.
`held_out_problems` is the one place the flow and the CLI draw evaluation problems from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from tops.config import BenchmarkConfig, ColumnMap, FileSource, HFSource, TopsConfig
from tops.errors import UserError

_ALL = 10**9  # "every row" for the table loader's sample size


@dataclass(frozen=True)
class Preset:
    title: str
    hub_path: str
    hub_name: str | None
    split: str
    columns: ColumnMap
    answer_format: str  # tops.domains.tabular.gold_answer's format of the answer column
    difficulty: Callable[[str], str] | None = None  # the difficulty label from its column's value


PRESETS: dict[str, Preset] = {
    # GSM8K test: question / answer, the answer a worked solution ending "#### 42"; no ids.
    "gsm8k": Preset("GSM8K", "openai/gsm8k", "main", "test", ColumnMap(question="question", answer="answer"),
                    "gsm8k"),
    # MATH-500: problem / solution / answer / subject / level (1-5) / unique_id.
    "math500": Preset("MATH-500", "HuggingFaceH4/MATH-500", None, "test",
                      ColumnMap(question="problem", answer="answer", problem_id="unique_id", difficulty="level"),
                      "plain", lambda level: f"level {level}"),
    # AIME 2024 (AIME I and II): id / problem / solution / answer / url / year.
    "aime24": Preset("AIME 2024", "HuggingFaceH4/aime_2024", None, "train",
                     ColumnMap(question="problem", answer="answer", problem_id="id"), "plain"),
    # AIME 2025 (AIME I and II): problem / answer / id.
    "aime25": Preset("AIME 2025", "math-ai/aime25", None, "test",
                     ColumnMap(question="problem", answer="answer", problem_id="id"), "plain"),
}


def load_benchmark(bench: BenchmarkConfig, seed: int = 0) -> pd.DataFrame:
    """One benchmark's problems (all, or a seeded subset of `bench.n`), ids prefixed by its name."""
    from tops.domains.tabular import load_table_problems

    preset = PRESETS[bench.name]
    if bench.path is not None:
        source = FileSource(path=bench.path, columns=preset.columns, answer_format=preset.answer_format)
    else:
        source = HFSource(path=preset.hub_path, name=preset.hub_name, split=preset.split,
                          columns=preset.columns, answer_format=preset.answer_format)
    try:
        problems = load_table_problems(source, n=bench.n or _ALL, seed=seed)
    except UserError as exc:
        raise UserError(f"benchmark {bench.name} ({preset.title}): {exc}") from exc
    problems["problem_id"] = bench.name + "/" + problems["problem_id"].astype(str)
    if preset.difficulty is not None:
        problems["difficulty"] = problems["difficulty"].map(preset.difficulty)
    problems["benchmark"] = bench.name
    return problems


def held_out_problems(cfg: TopsConfig, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
                      ) -> pd.DataFrame:
    """The evaluation problems: every configured benchmark (eval.benchmarks), else `n` drawn from
    eval.source, else from the training source (problems.source); ids in `exclude` (seed and
    training problems) are never drawn."""
    if cfg.eval.benchmarks:
        frames = [load_benchmark(bench, seed) for bench in cfg.eval.benchmarks]
        problems = pd.concat(frames, ignore_index=True)
        return problems[~problems["problem_id"].isin(exclude)].reset_index(drop=True)
    from tops.domains import load_problems

    problems_cfg = cfg.problems
    if cfg.eval.source is not None:
        problems_cfg = problems_cfg.model_copy(update={"source": cfg.eval.source})
    return load_problems(problems_cfg, n=n, seed=seed, exclude=exclude)
