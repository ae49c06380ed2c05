"""Rounds: repeated runs of one config as one campaign that keeps improving.

The run folder is the campaign. Its first finished loop is round 1; with `flow.continue_rounds`
each later run is round k+1: one more self-improvement iteration, from round k's latest model, on
problems no earlier round used (or exactly the rows a growing file / Hub dataset gained since the
last round), evaluated on round 1's held-out set so rounds are comparable.

Two records in the run folder, both written atomically:

    rounds.json             one record per round: number, parent, status (running / finished),
                            inputs (problems artifact, start model, method), latest model,
                            held-out accuracy and mean tokens, notes
    rounds/problems.parquet the ledger: every problem id a round used (role seed / train / iterK /
                            eval) or saw in its source without using it (role `seen`), with the
                            round that first met it; "new rows" and "unused" are read from here

A round is recorded `running` (with its drawn problems) before its work starts, so a killed
round resumes with the same problems and its finished stages come from the cache.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
from pydantic import Field, StrictInt, ValidationError, field_validator, model_validator

from tops import layout
from tops.artifacts import atomic_write_table, atomic_write_text, read_artifact, write_artifact
from tops.config.base import Strict, quoted
from tops.confine import inside
from tops.errors import UserError

ROUNDS_FILE = layout.ROUNDS
LEDGER_FILE = Path(layout.ROUNDS_LEDGER)
SEEN = "seen"  # in the source when a round looked, not used by it
FIRST_ROUND_SEED_STRIDE = 1009  # round k draws with run.seed + k * stride (far from the split seeds)
MAX_ROUNDS = 100_000
LABEL = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"  # a model label / role: a plain name, never a path


class Round(Strict):
    """One round's record. Validated when read: a tampered rounds.json fails with its field named
    before the run writes anything (a string number, a negative one, a float that overflows)."""

    number: StrictInt = Field(ge=1, le=MAX_ROUNDS)
    parent: StrictInt | None = Field(default=None, ge=1, le=MAX_ROUNDS)
    status: Literal["running", "finished"]
    iteration: StrictInt = Field(ge=0, le=MAX_ROUNDS)  # the self-improvement iteration this round ends with
    model_label: str = Field(pattern=LABEL)  # label of its latest model in eval rows and under models/
    problems: dict[str, str]  # role -> problems artifact (relative to the run folder)
    start_model: str | None = None  # the model this round trained from (round 1: the base model)
    method: Literal["sft", "dpo", "grpo"] | None = None
    new_rows: StrictInt | None = Field(default=None, ge=0)  # rows a growing source gained (None: drawn)
    model: str | None = None  # latest model after the round (content-addressed folder)
    accuracy: float | None = Field(default=None, ge=0, le=1)  # held-out accuracy of `model`
    mean_tokens: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    eval_rows: StrictInt | None = Field(default=None, ge=0)
    started_at: str = Field(default="", max_length=40)
    finished_at: str | None = Field(default=None, max_length=40)
    notes: list[str] = Field(default_factory=list)

    @field_validator("problems")
    @classmethod
    def _roles(cls, problems: dict[str, str]) -> dict[str, str]:
        bad = [role for role in problems if not re.fullmatch(LABEL, role)]
        if bad:
            raise ValueError(f"role {quoted(bad[0])} is not a plain name")
        return problems


class _Rounds(Strict):
    rounds: list[Round]

    @model_validator(mode="after")
    def _ordered(self) -> _Rounds:
        numbers = [r.number for r in self.rounds]
        if numbers != sorted(set(numbers)):
            raise ValueError(f"round numbers {numbers[:10]} are not unique and increasing")
        for r in self.rounds:
            if (r.number == 1) != (r.parent is None) or (r.parent is not None and r.parent not in numbers[:numbers.index(r.number)]):
                raise ValueError(f"round {r.number}: parent {r.parent} is not an earlier round")
        return self


@dataclass
class RoundPlan:
    """What the next run of the folder is: round 1 (the whole loop), round k+1, or nothing new."""

    number: int
    parent: Round | None = None
    problems: pd.DataFrame | None = None  # round k+1's training problems
    new_rows: int | None = None
    resumed: bool = False  # a killed round k+1, taken up again with its recorded problems
    nothing_new: str | None = None  # why there is nothing to learn from (round not started)
    source_ids: list[str] | None = None  # every id a finite source holds now (None: generated world)

    @property
    def iteration(self) -> int:
        return self.parent.iteration + 1 if self.parent else 0

    @property
    def label(self) -> str:
        return layout.iteration(self.iteration)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def relative(path: str | Path, run_dir: Path) -> str:
    """A path as a record keeps it: relative to the run folder when inside (the folder may be renamed)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


