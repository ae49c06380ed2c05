"""Held-out problems: benchmark presets (GSM8K, MATH-500, AIME 2024/2025; out of domain the
multiple-choice GPQA Diamond, MMLU-Pro and LSAT) or another source.

Each preset knows its dataset's own columns and answer format, so the Hub dataset or a local
file with the same columns loads as is (`eval.benchmarks: [{name: math500, path: m.jsonl}]`).
A multiple-choice preset writes the options into the question as "(A) ..." lines and keeps the
gold letter; its answers are checked by the `choice` checker (tops/checkers.py), the maths sets
by `verify.checker`. Problem ids are namespaced by benchmark (`math500/test/algebra/1.json`);
`benchmark`, `checker` and, where the dataset has subjects, `subject` ride along to the eval
rows, where tops.evaluate reports per benchmark, difficulty and subject.
`held_out_problems` is the one place the flow and the CLI draw evaluation problems from.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from tops.choices import LETTERS, options_text
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
    # The dataset's rows -> columns `columns` names (+ `subject`): options into the question.
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    checker: str | None = None  # None: verify.checker
    in_domain: bool = True  # maths, as the loop trains on; False: the report's out-of-domain side


# ---------------------------------------------------------------- multiple-choice layouts

_MC = ColumnMap(question="question", answer="answer", problem_id="id")


def _need(raw: pd.DataFrame, *columns: str) -> None:
    for name in columns:
        if name not in raw.columns:
            raise ValueError(f"column '{name}' is missing; columns are: {', '.join(map(str, raw.columns))}")


def _options(value) -> list[str]:
    from tops.domains.tabular import as_text

    options = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(options, list):
        raise ValueError(f"options must be a list, got {as_text(options)[:80]!r}")
    options = [as_text(o) for o in options]
    while options and options[-1].strip() == "N/A":  # MMLU-Pro pads to ten options
        options.pop()
    return options


def _gpqa(raw: pd.DataFrame) -> pd.DataFrame:
    """GPQA: Question, Correct Answer, Incorrect Answer 1-3, Record ID, High-level domain. The
    correct answer's place is drawn from a hash of the record id (the same for every run, so
    runs compare), not always (A)."""
    from tops.domains.tabular import as_text

    _need(raw, "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3",
          "Record ID")
    rows = []
    for record in raw.to_dict("records"):
        rid = as_text(record["Record ID"])
        options = [as_text(record[f"Incorrect Answer {i}"]) for i in (1, 2, 3)]
        place = random.Random(hashlib.sha256(rid.encode()).digest()).randrange(4)
        options.insert(place, as_text(record["Correct Answer"]))
        rows.append({"id": rid, "question": options_text(as_text(record["Question"]), options),
                     "answer": LETTERS[place], "subject": record.get("High-level domain")})
    return pd.DataFrame(rows)


def _mmlu_pro(raw: pd.DataFrame) -> pd.DataFrame:
    """MMLU-Pro: question_id, question, options (up to ten), answer (letter), category."""
    from tops.domains.tabular import as_text

    _need(raw, "question_id", "question", "options", "answer", "category")
    return pd.DataFrame({
        "id": raw["question_id"].map(as_text),
        "question": [options_text(as_text(q), _options(o)) for q, o in zip(raw["question"], raw["options"], strict=True)],
        "answer": raw["answer"].map(as_text),
        "subject": raw["category"].map(as_text),
    })


def _lsat(raw: pd.DataFrame) -> pd.DataFrame:
    """LSAT (lighteval/lsat_qa): passage, question, references (the options), gold_index; no ids,
    so a problem's id is a hash of its passage, question and options."""
    from tops.domains.tabular import as_text

    _need(raw, "passage", "question", "references", "gold_index")
    rows = []
    for record in raw.to_dict("records"):
        options = _options(record["references"])
        text = options_text(as_text(record["passage"]).strip() + "\n\n" + as_text(record["question"]), options)
        index = int(as_text(record["gold_index"]))
        if not 0 <= index < len(options):
            raise ValueError(f"gold_index {index} is not one of the {len(options)} options")
        rows.append({"id": "q-" + hashlib.sha1(text.encode()).hexdigest()[:12], "question": text,
                     "answer": LETTERS[index]})
    return pd.DataFrame(rows)


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
    # Out of domain, multiple choice (letters), checked by the `choice` checker.
    "gpqa_diamond": Preset("GPQA Diamond", "Idavidrein/gpqa", "gpqa_diamond", "train", _MC, "choice",
                           prepare=_gpqa, checker="choice", in_domain=False),
    "mmlu_pro": Preset("MMLU-Pro", "TIGER-Lab/MMLU-Pro", None, "test", _MC, "choice",
                       prepare=_mmlu_pro, checker="choice", in_domain=False),
    "lsat": Preset("LSAT", "lighteval/lsat_qa", "all", "test", _MC, "choice",
                   prepare=_lsat, checker="choice", in_domain=False),
}


def in_domain(benchmark: str) -> bool:
    """Whether eval rows of `benchmark` are in the training domain (held-out problems drawn from
    a problems source are)."""
    preset = PRESETS.get(benchmark)
    return preset is None or preset.in_domain


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
        problems = load_table_problems(source, n=bench.n or _ALL, seed=seed, prepare=preset.prepare)
    except UserError as exc:
        raise UserError(f"benchmark {bench.name} ({preset.title}): {exc}") from exc
    problems["problem_id"] = bench.name + "/" + problems["problem_id"].astype(str)
    if preset.difficulty is not None:
        problems["difficulty"] = problems["difficulty"].map(preset.difficulty)
    problems["benchmark"] = bench.name
    problems["checker"] = bench.checker or preset.checker  # None: verify.checker
    return problems


def held_out_problems(cfg: TopsConfig, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
                      ) -> pd.DataFrame:
    """The evaluation problems: every configured benchmark (eval.benchmarks), else `n` drawn from
    eval.source, else from the training source (problems.source); ids in `exclude` (seed and
    training problems) are never drawn."""
    if cfg.eval.benchmarks:
        frames = [load_benchmark(bench, seed) for bench in cfg.eval.benchmarks]
        problems = pd.concat(frames, ignore_index=True)
        for column in ("subject", "checker"):  # absent from some sets: None, not NaN
            if column in problems.columns:
                problems[column] = problems[column].astype(object).where(problems[column].notna(), None)
        return problems[~problems["problem_id"].isin(exclude)].reset_index(drop=True)
    from tops.domains import load_problems

    problems_cfg = cfg.problems
    if cfg.eval.source is not None:
        problems_cfg = problems_cfg.model_copy(update={"source": cfg.eval.source})
    return load_problems(problems_cfg, n=n, seed=seed, exclude=exclude)
