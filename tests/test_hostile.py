"""Hostile input on the CLI: each case ends with exit 2 and one line (or, for hostile model
output, a bounded status) well within its time guard, writes nothing outside its output and
leaves earlier artifacts byte-identical.

Commands run in-process through `tops.cli.main`, in a scratch folder that is also the working
directory, so a write anywhere (the default runs root included) shows up in its snapshot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bounds import within

from tops.artifacts import read_artifact, write_artifact
from tops.cli import main
from tops.verify import STATUSES

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
MB = 1 << 20


# ---------------------------------------------------------------- harness


def tops(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert len(lines[0]) <= 1000, f"{len(lines[0])} characters"
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A scratch working directory holding an earlier run's artifacts."""
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "earlier"
    write_artifact(problems_frame(3), earlier / "problems.parquet", "problems")
    (earlier / "manifest.json").write_text('{"stages": {}}\n')
    return tmp_path


def problems_frame(n: int, **columns) -> pd.DataFrame:
    frame = pd.DataFrame({"problem_id": [f"p{i}" for i in range(n)], "question": [f"What is {i} + 1?" for i in range(n)],
                          "answer": [str(i + 1) for i in range(n)], "difficulty": [None] * n})
    return frame.assign(**columns)


def samples_frame(golds: list[str], responses: list[str]) -> pd.DataFrame:
    n = len(responses)
    return problems_frame(n, answer=golds).assign(effort="low", sample_idx=0, response=responses, n_tokens=10,
                                                  finish_reason="stop")


def selected_frame(responses: list[str]) -> pd.DataFrame:
    n = len(responses)
    return problems_frame(n).drop(columns="difficulty").assign(response=responses, effort="low", n_tokens=10,
                                                               policy="shortest")


# ---------------------------------------------------------------- exit 2, nothing written

def _arith_injection(work: Path, tiny: Path) -> list:
    marker = work / "PWNED"
    crafted = problems_frame(1, operands=[[1, 2]], ops=[[f"+ __import__('pathlib').Path({str(marker)!r}).touch() or 0 +"]])
    crafted.to_parquet(work / "crafted.parquet")
    return ["seed", "--in", "crafted.parquet", "--out", "out/seed.parquet", "--set", f"model.base={tiny}"]


def _arith_string_operands(work: Path, tiny: Path) -> list:
    problems_frame(1, operands=[["1", "__import__('os')"]], ops=[["+"]]).to_parquet(work / "crafted.parquet")
    return ["seed", "--in", "crafted.parquet", "--out", "out/seed.parquet", "--set", f"model.base={tiny}"]


def _yaml_alias_bomb(work: Path, tiny: Path) -> list:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    (work / "bomb.yaml").write_text("\n".join(lines) + "\nproblems: {n: *i}\n")
    return ["problems", "--config", "bomb.yaml", "--out", "out/p.parquet"]


def _huge_value_in_config(work: Path, tiny: Path) -> list:
    (work / "big.yaml").write_text("problems:\n  n: '" + "x" * (MB // 2) + "'\n")
    return ["problems", "--config", "big.yaml", "--out", "out/p.parquet"]


def _config_over_the_size_limit(work: Path, tiny: Path) -> list:
    (work / "huge.yaml").write_text("# padding\n" * MB)
    return ["problems", "--config", "huge.yaml", "--out", "out/p.parquet"]


def _deeply_nested_config(work: Path, tiny: Path) -> list:
    (work / "deep.yaml").write_text("problems: " + "[" * 50_000 + "]" * 50_000 + "\n")
    return ["problems", "--config", "deep.yaml", "--out", "out/p.parquet"]


def _config_not_utf8(work: Path, tiny: Path) -> list:
    (work / "latin1.yaml").write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    return ["problems", "--config", "latin1.yaml", "--out", "out/p.parquet"]


def _config_is_a_folder(work: Path, tiny: Path) -> list:
    (work / "configs.yaml").mkdir()
    return ["problems", "--config", "configs.yaml", "--out", "out/p.parquet"]


def _invalid_utf8_in_parquet(work: Path, tiny: Path) -> list:
    frame = samples_frame(["1"], ["\\boxed{1}"])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    bad = pa.array([b"\xff\xfe\\boxed{1}"], pa.binary()).view(pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("response"), "response", bad), work / "bad.parquet")
    return ["verify", "--in", "bad.parquet", "--out", "out/v.parquet"]


def _invalid_utf8_in_a_file_source(work: Path, tiny: Path) -> list:
    bad = pa.array([b"\xff\xfe What is 1 + 1?"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"question": bad, "answer": ["2"]}), work / "source.parquet")
    return ["problems", "--set", "problems.source.kind=file", "--set", "problems.source.path=source.parquet",
            "--out", "out/p.parquet"]


