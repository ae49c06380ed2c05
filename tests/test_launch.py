"""Child processes of the flow: output streamed, exit codes kept, no child left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tops.launch import Command, launch

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_concurrent_children_stream_output_with_their_own_env():
    lines: list[tuple[str, str]] = []
    code = "import os, sys; print('shard', os.environ['SHARD']); sys.exit(int(os.environ['SHARD']))"
    done = launch([Command(_python(code), f"s{i}", env={"SHARD": str(i)}) for i in range(3)],
                  log=lambda who, line: lines.append((who, line)))
    assert [d.returncode for d in done] == [0, 1, 2]
    assert sorted(lines) == [("s0", "shard 0"), ("s1", "shard 1"), ("s2", "shard 2")]
    assert done[2].tail == ["shard 2"]


def test_a_stopped_wait_kills_the_whole_process_group(tmp_path):
    """The child starts a grandchild; when the caller stops waiting (Ctrl-C), both are gone."""
    pid_file = tmp_path / "grandchild.pid"
    code = f"""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(g.pid))
        time.sleep(600)
    """

    def interrupt_when_started():
        deadline = time.time() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        launch([Command(_python(code), "sleeper")], log=lambda who, line: None)
    grandchild = int(pid_file.read_text())
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_tops_children_die_with_a_killed_parent(tmp_path):
    """SIGKILL of the launching process runs no finaliser: the `tops` child notices its parent is
    gone and takes its process group (its own children included) down."""
    pid_file = tmp_path / "child.pid"
    parent = textwrap.dedent(f"""
        import sys
        from tops.launch import Command, launch, tops_command
        # `tops models resolve` of a missing folder would exit at once: a stage that blocks instead
        code = "import sys, time; from tops.launch import exit_with_parent; exit_with_parent(0.1); " \\
               "open({str(pid_file)!r}, 'w').write(str(__import__('os').getpid())); time.sleep(600)"
        launch([Command([sys.executable, "-c", code], "child")], log=lambda who, line: None)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, "PYTHONPATH": str(REPO)},
                            start_new_session=True)
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert _alive(child)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent's group only: the child has its own session
    proc.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
