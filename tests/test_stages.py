"""File-level stage runners (what the CLI and the flow call) on real engines."""

from __future__ import annotations

import pandas as pd

from tops.artifacts import read_artifact, write_artifact
from tops.domains.arith import teacher_response
from tops.stages import run_mask


def _selected(n: int = 3) -> pd.DataFrame:
    rows = []
    for i in range(n):
        a, b = 47 + i, 85
        rows.append({"problem_id": f"p{i}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                     "response": teacher_response([a, b], ["+"], "high"), "effort": "high", "n_tokens": 90,
                     "policy": "shortest", "difficulty": "medium"})
    return pd.DataFrame(rows)


def test_judge_mode_runs_on_a_real_engine(tmp_path, vllm_engine, smoke_config):
    """The tiny model's replies are noise: every judged row must stay unmasked and be counted."""
    cfg = smoke_config.model_copy(deep=True)
    cfg.mask.mode = "judge"
    cfg.mask.judge_prompt = "{question} = {answer}\n{steps}\nFirst wrong step:"  # fits the tiny context
    selected = write_artifact(_selected(), tmp_path / "selected.parquet", "selected")
    summary = run_mask(cfg, selected, tmp_path / "masked.parquet", judge=vllm_engine, progress=False)
    masked = read_artifact(tmp_path / "masked.parquet", "masked")
    judged = summary["judge"]
    assert judged["requests"] == 3
    assert judged["unparseable"] + (masked["masked_chars"] > 0).sum() <= 3
    assert (masked["masked_chars"] == 0).sum() >= judged["unparseable"]


def test_judge_prompt_too_long_for_the_judge_is_counted_not_fatal(tmp_path, vllm_engine, smoke_config):
    """One response far longer than the judge's context: that row is not sent (left unmasked,
    counted as too_long); the others are judged and the stage finishes."""
    cfg = smoke_config.model_copy(deep=True)
    cfg.mask.mode = "judge"
    cfg.mask.judge_prompt = "{question} = {answer}\n{steps}\nFirst wrong step:"
    rows = _selected(3)
    long_round = "".join(f"{i} + 1 = {i + 1}.\n" for i in range(200))
    rows.loc[1, "response"] = f"{long_round}So the answer is 1.\nWait, recheck.\n{rows.loc[1, 'response']}"
    selected = write_artifact(rows, tmp_path / "selected.parquet", "selected")
    summary = run_mask(cfg, selected, tmp_path / "masked.parquet", judge=vllm_engine, progress=False)
    masked = read_artifact(tmp_path / "masked.parquet", "masked")
    assert vllm_engine.count_tokens([long_round])[0] > vllm_engine.max_model_len  # it really does not fit
    assert summary["judge"]["too_long"] == 1 and summary["judge"]["requests"] == 2
    assert len(masked) == 3 and masked.loc[masked["problem_id"] == "p1", "masked_chars"].item() == 0


def test_rounds_mode_masks_the_teachers_dropped_carry(tmp_path, smoke_config):
    """The arith teacher's high effort forgets a carry, then corrects it: that round is masked."""
    selected = write_artifact(_selected(1), tmp_path / "selected.parquet", "selected")
    run_mask(smoke_config, selected, tmp_path / "masked.parquet", progress=False)
    row = read_artifact(tmp_path / "masked.parquet", "masked").iloc[0]
    wrong = [row["response"][s["start"]:s["end"]] for s in row["steps"] if s["erroneous"]]
    assert wrong and "= 22." in "".join(wrong)
    assert "boxed{132}" not in "".join(wrong)
