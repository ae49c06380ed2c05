"""A pre-imported Python that forks stage children on CPU hosts (`python -m tops.zygote`).

Every heavy stage runs as a child process (tops.launch). On a CPU host the first seconds of each
are imports: torch, transformers and TRL take ~7 s of a core, and a flow starts a dozen children,
a test suite about a hundred. The zygote imports them once and forks one child per command; the
child takes its own session, environment, working directory, arguments and output pipe, then
runs the module as `python -m MODULE ARGS` would, and its exit status goes back to the launcher.

What a forked child cannot undo is what was imported before its environment was set. So a zygote
serves only commands whose environment equals the one it imported under, apart from LATE_ENV
(variables read when used: OMP_NUM_THREADS becomes `torch.set_num_threads` in the child); another
environment gets a zygote of its own. Imports that set environment variables (TRL sets
VLLM_LOGGING_LEVEL unless it is set) are replayed in the child with the same default semantics.
GPU hosts keep plain processes (CUDA and fork do not mix, and there a stage's minutes dwarf its
imports); TOPS_ZYGOTE=0 turns the zygote off everywhere.

Protocol, over one Unix-socket connection per child: the launcher sends a 4-byte length, the
output pipe's write end (SCM_RIGHTS) and a JSON request {module, args, env, cwd}; the zygote
answers "pid N" once the child leads its own session, then "exit CODE" (Popen's returncode:
negative for a signal) when it has reaped it.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tops.pids import alive

PRELOAD = (
    "torch",
    "transformers",
    "transformers:AutoModelForCausalLM,AutoTokenizer,Trainer",
    "peft",
    "trl:SFTTrainer,SFTConfig,DPOTrainer,DPOConfig",
    "datasets",
    "pandas",
    "pyarrow.parquet",
    "tops.stages.runners",
    "tops.train.sft",
    "tops.engines.hf_engine",
)  # not vLLM: +8 s per zygote start, and a test suite starts many (BENCHMARKS.md)
# Read when used, not at import: they may differ between the zygote and its children.
LATE_ENV = frozenset({"TOPS_PARENT_PID", "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "PYTEST_CURRENT_TEST"})
START_TIMEOUT_S = 180.0
_HEADER = struct.Struct("!I")


def enabled(env: dict[str, str]) -> bool:
    """Fork children from a zygote here? Linux CPU hosts, unless TOPS_ZYGOTE=0."""
    if env.get("TOPS_ZYGOTE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(dev) for dev in ("/dev/nvidiactl", "/dev/kfd"))


def import_env(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment a zygote must have imported under."""
    return {k: v for k, v in env.items() if k not in LATE_ENV}


# ------------------------------------------------------------------ the zygote process


def _preload() -> dict[str, str]:
    """Import PRELOAD; returns the environment variables the imports set."""
    before = dict(os.environ)
    for entry in PRELOAD:
        module, _, names = entry.partition(":")
        try:
            imported = importlib.import_module(module)
            for name in filter(None, names.split(",")):
                getattr(imported, name)
        except Exception:  # an optional dependency missing: its children import (and fail) as usual
            continue
    return {k: v for k, v in os.environ.items() if before.get(k) != v}


def _receive(conn: socket.socket) -> tuple[dict, int]:
    head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 1)
    if len(head) < _HEADER.size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("incomplete request")
    (size,) = _HEADER.unpack(head)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            os.close(fds[0])
            raise ConnectionError("incomplete request")
        body += chunk
    return json.loads(body), fds[0]


def serve(path: str, owner: int) -> tuple[dict, int] | None:
    """Fork a child per request until the owner is gone. Returns only in a child: its request
    and output fd (the caller runs it); the zygote itself returns None when it is done."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()  # SIGCHLD wakes the loop to reap at once
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    while alive(owner):
        for key, _ in selector.select(timeout=0.5):
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                continue
            conn, _ = listener.accept()
            try:
                request, out_fd = _receive(conn)
            except (ConnectionError, OSError, ValueError):
                conn.close()
                continue
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: drop the zygote's sockets and run the request
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                selector.close()
                for fd in (wake_r, wake_w, ready_r):
                    os.close(fd)
                for other in (listener, conn, *children.values()):
                    other.close()
                os.setsid()  # its own process group: the launcher kills it with killpg(pid)
                os.close(ready_w)
                return request, out_fd
            os.close(out_fd)
            os.close(ready_w)
            os.read(ready_r, 1)  # EOF once the child has its session (or has died)
            os.close(ready_r)
            children[pid] = conn
            _send(conn, f"pid {pid}\n")
        while children:  # reap
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                _send(conn, f"exit {os.waitstatus_to_exitcode(status)}\n")
                conn.close()
    return None


def _send(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall(text.encode())
    except OSError:  # the launcher went away; the child is reaped all the same
        pass


def become(request: dict, out_fd: int, preload_env: dict[str, str]) -> None:
    """In a forked child: take the request's streams, environment, directory and arguments."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    for key, value in preload_env.items():  # what the imports set unless it was set
        os.environ.setdefault(key, value)
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # as `python -m` has it
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    if "numpy" in sys.modules:  # a fresh interpreter seeds numpy's global generator from the OS
        sys.modules["numpy"].random.seed()


