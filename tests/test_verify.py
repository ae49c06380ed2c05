"""The verify stage (tops.verify): verdicts, statuses, the timeout pool, the artifact contract."""

import multiprocessing as mp
import os
import signal
import threading
import time

import pandas as pd
import pytest

from tops.artifacts import read_artifact, write_artifact
from tops.config import VerifyConfig
from tops.errors import UserError
from tops.verify import STATUSES, verify_samples

PATHOLOGICAL = "So \\boxed{9^{9^{9^{9}}}}."


def samples(rows: list[tuple[str, str]], finish_reasons: list[str] | None = None) -> pd.DataFrame:
    """A samples frame with one row per (gold answer, response)."""
    return pd.DataFrame({
        "problem_id": [f"p{i}" for i in range(len(rows))],
        "question": "What is it?",
        "answer": [gold for gold, _ in rows],
        "difficulty": None,
        "effort": "low",
        "sample_idx": 0,
        "response": [response for _, response in rows],
        "n_tokens": [len(response) for _, response in rows],
        "finish_reason": finish_reasons or ["stop"] * len(rows),
    })


# (gold, response, correct, status)
VERDICT_CASES = [
    # integers, separators, spellings of one number
    ("1234", "\\boxed{1,234}", True, "ok"),
    ("1,234", "\\boxed{1234}", True, "ok"),
    ("1234", "\\boxed{1{,}234}", True, "ok"),
    ("5", "\\boxed{5.0}", True, "ok"),
    ("5", "The answer is $5$.", True, "ok"),
    ("5", "\\boxed{5 \\text{ cm}}", True, "ok"),
    ("5", "\\boxed{\\$5}", True, "ok"),
    ("5", "\\boxed{6}", False, "ok"),
    ("123456789", "\\boxed{123456788}", False, "ok"),
    ("12", "\\boxed{12.0000001}", False, "ok"),
    # where math-verify alone is too lenient: two plain numbers are compared exactly
    ("50", "\\boxed{50\\%}", True, "ok"),
    ("0.5", "\\boxed{50\\%}", False, "ok"),
    ("0.0000001", "\\boxed{0.0000002}", False, "ok"),
    ("1 \\times 10^{-7}", "\\boxed{2 \\times 10^{-7}}", False, "ok"),
    # fractions in every spelling
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", True, "ok"),
    ("\\frac12", "\\boxed{\\tfrac{1}{2}}", True, "ok"),
    ("1/2", "\\boxed{\\frac12}", True, "ok"),
    ("0.5", "\\boxed{\\frac{1}{2}}", True, "ok"),
    ("\\frac{3}{4}", "\\boxed{0.75}", True, "ok"),
    ("\\frac{3}{4}", "\\boxed{\\frac{4}{3}}", False, "ok"),
    ("-\\frac{1}{2}", "\\boxed{\\frac{-1}{2}}", True, "ok"),
    ("\\frac{1}{3}", "\\boxed{0.333}", True, "ok"),
    ("\\frac{1}{3}", "\\boxed{0.3}", False, "ok"),
    ("\\dfrac{5}{2}", "\\boxed{2\\frac{1}{2}}", True, "ok"),  # mixed number: math-verify decides
    # negatives and decimals
    ("-3", "\\boxed{-3}", True, "ok"),
    ("3", "\\boxed{-3}", False, "ok"),
    ("-3", "\\boxed{−3}", True, "ok"),
    ("2.5", "\\boxed{2.50}", True, "ok"),
    ("2.5", "\\boxed{2.6}", False, "ok"),
    # symbolic answers go to math-verify
    ("\\sqrt{2}", "\\boxed{\\frac{2}{\\sqrt{2}}}", True, "ok"),
    ("x^2+2x", "\\boxed{x(x+2)}", True, "ok"),
    ("\\pi/2", "\\boxed{\\frac{\\pi}{2}}", True, "ok"),
    ("\\pi", "\\boxed{3.14}", False, "ok"),
    ("(1,2)", "\\boxed{(1, 2)}", True, "ok"),
    ("(1,2)", "\\boxed{(2,1)}", False, "ok"),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", True, "ok"),
    ("\\text{Monday}", "\\boxed{\\text{Monday}}", True, "ok"),
    # a MATH-style gold solution is reduced to its box
    ("The sum is \\boxed{10}.", "so \\boxed{10}", True, "ok"),
    # thinking blocks
    ("4", "<think>maybe \\boxed{3}</think>\n\\boxed{4}", True, "ok"),
    ("3", "<think>maybe \\boxed{3}</think>\nSo \\boxed{4}", False, "ok"),
    ("3", "<think>surely \\boxed{3}, but let me re", False, "no_answer"),
    # no answer
    ("5", "I am not sure.", False, "no_answer"),
    # math-verify cannot read the gold answer: the row cannot be judged
    ("", "\\boxed{5}", False, "error"),
]


