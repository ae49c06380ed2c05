"""Is a process still running? The one check behind every watcher of a parent, owner or child."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Running (a killed parent not yet reaped is a zombie: gone for our purpose)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: another user's process took the pid
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): the signal check is all there is
