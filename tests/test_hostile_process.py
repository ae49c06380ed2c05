"""`tops run` as a process (issue 30, item 10): its exit-2 line is the last thing on stderr, and
kill -9 does not leave its temporary Prefect server behind (tops/flow/orphans.py). Real `tops run`
commands on the smoke profile, each with a Prefect home of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tops.pids import alive

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
SERVER = "prefect.server.api.server:create_app"

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            found.append((int(entry), cmdline))
    return found


def _tops_run(tmp_path: Path, *sets: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tops.cli", "run", "--config", str(SMOKE), "--set", f"run.root={tmp_path / 'runs'}"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, **popen)


def test_the_error_line_is_last_on_stderr(tmp_path):
    """An input error found inside the flow (an unknown base model): Prefect's logs come before
    the one `error:` line, none after it (its shutdown logs included)."""
    run = _tops_run(tmp_path, f"model.base={tmp_path / 'no-such-model'}", stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, text=True)
    _, err = run.communicate(timeout=600)
    lines = [line for line in err.splitlines() if line.strip()]
    assert run.returncode == 2, err[-3000:]
    assert lines[-1].startswith("error: ") and "no-such-model" in lines[-1], lines[-5:]
    assert sum(line.startswith("error: ") for line in lines) == 1


def test_kill_9_leaves_no_prefect_server_behind(tmp_path, tiny_model_dir):
    run = _tops_run(tmp_path, f"model.base={tiny_model_dir}", stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    server = None
    while server is None and time.time() < deadline and run.poll() is None:
        server = next((pid for pid, cmd in _children(run.pid) if SERVER in cmd), None)
        time.sleep(0.2)
    assert server is not None, "the run started no temporary Prefect server"
    time.sleep(3)  # the watchdog notes descendants every second
    os.kill(run.pid, signal.SIGKILL)  # the run only, not its process group
    run.wait()
    deadline = time.time() + 30
    while alive(server) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(server), f"the Prefect server {server} outlived its run"