@pytest.fixture(scope="module")
def verified():
    df = samples([(gold, response) for gold, response, _, _ in VERDICT_CASES])
    return verify_samples(df, VerifyConfig(workers=2, second_checker="numeric"), progress=False)


@pytest.mark.parametrize(("row", "case"), list(enumerate(VERDICT_CASES)),
                         ids=[f"{g!r}-vs-{r!r}" for g, r, _, _ in VERDICT_CASES])
def test_verdict(verified, row, case):
    out, _ = verified
    _, _, correct, status = case
    assert (bool(out["correct"].iloc[row]), out["verify_status"].iloc[row]) == (correct, status)


def test_output_keeps_rows_order_and_extra_columns():
    df = samples([("1", "\\boxed{1}"), ("\\sqrt{4}", "\\boxed{2}"), ("3", "none")])
    df["my_extra"] = ["a", "b", "c"]
    df.index = [10, 20, 30]
    out, summary = verify_samples(df, VerifyConfig(workers=1), progress=False)
    assert list(out.index) == [10, 20, 30]
    assert list(out["problem_id"]) == ["p0", "p1", "p2"]
    assert list(out["my_extra"]) == ["a", "b", "c"]
    assert list(out["pred"].fillna("<none>")) == ["1", "2", "<none>"]
    assert "checker_disagree" not in out.columns
    assert summary["disagreements"] is None
    assert "pred" not in df.columns  # the input frame is left alone


def test_summary_counts(verified):
    out, summary = verified
    assert summary["rows"] == len(VERDICT_CASES)
    assert summary["correct"] == sum(case[2] for case in VERDICT_CASES)
    assert summary["accuracy"] == pytest.approx(summary["correct"] / summary["rows"], abs=1e-4)
    for status in STATUSES:
        assert summary[status] == sum(case[3] == status for case in VERDICT_CASES)
    assert summary["checks_per_s"] > 0


def test_second_checker_flags_symbolic_only_matches(verified):
    out, summary = verified
    flagged = set(out.loc[out["checker_disagree"], "answer"])
    # accepted by math-verify, not by the plain numeric/text checker
    assert {"\\sqrt{2}", "x^2+2x", "\\pi/2", "\\{1,2\\}"} <= flagged
    assert "1234" not in flagged and "5" not in flagged
    assert summary["disagreements"] == len(out[out["checker_disagree"]])


def test_truncated_output_without_answer_is_no_answer():
    df = samples([("5", "Let me compute step by step: 2 + 3 = \\boxed{"),
                  ("5", "\\boxed{5} and to double check we comp")],
                 finish_reasons=["length", "length"])
    out, summary = verify_samples(df, VerifyConfig(), progress=False)
    assert list(out["verify_status"]) == ["no_answer", "ok"]
    assert list(out["correct"]) == [False, True]
    assert summary["truncated"] == 2


def test_identical_pairs_share_one_check_and_answer_each_row():
    df = samples([("\\sqrt{8}", "\\boxed{2\\sqrt{2}}")] * 5 + [("\\sqrt{8}", "\\boxed{3\\sqrt{2}}")])
    out, summary = verify_samples(df, VerifyConfig(workers=2), progress=False)
    assert list(out["correct"]) == [True] * 5 + [False]
    assert summary["ok"] == 6


@pytest.fixture(scope="module")
def warm_forkserver():
    """Start the worker server once, so timing tests measure checking, not Python start-up."""
    verify_samples(samples([("\\sqrt{4}", "\\boxed{2}")]), VerifyConfig(workers=1), progress=False)