def _null_question_in_file_source(work: Path, tiny: Path) -> list:
    pd.DataFrame({"question": ["a", None], "answer": ["1", "2"]}).to_parquet(work / "source.parquet")
    return ["problems", "--set", "problems.source.kind=file", "--set", "problems.source.path=source.parquet",
            "--out", "out/p.parquet"]


def _step_span_past_the_response(work: Path, tiny: Path) -> list:
    steps = [[{"start": 0, "end": 10**9, "erroneous": True}]]
    masked = selected_frame(["\\boxed{1}"]).assign(steps=steps, masked_chars=10**9)
    masked.to_parquet(work / "masked.parquet")
    return ["train", "sft", "--data", "masked.parquet", "--out", "out/model", "--kind", "masked"]


def _step_span_reversed(work: Path, tiny: Path) -> list:
    steps = [[{"start": 5, "end": 2, "erroneous": True}]]
    selected_frame(["\\boxed{1}"]).assign(steps=steps, masked_chars=0).to_parquet(work / "masked.parquet")
    return ["train", "sft", "--data", "masked.parquet", "--out", "out/model", "--kind", "masked"]


def _duplicate_problem_id(work: Path, tiny: Path) -> list:
    problems_frame(2, problem_id=["same", "same"]).to_parquet(work / "dup.parquet")
    # An unknown model: were the duplicate found only after loading, this would fail on the model.
    return ["generate", "--in", "dup.parquet", "--model", "no-such-model", "--out", "out/s.parquet"]


def _empty_verify_input(work: Path, tiny: Path) -> list:
    write_artifact(samples_frame(["1"], ["x"]).iloc[:0], work / "empty.parquet", "samples")
    return ["verify", "--in", "empty.parquet", "--out", "out/v.parquet"]


def _empty_mask_input(work: Path, tiny: Path) -> list:
    write_artifact(selected_frame(["x"]).iloc[:0], work / "empty.parquet", "selected")
    return ["mask", "--in", "empty.parquet", "--out", "out/m.parquet"]


EXIT_2_CASES = {
    # item 1: code from a data file
    "arith ops carry code": (_arith_injection, "ops must each be"),
    "arith operands are strings": (_arith_string_operands, "operands must be integers"),
    # item 3: run.name escapes the runs root
    "run.name ../../x": (lambda w, t: ["problems", "--set", "run.name=../../x"], "run.name"),
    "run.name absolute": (lambda w, t: ["problems", "--set", f"run.name={w / 'abs'}"], "run.name"),
    "run.name with a separator": (lambda w, t: ["problems", "--set", "run.name=a/b"], "run.name"),
    "run.name ..": (lambda w, t: ["problems", "--set", "run.name=.."], "run.name"),
    "run.name in tops run": (lambda w, t: ["run", "--config", SMOKE, "--set", "run.name=../escaped"], "run.name"),
    # item 4: YAML
    "yaml alias bomb": (_yaml_alias_bomb, "aliases"),
    "a 0.5 MB value quoted in an error": (_huge_value_in_config, "problems.n"),
    "config over 1 MiB": (_config_over_the_size_limit, "over 1 MiB"),
    "config nested 50,000 deep": (_deeply_nested_config, "nested deeper than"),
    "--set value nested 50,000 deep": (lambda w, t: ["problems", "--set", "problems.n=" + "[" * 50_000], "problems.n"),
    "a 1 MB --set value": (lambda w, t: ["problems", "--set", "problems.n=" + "9x" * MB], "problems.n"),
    # item 5: mask spans
    "step span past the response": (_step_span_past_the_response, "not inside its response"),
    "step span reversed": (_step_span_reversed, "not inside its response"),
    # item 6: once exit 1 with a traceback
    "invalid UTF-8 in a Parquet string": (_invalid_utf8_in_parquet, "not valid UTF-8"),
    "invalid UTF-8 in a file source": (_invalid_utf8_in_a_file_source, "cannot read"),
    "null question in a file source": (_null_question_in_file_source, "'question'"),
    "config file not UTF-8": (_config_not_utf8, "not UTF-8"),
    "config file is a folder": (_config_is_a_folder, "not a file"),
    "eval.seeds empty": (lambda w, t: ["problems", "--set", "eval.seeds=[]", "--out", "out/p.parquet"], "eval.seeds"),
    # item 7: late or misleading errors
    "duplicate problem_id in generate": (_duplicate_problem_id, "'same' appears more than once"),
    "empty input to verify": (_empty_verify_input, "no rows"),
    "empty input to mask": (_empty_mask_input, "no rows"),
    "problems --n 0": (lambda w, t: ["problems", "--n", "0", "--out", "out/p.parquet"], "at least 1"),
}


