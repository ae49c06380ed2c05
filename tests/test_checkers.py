"""Checkers by name (tops.checkers): the built-ins under the one contract, and a third-party
checker installed as an entry point (tests/checker_pkg, `lastword`) chosen by config and used by
verify, select, pairs (through the CLI) and eval (with the tiny model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tops.artifacts import read_artifact, write_artifact
from tops.checkers import BUILTINS, Checker, available, get_checker, registered
from tops.config import VerifyConfig, load_config
from tops.errors import UserError
from tops.verify import verify_samples

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
PACKAGE = Path(__file__).resolve().parent / "checker_pkg"


@pytest.fixture(scope="module", autouse=True)
def lastword_installed():
    """`make setup` installs tests/checker_pkg; a bare `pytest` on a fresh venv installs it here."""
    if not {"lastword", "stall"} <= set(registered()):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(PACKAGE)], check=True)
        sys.path.insert(0, str(PACKAGE))  # the editable finder is read at interpreter start
        get_checker.cache_clear()
    assert {"lastword", "stall"} <= set(registered())


def _samples(rows: list[tuple[str, str, str, str, int]]) -> pd.DataFrame:
    """(problem_id, gold, effort, response, n_tokens) -> a samples frame."""
    frame = pd.DataFrame([
        {"problem_id": pid, "question": f"question {pid}", "answer": gold, "difficulty": "easy", "effort": effort,
         "response": response, "n_tokens": tokens, "finish_reason": "stop"}
        for pid, gold, effort, response, tokens in rows])
    frame["sample_idx"] = frame.groupby(["problem_id", "effort"]).cumcount()
    return frame


def _texts(values) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in values]


def test_registry_names_builtins_and_installed_checkers():
    assert available()[:3] == list(BUILTINS) == ["math", "exact", "choice"]
    assert "lastword" in available()
    checker = get_checker("lastword")
    assert isinstance(checker, Checker) and checker.name == "lastword"
    assert load_config(SMOKE, ["verify.checker=lastword"]).verify.checker == "lastword"
    for bad in ("nope", "os.system", "../x", "tops.checkers:Checker"):
        with pytest.raises(UserError, match="unknown checker"):
            load_config(SMOKE, [f"verify.checker={bad}"])
    with pytest.raises(UserError, match=r"eval\.benchmarks.*unknown checker"):
        load_config(SMOKE, ["eval.benchmarks=[{name: gsm8k, checker: nope}]"])


def test_builtins_under_one_contract():
    """choice, exact and math on the same kind of frame: statuses and verdicts by each one's rules."""
    cfg = VerifyConfig(workers=1)
    choice = _samples([("q1", "C", "none", "The answer is (C).", 5), ("q1", "C", "none", "The answer is A or C.", 6),
                       ("q1", "C", "none", "**Answer: B**", 3), ("q2", "Z", "none", "The answer is (C).", 5),
                       ("q3", "B", "none", "<think>The answer is B", 4)])
    out, summary = verify_samples(choice, cfg.model_copy(update={"checker": "choice"}), progress=False)
    assert _texts(out["pred"]) == ["C", None, "B", "C", None]
    assert out["correct"].tolist() == [True, False, False, False, False]
    # a gold that is no option letter cannot be judged: error, not a silent wrong
    assert out["verify_status"].tolist() == ["ok", "no_answer", "ok", "error", "no_answer"]
    assert summary["checkers"] == {"choice": 5}

    exact = _samples([("e1", "Paris", "none", "The answer is \\boxed{\\text{Paris}}", 4),
                      ("e1", "Paris", "none", "The answer is \\boxed{paris}", 4),
                      ("e2", "0.5", "none", "\\boxed{\\frac{1}{2}}", 4)])
    out, _ = verify_samples(exact, cfg.model_copy(update={"checker": "exact"}), progress=False)
    assert out["correct"].tolist() == [True, False, False]  # exact text: no case folding, no maths
    out, _ = verify_samples(exact, cfg, progress=False)  # math (the default) finds 1/2 = 0.5
    assert out["correct"].tolist()[2] is True
    # one frame, a checker per row (an evaluation mixing maths and multiple choice)
    mixed = pd.concat([exact.iloc[[2]], choice.iloc[[0]]], ignore_index=True)
    out, summary = verify_samples(mixed, cfg, progress=False, row_checkers=["math", "choice"])
    assert out["correct"].tolist() == [True, True] and summary["checkers"] == {"math": 1, "choice": 1}


def test_an_installed_checker_gets_the_per_row_deadline():
    """The contract's time bound: a checker that hangs on one row is killed there (timeout), one
    that raises gives error, and the other rows are judged."""
    rows = [("s1", "12", "none", "it is even", 3), ("s1", "12", "none", "it is forever", 3),
            ("s1", "12", "none", "boom", 3), ("s2", "7", "none", "odd", 3)]
    out, summary = verify_samples(_samples(rows), VerifyConfig(checker="stall", workers=1, timeout_s=8),
                                  progress=False)
    assert out["verify_status"].tolist() == ["ok", "timeout", "error", "ok"]
    assert out["correct"].tolist() == [True, False, False, True]
    assert summary["timeout"] == 1 and summary["error"] == 1