def test_pathological_answer_times_out_without_stalling_the_batch(warm_forkserver):
    timeout_s = 1.5
    rows = [("\\sqrt{2}", "\\boxed{\\frac{2}{\\sqrt{2}}}"), ("x+1", "\\boxed{1+x}"),
            ("5", PATHOLOGICAL),
            ("\\pi", "\\boxed{\\pi}"), ("(1,2)", "\\boxed{(1, 2)}"), ("x^2", "\\boxed{x^3}")]
    start = time.perf_counter()
    # One worker: the rest of the stuck worker's chunk must be requeued to its replacement.
    out, summary = verify_samples(samples(rows), VerifyConfig(workers=1, timeout_s=timeout_s),
                                  progress=False)
    wall = time.perf_counter() - start
    assert list(out["verify_status"]) == ["ok", "ok", "timeout", "ok", "ok", "ok"]
    assert list(out["correct"]) == [True, True, False, True, True, False]
    assert out["pred"].iloc[2] == "9^{9^{9^{9}}}"
    assert summary["timeout"] == 1
    assert wall < timeout_s + 3.0


def test_two_stuck_workers_are_both_replaced(warm_forkserver):
    rows = [("5", PATHOLOGICAL), ("6", PATHOLOGICAL.replace("9}", "8}")), ("x", "\\boxed{x}"),
            ("\\sqrt{9}", "\\boxed{3}")]
    out, summary = verify_samples(samples(rows), VerifyConfig(workers=2, timeout_s=1.0),
                                  progress=False)
    assert list(out["verify_status"]) == ["timeout", "timeout", "ok", "ok"]
    assert list(out["correct"]) == [False, False, True, True]


def test_a_worker_that_dies_mid_check_scores_error_and_the_batch_goes_on(warm_forkserver):
    def kill_the_worker_once_busy():
        time.sleep(1.5)  # long enough to be inside the hanging check, far short of its timeout
        for child in mp.active_children():
            if child.name == "tops-verify":
                os.kill(child.pid, signal.SIGKILL)

    rows = [("5", PATHOLOGICAL), ("\\sqrt{9}", "\\boxed{3}"), ("x", "\\boxed{y}")]
    killer = threading.Thread(target=kill_the_worker_once_busy)
    killer.start()
    start = time.perf_counter()
    out, summary = verify_samples(samples(rows), VerifyConfig(workers=1, timeout_s=30),
                                  progress=False)
    killer.join()
    assert list(out["verify_status"]) == ["error", "ok", "ok"]
    assert list(out["correct"]) == [False, True, False]
    assert summary["error"] == 1
    assert time.perf_counter() - start < 10


def test_runs_from_a_worker_thread():
    """math-verify's own SIGALRM timeouts fail off the main thread; the stage must not."""
    results = {}

    def run():
        results["out"], _ = verify_samples(samples([("\\sqrt{4}", "\\boxed{2}")]),
                                           VerifyConfig(workers=1), progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert list(results["out"]["correct"]) == [True]


def test_progress_bar_reports_throughput(capsys):
    verify_samples(samples([("1", "\\boxed{1}")] * 3), VerifyConfig(), progress=True)
    err = capsys.readouterr().err
    assert "verify" in err and "check/s" in err


def test_empty_frame():
    out, summary = verify_samples(samples([("1", "\\boxed{1}")]).iloc[:0], VerifyConfig(),
                                  progress=False)
    assert len(out) == 0 and {"pred", "correct", "verify_status"} <= set(out.columns)
    assert summary["rows"] == 0 and summary["accuracy"] == 0.0


def test_output_is_a_valid_verified_artifact(tmp_path, verified):
    out, _ = verified
    path = write_artifact(out, tmp_path / "verified.parquet", "verified")
    back = read_artifact(path, "verified")
    assert list(back["verify_status"]) == list(out["verify_status"])
    assert back["pred"].isna().sum() == out["pred"].isna().sum() > 0
    assert back["correct"].dtype == bool


@pytest.mark.parametrize("column", ["response", "answer"])
def test_missing_column_is_a_user_error_naming_it(tmp_path, column):
    path = tmp_path / "samples.parquet"
    samples([("1", "\\boxed{1}")]).drop(columns=[column]).to_parquet(path)
    with pytest.raises(UserError, match=f"'{column}'"):
        read_artifact(path, "samples")


def test_missing_column_in_a_frame_is_a_user_error():
    with pytest.raises(UserError, match="'response'"):
        verify_samples(samples([("1", "\\boxed{1}")]).drop(columns=["response"]), VerifyConfig(),
                       progress=False)
