"""Nothing a `tops run` started outlives it, kill -9 included.

Prefect starts a temporary API server (a uvicorn child process) for a run without one; a run
killed with SIGKILL cannot stop it, and it stayed behind. So `tops run` first starts this
watchdog, in a session of its own: it notes the run's descendants (pid and start time) every
`POLL_S`, and when the run is gone it stops those still alive — SIGTERM, then SIGKILL. The start
time keeps it from signalling a process that merely reused a pid.

    python -m tops.flow.orphans <pid>
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0  # a scan of /proc costs ~10 ms: about 1% of a core
GRACE_S = 3.0


def watch(pid: int) -> subprocess.Popen:
    """Start the watchdog of process `pid` (this process, usually)."""
    return subprocess.Popen([sys.executable, "-m", "tops.flow.orphans", str(pid)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of `pid`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[0], []).append(int(entry))
            starts[int(entry)] = stat[2]
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child not in found and child in starts:
            found[child] = starts[child]
            todo += children.get(child, [])
    return found


def _alive(pid: int, start: int | None = None) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z" and (start is None or stat[2] == start)


def _signal_all(known: dict[int, int], sig: int) -> None:
    for pid, start in known.items():
        if _alive(pid, start):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def main(pid: int) -> None:
    known: dict[int, int] = {}
    while _alive(pid):
        known.update(descendants(pid))
        known = {p: s for p, s in known.items() if p != os.getpid() and _alive(p, s)}
        time.sleep(POLL_S)
    _signal_all(known, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in known.items()):
        time.sleep(0.1)
    _signal_all(known, signal.SIGKILL)


if __name__ == "__main__":
    main(int(sys.argv[1]))