def resolve(run_dir: Path, path: str, field: str = layout.ROUNDS) -> Path:
    """A recorded path: relative to the run folder, and (links followed) inside it or the models
    root; anything else is a UserError naming `field` (a record must not point a run elsewhere)."""
    from tops.models import models_dir

    return inside(run_dir, path, field, also=(models_dir(),))


# ---------------------------------------------------------------- the records


def load_rounds(run_dir: str | Path) -> list[Round]:
    path = Path(run_dir) / ROUNDS_FILE
    if not path.exists():
        return []
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{path}: not a regular file (a link or a folder); move it away to start over")
    try:
        return _Rounds.model_validate_json(path.read_bytes()).rounds
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        where = f"{where}: " if where else ""
        raise UserError(f"{path}: {where}{error['msg']} (got {quoted(error.get('input'), 60)}); move it away "
                        "to start over") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a rounds record ({exc.__class__.__name__}); move it away to start over") from None


def save_rounds(run_dir: str | Path, rounds: list[Round]) -> None:
    atomic_write_text(json.dumps({"rounds": [r.model_dump(mode="json") for r in rounds]}, indent=1) + "\n",
                      Path(run_dir) / ROUNDS_FILE)


def _put(run_dir: Path, record: Round) -> None:
    rounds = [r for r in load_rounds(run_dir) if r.number != record.number]
    save_rounds(run_dir, sorted([*rounds, record], key=lambda r: r.number))


def load_ledger(run_dir: str | Path) -> pd.DataFrame:
    """Ledger rows of recorded rounds only (rows of a round killed before its record are dropped)."""
    path = Path(run_dir) / LEDGER_FILE
    if not path.exists():
        return pd.DataFrame({"problem_id": pd.Series(dtype=str), "round": pd.Series(dtype="int64"),
                             "role": pd.Series(dtype=str)})
    ledger = _read_ledger(path)
    recorded = {r.number for r in load_rounds(run_dir)}
    return ledger[ledger["round"].isin(recorded)].reset_index(drop=True)


def _read_ledger(path: Path) -> pd.DataFrame:
    """The ledger, checked: a truncated file or a missing / mistyped column is a UserError."""
    import pyarrow.parquet as pq

    if path.is_symlink() or not path.is_file():
        raise UserError(f"{path}: not a regular file (a link or a folder); move it away to start over")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: not a readable ledger ({exc.__class__.__name__}); move it away to start "
                        "over") from None
    text = lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)  # noqa: E731
    wanted = {"problem_id": text, "round": pa.types.is_integer, "role": text}
    for column, is_type in wanted.items():
        if column not in table.column_names:
            raise UserError(f"{path}: column {column!r} is missing; move it away to start over")
        if not is_type(table.schema.field(column).type) or table.column(column).null_count:
            raise UserError(f"{path}: column {column!r} has type {table.schema.field(column).type} or nulls; "
                            "move it away to start over")
    return table.select(list(wanted)).to_pandas()


