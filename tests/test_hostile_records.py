"""Hostile run folders (issue 30): Prefect's cache records run no code, a renamed run folder
keeps its cache, and links out of a run folder are refused before anything is written.

The cache cases run a real stage task (`problems`) through the flow's `Loop` on a real Prefect
test server; nothing here starts an engine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from tops.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


class _Evil:
    """Unpickling this touches the marker file (what a tampered record would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _problems_stage(root: Path, name: str = "hostile"):
    """Run the seed split's `problems` stage as the flow runs it; returns (result, output, key)."""
    from prefect import flow

    from tops.flow import steps
    from tops.flow.stage_loop import Loop

    cfg = load_config(SMOKE, [f"run.root={root}", f"run.name={name}"])

    @flow(name="hostile-records")
    def one_stage() -> str:
        return steps.problems(Loop(cfg), "seed", 3, 0, [])

    out = one_stage()
    key = Path(out).name.removeprefix("problems-seed-").removesuffix(".parquet")
    return out, Path(out), key


def _pickle_record(payload) -> bytes:
    """A record in Prefect's default (cloudpickle) format."""
    import cloudpickle

    return json.dumps({"metadata": {"storage_key": None, "expiration": None, "serializer": {"type": "pickle"},
                                    "prefect_version": "3", "storage_block_id": None},
                       "result": base64.b64encode(cloudpickle.dumps(payload)).decode()}).encode()


@pytest.mark.slow
def test_a_tampered_cache_record_is_replaced_never_unpickled(harness, tmp_path):
    result, out, key = _problems_stage(tmp_path)
    record = tmp_path / "hostile" / ".cache" / key
    assert json.loads(record.read_bytes())["metadata"]["serializer"]["type"] == "json"
    before = out.read_bytes()
    inode = out.stat().st_ino  # a rerun would replace the file (atomic write): a new inode

    marker = tmp_path / "marker"
    record.write_bytes(_pickle_record(_Evil(str(marker))))
    again, _, _ = _problems_stage(tmp_path)
    assert not marker.exists()  # the pickle was never loaded
    assert again == result and out.read_bytes() == before and out.stat().st_ino == inode  # a cache hit
    assert json.loads(record.read_bytes())["metadata"]["serializer"] == {"type": "json"}

    # a JSON record naming another decoder, or raw pickle bytes: the same
    record.write_bytes(json.dumps({"metadata": {"serializer": {"type": "json", "jsonlib": "pickle"}},
                                   "result": "x"}).encode())
    assert _problems_stage(tmp_path)[0] == result
    import cloudpickle

    record.write_bytes(cloudpickle.dumps(_Evil(str(marker))))
    assert _problems_stage(tmp_path)[0] == result
    assert not marker.exists() and out.stat().st_ino == inode


@pytest.mark.slow
def test_a_renamed_run_folder_keeps_its_cache(harness, tmp_path):
    old, out, key = _problems_stage(tmp_path, "before")
    shutil.move(tmp_path / "before", tmp_path / "after")
    inode = (tmp_path / "after" / "stages" / out.name).stat().st_ino
    new, moved, _ = _problems_stage(tmp_path, "after")
    assert new == str(tmp_path / "after" / "stages" / out.name)  # the new folder's output,
    assert moved.stat().st_ino == inode  # reused, not made again
    assert moved.exists() and not (tmp_path / "before").exists()
    assert str(tmp_path / "before") not in (tmp_path / "after" / ".cache" / key).read_text()


@pytest.mark.parametrize("name", ["config.yaml", "lineage.json", "report.md", "stages", ".cache"])
def test_a_link_out_of_the_run_folder_is_refused(tmp_path, name):
    from tops.confine import no_links_out
    from tops.errors import UserError

    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir() if name in ("stages", ".cache") else victim.write_text("keep me")
    (run / name).symlink_to(victim)
    with pytest.raises(UserError, match=f"{name}: a link to .*outside the run folder"):
        no_links_out(run)
    (run / name).unlink()
    (run / "models").mkdir()
    (run / "stages").mkdir()
    (run / "models" / "tops").symlink_to("../stages", target_is_directory=True)  # a published model: fine
    no_links_out(run)


@pytest.mark.parametrize("link", ["problems.parquet.lock", ".manifest.json.lock", "manifest.json"])
def test_a_stage_refuses_a_lock_or_manifest_that_is_a_link(tmp_path, monkeypatch, capsys, link):
    from tops.cli import main

    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / link).symlink_to(victim)
    with pytest.raises(SystemExit) as exc:
        main(["problems", "--out", str(out / "problems.parquet"), "--set", "problems.n=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[-1].startswith("error: ") and "is a link" in err[-1], err
    assert victim.read_text() == "keep me\n"
    assert sorted(p.name for p in out.iterdir()) == [link]  # nothing written


def test_publishing_never_deletes_before_the_replacement_exists(tmp_path):
    from tops.flow.stage_loop import Loop
    from tops.flow.tasks import StageFailed

    loop = Loop(load_config(SMOKE, [f"run.root={tmp_path}", "run.name=pub"]))
    first = loop.dir / "stages" / "problems-seed-a.parquet"
    first.parent.mkdir(parents=True)
    first.write_bytes(b"first")
    loop.publish("problems/seed.parquet", str(first))
    published = loop.dir / "problems" / "seed.parquet"
    with pytest.raises(StageFailed, match="missing"):
        loop.publish("problems/seed.parquet", str(loop.dir / "stages" / "problems-seed-gone.parquet"))
    assert published.read_bytes() == b"first"  # still there
    second = first.with_name("problems-seed-b.parquet")
    second.write_bytes(b"second")
    loop.publish("problems/seed.parquet", str(second))
    assert published.read_bytes() == b"second" and not list(published.parent.glob(".*"))
