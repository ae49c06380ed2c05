"""Problems from tables: a Hub/local dataset through `datasets`, or a Parquet/JSONL/CSV file.

A column map names the question / answer / id / difficulty columns; gold answers follow the
usual conventions (GSM8K's "#### 42", MATH's \\boxed{}), or are taken as they are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from tops.errors import UserError


class _Literal(str):
    """A JSON number as the text it was written as."""


def _numbers(value):
    """JSON values with the numbers of a list or dict as numbers again (written out as JSON)."""
    if isinstance(value, _Literal):
        return int(value) if value.lstrip("-").isdigit() else float(value)
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers(item) for item in value]
    return value


def as_text(value) -> str:
    """A cell as the text it holds: strings and JSON numbers as written, lists and dicts as JSON
    (never a Python repr), anything else through str()."""
    if isinstance(value, str):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars (Parquet lists)
        value = value.tolist()
    if isinstance(value, (list, tuple, dict, bool)) or value is None:
        return json.dumps(_numbers(value), ensure_ascii=False, default=str)
    return str(value)


def gold_answer(solution: str, answer_format: str) -> str:
    """The gold answer string from a dataset's answer/solution field; an explicit format that
    does not match the text is an error rather than a silent fallback."""
    from tops.answers import final_boxed
    from tops.answers import gold_answer as auto_gold

    text = as_text(solution)
    if answer_format == "choice":
        from tops.choices import gold_choice

        return gold_choice(text)
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
            return _read_json(path, lines=suffix == ".jsonl")
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise UserError(f"{path}: cannot read ({exc.__class__.__name__}: {str(exc)[:200]})") from exc
    raise UserError(f"{path}: unsupported file type '{suffix}' (use .parquet, .jsonl, .json or .csv)")


def _read_json(path: Path, lines: bool) -> pd.DataFrame:
    """JSON records with every number kept as the text it was written as (`007`, `1e3`, `3.10`,
    a 400-digit integer): no type inference touches a gold answer. Lists and dicts stay objects
    (as_text writes them as JSON)."""
    keep = {"parse_int": _Literal, "parse_float": _Literal, "parse_constant": _Literal}
    text = path.read_text(encoding="utf-8")
    if lines:
        records = [json.loads(line, **keep) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text, **keep)
        if isinstance(records, dict):  # {column: [values]} or {column: {index: value}}
            return pd.DataFrame(records, dtype=object)
    if not all(isinstance(record, dict) for record in records):
        raise ValueError("expected one JSON object per record")
    return pd.DataFrame.from_records(records).astype(object)


def _read_hf(source) -> pd.DataFrame:
    import datasets

    try:
        data = datasets.load_dataset(source.path, source.name, split=source.split)
    except Exception as exc:
        raise UserError(f"dataset '{source.path}': cannot load ({str(exc).splitlines()[0]})") from exc
    return data.to_pandas()


def load_table_problems(source, n: int, seed: int, exclude=frozenset(), prepare=None) -> pd.DataFrame:
    """Problems from a table; `prepare` (a benchmark preset's) turns the dataset's own rows into
    the columns the source's column map names first (e.g. options into the question text)."""
    raw = _read_file(Path(source.path)) if source.kind == "file" else _read_hf(source)
    if prepare is not None:
        try:
            raw = prepare(raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{source.path}: {str(exc)[:300]}") from exc
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
    questions = raw[cols.question].map(as_text)
    ids = (raw[cols.problem_id].map(as_text) if cols.problem_id
           else questions.map(lambda q: "q-" + hashlib.sha1(q.encode()).hexdigest()[:12]))
    problems = pd.DataFrame({
        "problem_id": ids.to_numpy(),
        "question": questions.to_numpy(),
        "answer": answers,
        "difficulty": raw[cols.difficulty].map(as_text).to_numpy() if cols.difficulty else None,
    })
    if "subject" in raw.columns:  # a benchmark preset's subject (per-subject eval rows)
        problems["subject"] = [None if v is None or v != v or v == "" else as_text(v)  # v != v: NaN
                               for v in raw["subject"]]
    repeated = problems["problem_id"].duplicated(keep=False)
    if cols.problem_id and repeated.any():  # the README promises exit 2: rows are never merged silently
        rows = [int(i) for i in problems.index[repeated][:2]]
        raise UserError(f"{where}: problem id {problems['problem_id'][rows[0]][:80]!r} (column "
                        f"'{cols.problem_id}') appears more than once (rows {rows[0]} and {rows[1]})")
    # ids made from the question: the same question twice is one problem, unless the gold differs
    conflicting = problems[repeated].groupby("problem_id")["answer"].nunique()
    if (conflicting > 1).any():
        pid = conflicting.index[(conflicting > 1).argmax()]
        raise UserError(f"{where}: the same question appears with different answers (problem id {pid})")
    problems = problems.drop_duplicates("problem_id")
    problems = problems[~problems["problem_id"].isin(exclude)].reset_index(drop=True)
    if n < len(problems):
        problems = problems.sample(n=n, random_state=seed).reset_index(drop=True)
    return problems
