"""Child processes for heavy stages: start, stream their output, and never leave one behind.

A heavy stage (an engine, a trainer) runs as `python -m tops.cli <stage> ...` in its own process
group, so its memory (GPU memory included) is returned when it ends and a crash stays in its
stage. `launch` starts one or several commands at once (several: engine shards, each with its own
environment such as CUDA_VISIBLE_DEVICES), streams every output line to a callback, and kills the
process groups of all of them if the caller stops waiting (an exception, Ctrl-C, a cancelled task).

A parent killed outright (SIGKILL) runs no finaliser: each `tops` child therefore watches the
process that launched it (`TOPS_PARENT_PID`) and takes its own process group down when it is gone
(`exit_with_parent`, called by the CLI). Children of children that start their own session
(`accelerate launch` workers) are `tops` processes too and watch the same parent.

A long-running parent (`tops run`, `tops demo`) calls `stop_on_signals`: started in the background
(`cmd &` in a script, nohup, cron) it inherits SIGINT ignored, and Python's default for SIGTERM
ends it with no clean-up, leaving the Prefect server it started behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tops import zygote
from tops.pids import alive

PARENT_ENV = "TOPS_PARENT_PID"
TAIL_LINES = 40
_LIVE: set[subprocess.Popen] = set()  # children of launch() still waited on, in any thread
_LIVE_LOCK = threading.Lock()


def in_launched_process() -> bool:
    """A rank started by `accelerate launch` (or torchrun) for a `tops` command."""
    return "LOCAL_RANK" in os.environ or os.environ.get("TOPS_LAUNCHED") == "1"


@dataclass
class Command:
    """One child: its argument list, extra environment, and the name its output lines carry."""

    argv: list[str]
    name: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Finished:
    name: str
    returncode: int
    tail: list[str]  # the last output lines, for error messages
    seconds: float


def tops_command(*args: str) -> list[str]:
    """`python -m tops.cli ARGS` with this interpreter."""
    return [sys.executable, "-m", "tops.cli", *args]


def _pump(proc: subprocess.Popen, name: str, tail: deque, log: Callable[[str, str], None]) -> None:
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        # progress bars redraw with carriage returns: keep the last state of the line
        line = line.rsplit("\r", 1)[-1]
        if line.strip():
            tail.append(line)
            try:
                log(name, line)
            except Exception:  # a broken log sink must not stop the pipe being drained
                pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def launch(commands: Sequence[Command], log: Callable[[str, str], None]) -> list[Finished]:
    """Run `commands` concurrently to the end; returns how each ended (in order). Whatever stops
    the wait, no child process group outlives this call."""
    env_base = {**os.environ, PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    started: list[tuple[Command, subprocess.Popen, deque, threading.Thread, float]] = []
    try:
        for command in commands:
            proc = _start(command, {**env_base, **command.env}, log)
            with _LIVE_LOCK:  # at once: a signal handled while the pump thread starts must find it
                _LIVE.add(proc)
            tail: deque = deque(maxlen=TAIL_LINES)
            pump = threading.Thread(target=_pump, args=(proc, command.name, tail, log), daemon=True)
            pump.start()
            started.append((command, proc, tail, pump, time.perf_counter()))
        finished = []
        for command, proc, tail, pump, t0 in started:
            code = proc.wait()
            pump.join()
            finished.append(Finished(command.name, code, list(tail), time.perf_counter() - t0))
        return finished
    finally:
        with _LIVE_LOCK:
            _LIVE.difference_update(proc for _, proc, *_ in started)
        for _, proc, *_ in started:
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
            else:  # the leader ended; whatever it left in its group goes too
                _kill_group(proc)


def _start(command: Command, env: dict[str, str], log: Callable[[str, str], None]):
    """A `python -m tops.cli` child forked from the zygote (tops/zygote.py) where there is one, else
    a fresh process; either way in its own process group, stdout and stderr on one pipe."""
    if command.argv[:3] == tops_command()[:3] and zygote.enabled(env):
        try:
            return zygote.spawn("tops.cli", command.argv[3:], env)
        except zygote.ZygoteUnavailable as exc:
            log(command.name, f"plain process instead of the zygote: {exc}")
    return subprocess.Popen(command.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_on_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """SIGINT and SIGTERM stop this process as Ctrl-C does, whatever handlers it inherited: every
    child process group launch() is waiting on (in any thread: evaluation lanes) is killed, then
    KeyboardInterrupt unwinds the main thread, so the flow ends and stops its Prefect server."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set there; an embedding program keeps its own

    def stop(signum: int, frame) -> None:
        kill_launched()
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    for signum in signals:
        signal.signal(signum, stop)


def kill_launched() -> None:
    """Kill the process group of every child launch() is waiting on."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        _kill_group(proc)


def exit_with_parent(poll_s: float = 0.5) -> None:
    """In a launched child: kill this process group as soon as the launching process is gone."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return
    pid = int(parent)

    def watch() -> None:
        while alive(pid):
            time.sleep(poll_s)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="tops-exit-with-parent", daemon=True).start()
