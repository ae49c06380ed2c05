"""A Hub that never answers (issue 30, item 4): `tops export` fails with one line within its
deadline instead of waiting forever, and leaves no temporary folder behind.

The Hub is a local TCP server that accepts every connection and never sends a byte (or sends
one byte a second); the client is the real huggingface_hub, pointed at it with HF_ENDPOINT.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_hub import make_run

REPO = Path(__file__).resolve().parents[1]


class SilentServer:
    """Accepts connections and reads what comes; answers nothing (or drips `drip` bytes a second)."""

    def __init__(self, drip: bool = False):
        self.drip = drip
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._stop = threading.Event()
        self._held: list[socket.socket] = []

    def __enter__(self) -> SilentServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._held.append(conn)
            if self.drip:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not self._stop.is_set():
                conn.sendall(b" ")
                time.sleep(0.5)
        except OSError:
            pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("drip", [False, True], ids=["silent", "dripping"])
def test_export_to_a_hub_that_never_answers_fails_within_its_deadline(tmp_path, drip):
    run = make_run(tmp_path / "run")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "HF_TOKEN": "hf_test_token_not_real", "TMPDIR": str(scratch), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(tmp_path / "hf")}
    with SilentServer(drip=drip) as hub:
        env["HF_ENDPOINT"] = hub.url
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "tops.cli", "export", "--run", str(run), "--repo-id", "me/x",
                               "--timeout-s", "3"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        took = time.monotonic() - started
        assert hub.accepted >= 1  # the client did reach the server
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert lines[-1].startswith("error: me/x: upload failed: the Hub at") and "within 3 s" in lines[-1], lines
    assert len(lines) == 1, lines
    print(f"export gave up after {took:.1f} s")
    assert took < 60, took  # a guard against a hang only: the deadline is 3 s per request, not retried
    assert not list(scratch.iterdir())  # the export's temporary folder is gone