def _add_to_ledger(run_dir: Path, number: int, ids_by_role: dict[str, list[str]]) -> None:
    ledger = load_ledger(run_dir)
    ledger = ledger[ledger["round"] != number]
    known = set(ledger["problem_id"])
    rows = [{"problem_id": pid, "round": number, "role": role}
            for role, ids in ids_by_role.items() if role != SEEN for pid in ids]
    known |= {row["problem_id"] for row in rows}
    rows += [{"problem_id": pid, "round": number, "role": SEEN}  # a sighting only the first time
             for pid in dict.fromkeys(ids_by_role.get(SEEN, [])) if pid not in known]
    merged = pd.concat([ledger, pd.DataFrame(rows, columns=["problem_id", "round", "role"])], ignore_index=True)
    path = run_dir / LEDGER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_table(pa.Table.from_pandas(merged.astype({"round": "int64"}), preserve_index=False), path)


# ---------------------------------------------------------------- the next round


def source_problem_ids(problems_cfg) -> list[str] | None:
    """Every problem id a finite source (a file, a Hub dataset) holds now; None for generated worlds."""
    if problems_cfg.source.kind == "arith":
        return None
    from tops.domains import load_problems

    return load_problems(problems_cfg, n=1 << 62, seed=0)["problem_id"].tolist()


def plan_round(run_dir: str | Path, cfg) -> RoundPlan:
    """Which round the next run of this folder is, and (from round 2 on) what it learns from."""
    run_dir = Path(run_dir)
    rounds = load_rounds(run_dir)
    load_ledger(run_dir)  # checked now: nothing is written before a tampered record is refused
    finished = [r for r in rounds if r.status == "finished"]
    if not finished or not cfg.flow.continue_rounds:
        return RoundPlan(number=1)
    _check_paths(run_dir, rounds)
    last = rounds[-1]
    if last.status == "running":  # killed: the same problems again, finished stages from the cache
        parent = next(r for r in rounds if r.number == last.parent)
        problems = read_artifact(resolve(run_dir, last.problems["train"], f"{layout.ROUNDS}: round {last.number}: "
                                         "problems.train"), "problems")
        return RoundPlan(number=last.number, parent=parent, problems=problems, new_rows=last.new_rows,
                         resumed=True, source_ids=source_problem_ids(cfg.problems))
    number = last.number + 1
    ledger = load_ledger(run_dir)
    used = set(ledger.loc[ledger["role"] != SEEN, "problem_id"])
    source = cfg.problems.source
    if source.kind == "arith":
        from tops.domains import load_problems

        try:
            problems = load_problems(cfg.problems, n=cfg.flow.iter_problems,
                                     seed=cfg.run.seed + number * FIRST_ROUND_SEED_STRIDE, exclude=used)
        except UserError:
            return RoundPlan(number=number, parent=last,
                             nothing_new="every problem these arith levels can make was used by an earlier round")
        return RoundPlan(number=number, parent=last, problems=problems)
    from tops.domains import load_problems

    everything = load_problems(cfg.problems, n=1 << 62, seed=0)
    gained = everything[~everything["problem_id"].isin(set(ledger["problem_id"]))]
    if len(gained):  # a grown source: exactly its new rows
        return RoundPlan(number=number, parent=last, problems=gained.reset_index(drop=True), new_rows=len(gained),
                         source_ids=everything["problem_id"].tolist())
    unused = everything[~everything["problem_id"].isin(used)]
    if unused.empty:
        return RoundPlan(number=number, parent=last, nothing_new=(
            f"{source.path}: no rows since round {last.number} and every row was used by an earlier round"))
    n = min(cfg.flow.iter_problems, len(unused))
    picked = unused.sample(n=n, random_state=cfg.run.seed + number * FIRST_ROUND_SEED_STRIDE)
    return RoundPlan(number=number, parent=last, problems=picked.reset_index(drop=True),
                     source_ids=everything["problem_id"].tolist())