def main() -> None:
    import setproctitle  # the zygote's own need, not its launcher's

    setproctitle.getproctitle()  # it claims the argv and environ memory now, before anything changes the environment

    path, owner = sys.argv[1], int(sys.argv[2])
    preload_env = _preload()
    zygote = os.getpid()
    try:
        served = serve(path, owner)
    finally:
        if os.getpid() == zygote:
            Path(path).unlink(missing_ok=True)
    if served is None:
        return
    request, out_fd = served
    become(request, out_fd, preload_env)
    sys.argv = [request["module"], *request["args"]]
    # `ps`, `top` and /proc/PID/cmdline show the stage's command, not the zygote's.
    setproctitle.setproctitle(" ".join([sys.executable, "-m", *sys.argv]))
    # SystemExit and uncaught exceptions leave from here exactly as from `python -m`.
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


# ------------------------------------------------------------------ the launcher's side


class ZygoteUnavailable(RuntimeError):
    pass


class ForkedChild:
    """What launch() needs of a subprocess.Popen, for a child forked by a zygote."""

    def __init__(self, conn: socket.socket, pid: int, stdout_fd: int):
        self._conn = conn
        self._reply = conn.makefile("rb")
        self.pid = pid
        self.stdout = os.fdopen(stdout_fd, "rb")
        self.returncode: int | None = None

    def _read_exit(self) -> None:
        line = self._reply.readline().decode()
        if line.startswith("exit "):
            self.returncode = int(line.split()[1])
        else:  # the zygote died first: the child dies with its group (exit_with_parent) or runs on
            while alive(self.pid):
                time.sleep(0.1)
            self.returncode = -signal.SIGKILL
        self._reply.close()
        self._conn.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            if select.select([self._conn], [], [], 0)[0]:
                self._read_exit()
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self._read_exit()
        return self.returncode


class Zygote:
    """One zygote process, started by this process for one import environment."""

    def __init__(self, env: dict[str, str]):
        self.dir = tempfile.mkdtemp(prefix="tops-zygote-")
        self.path = os.path.join(self.dir, "socket")
        self.log = os.path.join(self.dir, "log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tops.zygote", self.path, str(os.getpid())],
                                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.path):  # bound once its imports are done
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(self.log).read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                self.close()
                raise ZygoteUnavailable(f"the zygote did not start ({tail[0]})")
            time.sleep(0.05)

    def spawn(self, module: str, args: list[str], env: dict[str, str]) -> ForkedChild:
        if self.proc.poll() is not None:
            raise ZygoteUnavailable(f"the zygote exited ({self.proc.returncode})")
        body = json.dumps({"module": module, "args": list(args), "env": env, "cwd": os.getcwd()}).encode()
        read_fd, write_fd = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            socket.send_fds(conn, [_HEADER.pack(len(body))], [write_fd])
            conn.sendall(body)
            os.close(write_fd)
            write_fd = -1
            line = b""
            while not line.endswith(b"\n"):  # a byte at a time: the "exit" line stays in the socket for poll()
                chunk = conn.recv(1)
                if not chunk:
                    raise ZygoteUnavailable("the zygote closed the connection")
                line += chunk
        except (OSError, ZygoteUnavailable) as exc:
            conn.close()
            os.close(read_fd)
            if write_fd != -1:
                os.close(write_fd)
            raise ZygoteUnavailable(str(exc)) from exc
        return ForkedChild(conn, int(line.split()[1]), read_fd)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_ZYGOTES: dict[tuple, Zygote | None] = {}  # (owner pid, import environment) -> its zygote, None: failed
_LOCK = threading.Lock()


def spawn(module: str, args: list[str], env: dict[str, str]) -> ForkedChild:
    """Fork `python -m module args` with `env` from this process's zygote for that environment
    (started on first use). Raises ZygoteUnavailable when there is none: run a plain process."""
    wanted = import_env(env)
    key = (os.getpid(), tuple(sorted(wanted.items())))
    with _LOCK:
        if key not in _ZYGOTES:
            try:
                _ZYGOTES[key] = Zygote(wanted)
            except ZygoteUnavailable:
                _ZYGOTES[key] = None
                raise
        zygote = _ZYGOTES[key]
    if zygote is None:
        raise ZygoteUnavailable("the zygote for this environment failed to start")
    try:
        return zygote.spawn(module, args, env)
    except ZygoteUnavailable:
        with _LOCK:
            _ZYGOTES[key] = None
        zygote.close()
        raise


@atexit.register
def close_all() -> None:
    with _LOCK:
        zygotes = [z for (owner, _), z in _ZYGOTES.items() if z is not None and owner == os.getpid()]
        _ZYGOTES.clear()
    for zygote in zygotes:
        zygote.close()


if __name__ == "__main__":
    main()