@pytest.mark.parametrize("case", list(EXIT_2_CASES))
def test_hostile_input_exits_2_and_writes_nothing(case, work, capsys, tiny_model_dir):
    build, needle = EXIT_2_CASES[case]
    args = build(work, tiny_model_dir)
    before = snapshot(work)
    with within(120):
        code, err = tops(capsys, *args)
    assert_one_line_error(code, err, needle)
    assert snapshot(work) == before  # nothing written anywhere, earlier artifacts byte-identical
    assert not (work.parent / "x").exists() and not (work.parent / "escaped").exists()


# ---------------------------------------------------------------- hostile model output: bounded

HOSTILE_RESPONSES = {
    "unclosed boxes": ("7", "\\boxed{" * (MB // 7), "no_answer"),
    "open braces in a box": ("7", "\\boxed{" + "{" * MB, "no_answer"),
    "dollar signs": ("7", "The answer is " + "$" * MB, None),
    "phrase then spaces": ("7", "The answer is" + " " * MB, "no_answer"),
    "a 1 MB box": ("7", "\\boxed{" + "1" * MB + "}", "error"),
    "many joined boxes": ("7", "\\boxed{1} and \\boxed{2} and " * (MB // 28), "error"),
    "hostile gold": ("\\boxed{" * (MB // 7), "\\boxed{7}", None),
    "sympy bomb": ("7", "\\boxed{9^{9^{9^{9}}}}", "timeout"),
    "a normal answer": ("7", "So \\boxed{7}.", "ok"),
}


def test_hostile_responses_get_bounded_statuses(work, capsys):
    names = list(HOSTILE_RESPONSES)
    golds, responses, expected = zip(*HOSTILE_RESPONSES.values(), strict=True)
    write_artifact(samples_frame(list(golds), list(responses)), work / "samples.parquet", "samples")
    before = snapshot(work)
    with within(120):
        code, err = tops(capsys, "verify", "--in", "samples.parquet", "--out", "out/verified.parquet", "-q",
                         "--set", "verify.timeout_s=2", "--set", "verify.workers=1")
    assert code == 0, err
    verified = read_artifact(work / "out" / "verified.parquet", "verified")
    statuses = dict(zip(names, verified["verify_status"], strict=True))
    assert set(statuses.values()) <= set(STATUSES)
    assert {name: statuses[name] for name, want in zip(names, expected, strict=True) if want} == \
        {name: want for name, want in zip(names, expected, strict=True) if want}
    assert verified.set_index("problem_id")["correct"].sum() == 1  # only the normal answer
    after = snapshot(work)
    # The output, its manifest record and the record's lock (tops.stages.record_stage).
    assert set(after) - set(before) == {"out/verified.parquet", "out/manifest.json", "out/.manifest.json.lock"}
    assert all(after[name] == data for name, data in before.items())


def test_hostile_responses_mask_in_bounded_time_with_valid_spans(work, capsys):
    responses = ["\\boxed{" * (MB // 7), "= 1 Wait " * (MB // 9), "The answer is" + " " * MB,
                 "\n" * MB, "answer is $" * (MB // 11), "x = 41. Wait, that is wrong.\nx = 42. \\boxed{42}"]
    write_artifact(selected_frame(responses).assign(answer="42"), work / "selected.parquet", "selected")
    with within(120):
        code, err = tops(capsys, "mask", "--in", "selected.parquet", "--out", "out/masked.parquet", "-q")
    assert code == 0, err
    masked = read_artifact(work / "out" / "masked.parquet", "masked")  # validates every span
    assert masked["masked_chars"].iloc[-1] > 0  # the real wrong round is still found


@pytest.mark.parametrize("field, pattern", [
    ("answer_patterns", r"(?P<answer>(?:x|xx)+)y"),
    ("reflection_pattern", r"(?:(?:x|xx)+)y"),
])
def test_a_catastrophic_mask_pattern_fails_the_stage_naming_itself(work, capsys, field, pattern):
    """A user's pattern that backtracks exponentially on one response must not stall the stage."""
    responses = ["x = 41. Wait, that is wrong.\nx = 42. \\boxed{42}",
                 "= 41.\n" + "x" * 60 + "\nSo \\boxed{42}"]
    write_artifact(selected_frame(responses).assign(answer="42"), work / "selected.parquet", "selected")
    before = snapshot(work)
    value = json.dumps([pattern] if field == "answer_patterns" else pattern)
    with within(60):
        code, err = tops(capsys, "mask", "--in", "selected.parquet", "--out", "out/masked.parquet", "-q",
                         "--set", "mask.pattern_timeout_s=0.5", "--set", f"mask.{field}={value}")
    name = f"mask.{field}[0]" if field == "answer_patterns" else f"mask.{field}"
    line = assert_one_line_error(code, err, f"{name} {pattern!r}", "took over 0.5 s", "possessive")
    assert line.count("mask.") == 2  # the culprit (+ mask.pattern_timeout_s), not the weak pattern it sits in
    assert snapshot(work) == before


# ---------------------------------------------------------------- two writers, one output


def _hold_lock(out: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom tops.artifacts import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_writer_of_an_output_is_refused_naming_the_holder(work, capsys):
    write_artifact(problems_frame(2), work / "problems.parquet", "problems")
    out = work / "out" / "samples.parquet"
    holder = _hold_lock(out)
    try:
        before = snapshot(work)
        with within(60):  # refused before any model loads: the model name does not even exist
            code, err = tops(capsys, "generate", "--in", "problems.parquet", "--model", "no-such-model",
                             "--out", out)
        assert_one_line_error(code, err, f"pid {holder.pid}", "samples.parquet")
        assert snapshot(work) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died with its lock file in place: the next writer takes the lock over.
    assert out.with_name("samples.parquet.lock").exists()
    from tops.artifacts import output_lock

    with output_lock(out):
        assert out.with_name("samples.parquet.lock").read_text().strip() == str(os.getpid())
    assert not out.with_name("samples.parquet.lock").exists()


def test_lock_is_reentrant_in_one_process(tmp_path):
    from tops.artifacts import output_lock

    out = tmp_path / "o.parquet"
    with output_lock(out):
        with output_lock(out):  # the stage runner's lock, then the stage function's own
            pass
        assert out.with_name("o.parquet.lock").exists()
    assert not out.with_name("o.parquet.lock").exists()


def test_lock_leaves_no_empty_folder_behind(tmp_path):
    from tops.artifacts import output_lock

    with output_lock(tmp_path / "a" / "b" / "o.parquet"):
        assert (tmp_path / "a" / "b").is_dir()
    assert list(tmp_path.iterdir()) == []  # nothing was written: both folders went again
    with output_lock(tmp_path / "a" / "b" / "o.parquet"):
        (tmp_path / "a" / "b" / "o.parquet").write_text("x")
    assert (tmp_path / "a" / "b" / "o.parquet").exists()  # a written output keeps its folders


@pytest.mark.parametrize("stage", [
    ["verify", "--in", "samples.parquet"],
    ["select", "--in", "samples.parquet"],
    ["train", "sft", "--data", "samples.parquet", "--kind", "samples", "--base", "no-such-model"],
    ["eval", "--model", "no-such-model", "--problems", "samples.parquet"],
], ids=["verify", "select", "train", "eval"])
def test_every_stage_refuses_a_second_writer_of_its_output(work, capsys, stage):
    """The lock is the stage runner's (tops.stages.one_writer), not only generate's."""
    out = work / "out" / "result"
    holder = _hold_lock(out)
    try:
        before = snapshot(work)
        with within(60):
            code, err = tops(capsys, *stage, "--out", out)
        assert_one_line_error(code, err, f"pid {holder.pid}", "result")
        assert snapshot(work) == before
    finally:
        holder.kill()
        holder.wait()
