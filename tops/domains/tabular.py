"""Problems from tables: a Hub/local dataset through `datasets`, or a Parquet/JSONL/CSV file.

A column map names the question / answer / id / difficulty columns; gold answers follow the
usual conventions (GSM8K's "#### 42", MATH's \\boxed{}), or are taken as they are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from tops.errors import UserError


def gold_answer(solution: str, answer_format: str) -> str:
    """The gold answer string from a dataset's answer/solution field; an explicit format that
    does not match the text is an error rather than a silent fallback."""
    from tops.answers import final_boxed
    from tops.answers import gold_answer as auto_gold

    text = str(solution)
    if answer_format == "auto":
        return auto_gold(text)
    if answer_format == "gsm8k":
        if "####" not in text or not text.rsplit("####", 1)[1].strip():
            raise ValueError(f"no '####' answer in {text[:80]!r}")
        return text.rsplit("####", 1)[1].replace(",", "").strip()
    if answer_format == "boxed":
        boxed = final_boxed(text)
        if boxed is None:
            raise ValueError(f"no \\boxed{{}} answer in {text[:80]!r}")
        return boxed
    return text.strip()


def _read_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            table.validate(full=True)  # strings that are not UTF-8 fail here, not at the write
            return table.to_pandas()
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl")
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise UserError(f"{path}: cannot read ({exc.__class__.__name__}: {str(exc)[:200]})") from exc
    raise UserError(f"{path}: unsupported file type '{suffix}' (use .parquet, .jsonl, .json or .csv)")


def _read_hf(source) -> pd.DataFrame:
    import datasets

    try:
        data = datasets.load_dataset(source.path, source.name, split=source.split)
    except Exception as exc:
        raise UserError(f"dataset '{source.path}': cannot load ({str(exc).splitlines()[0]})") from exc
    return data.to_pandas()


def load_table_problems(source, n: int, seed: int, exclude=frozenset()) -> pd.DataFrame:
    raw = _read_file(Path(source.path)) if source.kind == "file" else _read_hf(source)
    cols = source.columns
    where = str(source.path)
    for role, name in (("question", cols.question), ("answer", cols.answer),
                       ("problem_id", cols.problem_id), ("difficulty", cols.difficulty)):
        if name is not None and name not in raw.columns:
            raise UserError(f"{where}: column '{name}' (problems.source.columns.{role}) is missing; "
                            f"columns are: {', '.join(map(str, raw.columns))}")
    if raw.empty:
        raise UserError(f"{where}: no rows")
    for role, name in (("question", cols.question), ("answer", cols.answer), ("problem_id", cols.problem_id)):
        if name is not None and raw[name].isna().any():
            row = int(raw[name].isna().to_numpy().argmax())
            raise UserError(f"{where}: column '{name}' (problems.source.columns.{role}) is empty in row {row}")
    try:
        answers = [gold_answer(a, source.answer_format) for a in raw[cols.answer]]
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from exc
    questions = raw[cols.question].astype(str)
    ids = (raw[cols.problem_id].astype(str) if cols.problem_id
           else questions.map(lambda q: "q-" + hashlib.sha1(q.encode()).hexdigest()[:12]))
    problems = pd.DataFrame({
        "problem_id": ids.to_numpy(),
        "question": questions.to_numpy(),
        "answer": answers,
        "difficulty": raw[cols.difficulty].astype(str).to_numpy() if cols.difficulty else None,
    })
    problems = problems.drop_duplicates("problem_id")
    problems = problems[~problems["problem_id"].isin(exclude)].reset_index(drop=True)
    if n < len(problems):
        problems = problems.sample(n=n, random_state=seed).reset_index(drop=True)
    return problems
