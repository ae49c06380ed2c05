"""A hang guard for tests of hostile input: hypothesis' deadline measures a call after it
returns, so a quadratic scan on a megabyte (hours) needs an alarm to fail at all."""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def within(seconds: int):
    """Raise TimeoutError in the main thread if the block runs past `seconds`."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
