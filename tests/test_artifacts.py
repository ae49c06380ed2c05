import pandas as pd
import pytest

from tops.artifacts import (
    ShardedOutput,
    fingerprint_file,
    read_artifact,
    record_stage,
    write_artifact,
)
from tops.errors import UserError


def problems(n=3):
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(n)], "question": ["q"] * n,
                         "answer": ["1"] * n, "difficulty": [None] * n, "extra": list(range(n))})


def test_roundtrip_keeps_extra_columns(tmp_path):
    path = write_artifact(problems(), tmp_path / "p.parquet", "problems")
    back = read_artifact(path, "problems")
    assert back["extra"].tolist() == [0, 1, 2]
    assert back["difficulty"].isna().all()


def test_missing_column_is_named(tmp_path):
    frame = problems().drop(columns=["answer"])
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(UserError, match="column 'answer' is missing"):
        read_artifact(tmp_path / "p.parquet", "problems")


def test_mistyped_column_is_named(tmp_path):
    frame = problems()
    frame["question"] = [1, 2, 3]
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(UserError, match="column 'question' has type int64"):
        read_artifact(tmp_path / "p.parquet", "problems")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_artifact(tmp_path / "none.parquet", "samples")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        read_artifact(tmp_path / "junk.parquet", "samples")


def test_write_refuses_invalid_frame_and_leaves_nothing(tmp_path):
    with pytest.raises(UserError):
        write_artifact(problems().drop(columns=["question"]), tmp_path / "p.parquet", "problems")
    assert list(tmp_path.iterdir()) == []


def test_shards_finalize_in_order_and_clean_up(tmp_path):
    out = ShardedOutput(tmp_path / "p.parquet", "problems")
    frame = problems(4)
    out.write(1, "b", frame.iloc[2:])
    out.write(0, "a", frame.iloc[:2])
    assert out.is_done(0, "a") and not out.is_done(0, "z")
    merged = out.finalize([(0, "a"), (1, "b")])
    assert merged["problem_id"].tolist() == ["p0", "p1", "p2", "p3"]
    assert not out.dir.exists()
    assert read_artifact(tmp_path / "p.parquet", "problems").shape[0] == 4


def test_rewriting_a_shard_with_a_new_key_replaces_the_stale_one(tmp_path):
    out = ShardedOutput(tmp_path / "p.parquet", "problems")
    out.write(0, "old", problems(2))
    out.write(0, "new", problems(2))
    assert [p.name for p in out.dir.iterdir()] == ["shard-00000-new.parquet"]


def test_manifest_records_inputs_and_rows(tmp_path):
    src = write_artifact(problems(), tmp_path / "in.parquet", "problems")
    out = write_artifact(problems(), tmp_path / "out.parquet", "problems")
    manifest = record_stage(out, "copy", config={"a": 1}, inputs={"src": src}, rows=3, seconds=0.5)
    import json

    data = json.loads(manifest.read_text())
    entry = data["stages"]["out"]
    assert entry["rows"] == 3 and entry["stage"] == "copy"
    assert entry["inputs"]["src"]["fingerprint"] == fingerprint_file(src)
    assert "pandas" in data["versions"]
