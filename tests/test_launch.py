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
from tops.pids import alive

REPO = Path(__file__).resolve().parents[1]


class _NoInterrupt(Exception):
    """The wait ran past its bound: the interrupt never arrived."""


def _give_up(signum, frame):
    raise _NoInterrupt("no KeyboardInterrupt within 90 s of the child starting")


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

    # A background job of a non-interactive shell (`make test &`, nohup, cron) starts with SIGINT
    # ignored: Ctrl-C would never arrive. Python's own handler for the test, the caller's after.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    # If the interrupt never comes, SIGALRM ends the wait instead of the sleeper's 600 s.
    previous_alarm = signal.signal(signal.SIGALRM, _give_up)
    signal.alarm(90)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            launch([Command(_python(code), "sleeper")], log=lambda who, line: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGINT, previous)
    grandchild = int(pid_file.read_text())
    deadline = time.time() + 10
    while alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


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
    assert alive(child)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent's group only: the child has its own session
    proc.wait()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_background_run_stops_cleanly_on_sigint_and_sigterm(tmp_path, signum):
    """`tops run` started from a script in the background inherits SIGINT ignored, and SIGTERM's
    default ends Python with no clean-up (the Prefect server it started would be orphaned). With
    stop_on_signals (what `tops run` / `tops demo` call) either signal kills the children it waits
    on — here one in a worker thread, as the evaluation lanes do — and unwinds the main thread."""
    pid_file, cleaned = tmp_path / "grandchild.pid", tmp_path / "cleaned"
    sleeper = (f"import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; "
               f"time.sleep(600)']); open({str(pid_file)!r}, 'w').write(str(g.pid)); time.sleep(600)")
    parent = textwrap.dedent(f"""
        import sys, threading, time
        from tops.launch import Command, launch, stop_on_signals
        stop_on_signals()
        lane = threading.Thread(target=launch, args=([Command([sys.executable, "-c", {sleeper!r}], "s")],
                                                     lambda who, line: None))
        lane.start()
        try:
            while True:
                time.sleep(0.1)
        finally:
            lane.join(30)  # its child was killed, so the lane's wait ends
            open({str(cleaned)!r}, "w").write("lane done" if not lane.is_alive() else "lane still waiting")
    """)
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 — a background job's
    proc = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=ignore_sigint, start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "no child"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert b"KeyboardInterrupt" in err and signal.Signals(signum).name.encode() in err, err[-2000:]
    assert cleaned.read_text() == "lane done"  # the finally ran: the flow would stop its server here
    grandchild = int(pid_file.read_text())
    deadline = time.time() + 10
    while alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)