# p1, gold "12" (2 characters, even): lastword judges the last word by the parity of its length.
LASTWORD_SAMPLES = [
    ("p1", "12", "low", "The answer is \\boxed{12}. so odd", 5),  # math: right; lastword: "odd", wrong
    ("p1", "12", "medium", "seven plus five makes even", 9),  # math: no answer; lastword: right
    ("p1", "12", "high", "a long working that is done", 20),  # lastword: right, longer
    ("p1", "12", "high", "more working then abc", 30),  # lastword: wrong, the longest
    ("p2", "7", "low", "x y z", 4),  # lastword: right
    ("p2", "7", "medium", "ab", 3),  # lastword: wrong
]


def _tops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tops.cli", *args], capture_output=True, text=True, timeout=300)


def test_entry_point_checker_chosen_by_config_drives_verify_select_and_pairs(tmp_path):
    """`tops verify` with a config naming lastword; select and pairs (tops.select, tops.pairs, as
    their stages call them) follow its verdicts, not the maths ones."""
    from tops.pairs import build_pairs
    from tops.select import select_responses

    write_artifact(_samples(LASTWORD_SAMPLES), tmp_path / "samples.parquet", "samples")
    config = tmp_path / "lastword.yaml"
    config.write_text(f"run: {{root: {tmp_path}, name: lw}}\nverify: {{checker: lastword, workers: 1}}\n")
    result = _tops("verify", "--in", str(tmp_path / "samples.parquet"), "--out", str(tmp_path / "verified.parquet"),
                   "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]

    verified = read_artifact(tmp_path / "verified.parquet", "verified")
    assert verified["pred"].tolist() == ["odd", "even", "done", "abc", "z", "ab"]
    assert verified["correct"].tolist() == [False, True, True, False, True, False]
    assert set(verified["verify_status"]) == {"ok"}  # decided in the worker pool: quick() decides nothing

    cfg = load_config(config)
    selected, _ = select_responses(verified, cfg.select)
    selected = selected.set_index("problem_id")
    assert selected.loc["p1", "response"] == "seven plus five makes even"  # shortest lastword-correct
    assert selected.loc["p2", "response"] == "x y z"

    pairs, _ = build_pairs(verified, cfg.pairs)
    assert pairs[["chosen", "rejected", "pair_kind"]].values.tolist() == [
        ["seven plus five makes even", "more working then abc", "longest_incorrect"],
        ["seven plus five makes even", "The answer is \\boxed{12}. so odd", "shorter_incorrect"],
        ["x y z", "ab", "longest_incorrect"]]

    # the same data under the default math checker: the boxed 12 is the only correct answer
    math_verified, _ = verify_samples(_samples(LASTWORD_SAMPLES), VerifyConfig(workers=1), progress=False)
    assert math_verified["correct"].tolist() == [True, False, False, False, False, False]
    assert select_responses(math_verified, cfg.select)[0]["response"].tolist() == [LASTWORD_SAMPLES[0][3]]


@pytest.mark.slow
def test_entry_point_checker_in_eval_with_the_tiny_model(tmp_path, tiny_model_dir):
    """Eval verifies with the configured checker: every answer the tiny model writes is read by
    lastword (math finds none in its noise), scored by its rule, and voted on for maj@k."""
    from tops.engines import make_engine
    from tops.evaluate import evaluate_model, maj_at_k

    cfg = load_config(SMOKE, [f"model.base={tiny_model_dir}", "verify.checker=lastword", "verify.workers=1",
                              "eval.sampling.max_tokens=12"])
    gold = {"a": "2", "b": "55"}
    problems = pd.DataFrame({"problem_id": list(gold), "question": ["1 + 1", "50 + 5"], "answer": list(gold.values()),
                             "difficulty": ["easy", "easy"]})
    engine = make_engine(str(tiny_model_dir), cfg.engine)
    try:
        evals = evaluate_model(problems, engine, "tiny", ["none"], [0, 1, 2], cfg.eval.sampling, cfg.efforts.prompts,
                               cfg.verify, tmp_path, progress=False)
    finally:
        engine.close()
    assert len(evals) == 6 and set(evals["checker"]) == {"lastword"}
    for row in evals.itertuples():
        words = row.response.split()
        last = words[-1].strip(".,;:!?") if words else ""
        assert _texts([row.pred]) == [last or None]
        if last:
            assert row.verify_status == "ok"
            assert row.correct == (len(last) % 2 == len(gold[row.problem_id]) % 2)
            assert row.answer_key == last.lower()
    assert maj_at_k(evals, 3) == maj_at_k(evals.sample(frac=1, random_state=1), 3)