def _check_paths(run_dir: Path, rounds: list[Round]) -> None:
    """Every path the records name lies inside the run folder; round 1's held-out set exists and
    the last round has a parent with a model. Checked before a round writes anything."""
    for r in rounds:
        for role, path in r.problems.items():
            resolve(run_dir, path, f"{layout.ROUNDS}: round {r.number}: problems.{role}")
        if r.model is not None:
            resolve(run_dir, r.model, f"{layout.ROUNDS}: round {r.number}: model")
    if "eval" not in rounds[0].problems:
        raise UserError(f"{run_dir / ROUNDS_FILE}: round 1 records no held-out problems (problems.eval)")
    held_out = resolve(run_dir, rounds[0].problems["eval"], f"{layout.ROUNDS}: round 1: problems.eval")
    if not held_out.is_file():
        raise UserError(f"{layout.ROUNDS}: round 1: problems.eval: {held_out} does not exist")
    parent = rounds[-1] if rounds[-1].status == "finished" else next(
        (r for r in rounds if r.number == rounds[-1].parent), None)
    if parent is None or parent.model is None:
        raise UserError(f"{layout.ROUNDS}: round {rounds[-1].number}: no finished parent round with a model")


def start_model(run_dir: str | Path, plan: RoundPlan) -> Path:
    """The model round k+1 starts from: round k's recorded model, inside the run folder (or the
    models root) and present; checked before the round records anything."""
    assert plan.parent is not None and plan.parent.model is not None
    field = f"{layout.ROUNDS}: round {plan.parent.number}: model"
    model = resolve(Path(run_dir), plan.parent.model, field)
    if not model.is_dir():
        raise UserError(f"{field}: {model} is not a model folder")
    return model


def start_round(run_dir: str | Path, plan: RoundPlan, method: str) -> Path:
    """Record round k+1 as running with its problems (written to problems/iterK.parquet); returns that path."""
    run_dir = Path(run_dir)
    path = run_dir / layout.problems(plan.label)
    assert plan.parent is not None and plan.problems is not None
    if not plan.resumed:
        write_artifact(plan.problems, path, "problems")
        _put(run_dir, Round(number=plan.number, parent=plan.parent.number, status="running",
                            iteration=plan.iteration, model_label=plan.label, problems={"train": relative(path, run_dir)},
                            start_model=plan.parent.model, method=method, new_rows=plan.new_rows,
                            started_at=_now()))
    # After the record (a ledger row without its round's record is ignored), again on a resume.
    _add_to_ledger(run_dir, plan.number, {plan.label: plan.problems["problem_id"].tolist(),
                                          SEEN: list(plan.source_ids or [])})
    return path


def record_first_round(run_dir: str | Path, problems: dict[str, str], base_model: str, method: str,
                       iterations: int, source_ids: list[str] | None = None) -> Round:
    """Round 1 is the whole loop: its problems by role (seed, train, iterK, eval), recorded as running."""
    run_dir = Path(run_dir)
    ids = {role: read_artifact(path, "problems")["problem_id"].tolist() for role, path in problems.items()}
    ids[SEEN] = list(source_ids or [])
    record = Round(number=1, parent=None, status="running", iteration=iterations,
                   model_label=layout.iteration(iterations) if iterations else layout.TOPS,
                   problems={role: relative(path, run_dir) for role, path in problems.items()},
                   start_model=base_model, method=method, started_at=_now())
    _put(run_dir, record)
    _add_to_ledger(run_dir, 1, ids)
    return record


def round_metrics(evals: pd.DataFrame, label: str) -> tuple[float | None, float | None, int]:
    """(accuracy, mean tokens, rows) of one model's held-out eval rows."""
    rows = evals[evals["model"] == label]
    if rows.empty:
        return None, None, 0
    return float(rows["correct"].mean()), float(rows["n_tokens"].mean()), len(rows)


def finish_round(run_dir: str | Path, number: int, model: str, evals: pd.DataFrame,
                 notes: list[str] | None = None) -> Round:
    """The round's latest model and its held-out numbers; the round is finished."""
    run_dir = Path(run_dir)
    record = next(r for r in load_rounds(run_dir) if r.number == number)
    record.accuracy, record.mean_tokens, record.eval_rows = round_metrics(evals, record.model_label)
    record.model = relative(model, run_dir)
    record.status, record.finished_at, record.notes = "finished", _now(), list(notes or [])
    _put(run_dir, record)
    return record


def eval_problems(run_dir: str | Path) -> Path:
    """Round 1's held-out set: every round is evaluated on it."""
    first = load_rounds(run_dir)[0]
    return resolve(Path(run_dir), first.problems["eval"], f"{layout.ROUNDS}: round 1: problems.eval")


# ---------------------------------------------------------------- history at a glance


def history(run_dir: str | Path) -> pd.DataFrame:
    """One row per round: model, problems learnt from, held-out accuracy and mean tokens."""
    rows = []
    for r in load_rounds(run_dir):
        learnt = [role for role in r.problems if role != "eval"]
        n = sum(len(read_artifact(resolve(Path(run_dir), r.problems[role]), "problems")) for role in learnt
                if resolve(Path(run_dir), r.problems[role]).exists())
        rows.append({"round": r.number, "parent": r.parent, "model": r.model_label, "problems": n,
                     "new_rows": r.new_rows, "accuracy": r.accuracy, "mean_tokens": r.mean_tokens,
                     "status": r.status, "finished_at": r.finished_at})
    return pd.DataFrame(rows, columns=["round", "parent", "model", "problems", "new_rows", "accuracy",
                                       "mean_tokens", "status", "finished_at"])


def history_markdown(table: pd.DataFrame) -> str:
    def num(value, fmt: str) -> str:
        return "—" if value is None or pd.isna(value) else format(value, fmt)

    lines = ["| round | parent | model | problems | new source rows | held-out accuracy | mean tokens | status |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.round} | {num(row.parent, '.0f')} | {row.model} | {row.problems} | "
                     f"{num(row.new_rows, '.0f')} | {num(row.accuracy, '.3f')} | {num(row.mean_tokens, '.1f')} | "
                     f"{row.status} |")
    return "\n".join(lines)


def plot_history(table: pd.DataFrame, path: str | Path) -> Path:
    """Accuracy and mean tokens per round: is the model getting more accurate and shorter?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table[table["accuracy"].notna()]
    fig, (acc_ax, tok_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    acc_ax.plot(done["round"], done["accuracy"], marker="o", color="#1b9e77")
    acc_ax.set_title("held-out accuracy per round (up is better)")
    acc_ax.set_ylim(0, 1.02)
    tok_ax.plot(done["round"], done["mean_tokens"], marker="s", color="#d95f02")
    tok_ax.set_title("mean tokens per round (down is better)")
    for ax in (acc_ax, tok_ax):
        ax.set_xlabel("round")
        ax.set_xticks(list(done["round"]))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def history_section(run_dir: str | Path, plot_path: str | Path | None = None,
                    plot_link: str = layout.ROUNDS_PLOT) -> str:
    """Markdown for the report and the dataset card: the table, and the plot when `plot_path` is given.
    Empty when the folder has no rounds."""
    table = history(run_dir)
    if table.empty:
        return ""
    parts = ["## Rounds", "",
             "Each round adds one self-improvement iteration from the previous round's latest model, on "
             "problems no earlier round used, and is evaluated on round 1's held-out set.", "",
             history_markdown(table), ""]
    if plot_path is not None and table["accuracy"].notna().any():
        plot_history(table, plot_path)
        parts += [f"![accuracy and mean tokens per round]({plot_link})", ""]
    return "\n".join(parts)


def rounds_text(run_dir: str | Path) -> str:
    """What `tops rounds RUN` prints: the history table, then each round's inputs and model."""
    run_dir = Path(run_dir)
    rounds = load_rounds(run_dir)
    if not rounds:
        return f"{run_dir}: no rounds recorded yet (a run records round 1 when its loop finishes)"
    lines = [history_markdown(history(run_dir)), ""]
    for r in rounds:
        problems = ", ".join(f"{role}={path}" for role, path in r.problems.items())
        lines.append(f"round {r.number} ({r.status}, started {r.started_at}): {r.method} from {r.start_model} "
                     f"on {problems} -> {r.model or '(not finished)'}")
        lines += [f"  note: {note}" for note in r.notes]
    return "\n".join(lines)
