"""The zygote: children forked from a pre-imported Python behave as `python -m MODULE ARGS` would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tops import zygote
from tops.launch import Command, launch, tops_command
from tops.pids import alive

PROBE = '''
import json, os, sys
preloaded = "torch" in sys.modules and "transformers" in sys.modules
import torch
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "pgid": os.getpgid(0),
                  "ppid": os.getppid(), "preloaded": preloaded, "threads": torch.get_num_threads(),
                  "flavour": os.environ.get("PROBE_FLAVOUR"), "trl_default": os.environ.get("VLLM_LOGGING_LEVEL"),
                  "name": __name__, "cmdline": open("/proc/self/cmdline", "rb").read().decode().strip("\\0")}),
      flush=True)
print("to stderr", file=sys.stderr, flush=True)
if "--sleep" in sys.argv:
    import time
    time.sleep(60)
if "--raise" in sys.argv:
    raise ValueError("the probe failed")
sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
'''


@pytest.fixture
def probe_dir(tmp_path, monkeypatch):
    (tmp_path / "zygote_probe.py").write_text(PROBE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _finish(child) -> tuple[int, list[str]]:
    lines = child.stdout.read().decode().splitlines()
    return child.wait(), lines


def test_a_forked_child_is_its_own_process_with_its_own_env_args_and_status(probe_dir):
    first = zygote.spawn("zygote_probe", ["a b", "--x", "3"], _env(PROBE_FLAVOUR="one", OMP_NUM_THREADS="1"))
    code, lines = _finish(first)
    assert code == 3, lines
    seen = json.loads(lines[0])
    assert seen["argv"] == ["a b", "--x", "3"] and seen["name"] == "__main__"
    assert seen["cmdline"] == f"{sys.executable} -m zygote_probe a b --x 3"  # what ps shows: the child's command
    assert Path(seen["cwd"]) == probe_dir and seen["pgid"] == seen["pid"] == first.pid  # its own process group
    assert seen["preloaded"] and seen["ppid"] != os.getpid()  # forked from the zygote, torch already there
    assert seen["threads"] == 1 and seen["flavour"] == "one"
    assert seen["trl_default"] == "ERROR"  # TRL's import-time default, replayed in the child
    assert lines[1] == "to stderr"
    # a variable read when used (OMP_NUM_THREADS) may differ: the same zygote serves it
    second = zygote.spawn("zygote_probe", [], _env(PROBE_FLAVOUR="one", OMP_NUM_THREADS="2"))
    code, lines = _finish(second)
    assert code == 0 and json.loads(lines[0])["threads"] == 2 and json.loads(lines[0])["ppid"] == seen["ppid"]
    # one read at import time may not: another zygote
    third = zygote.spawn("zygote_probe", [], _env(PROBE_FLAVOUR="two", OMP_NUM_THREADS="1"))
    code, lines = _finish(third)
    assert code == 0 and json.loads(lines[0])["flavour"] == "two" and json.loads(lines[0])["ppid"] != seen["ppid"]
    # the child's environment wins over an import's default
    fourth = zygote.spawn("zygote_probe", [], _env(PROBE_FLAVOUR="one", VLLM_LOGGING_LEVEL="DEBUG"))
    assert json.loads(_finish(fourth)[1][0])["trl_default"] == "DEBUG"


def test_an_uncaught_exception_and_a_kill_end_as_in_a_fresh_process(probe_dir):
    code, lines = _finish(zygote.spawn("zygote_probe", ["--raise"], _env()))
    assert code == 1 and lines[-1] == "ValueError: the probe failed" and "Traceback" in "\n".join(lines)
    sleeper = zygote.spawn("zygote_probe", ["--sleep"], _env())
    assert sleeper.stdout.readline()  # it runs
    assert sleeper.poll() is None
    os.killpg(sleeper.pid, signal.SIGKILL)  # what launch() does to a child it gives up on
    assert sleeper.wait() == -signal.SIGKILL
    code, _ = _finish(zygote.spawn("zygote_probe", ["5"], _env()))  # the zygote serves on
    assert code == 5


def test_launch_forks_tops_commands_and_keeps_their_cwd_and_exit_codes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines: list[tuple[str, str]] = []
    wrote, refused = launch([Command(tops_command("problems", "--out", "rel/problems.parquet", "--set", "problems.n=4"),
                                     "problems"),
                             Command(tops_command("verify", "--in", "missing.parquet"), "verify")],
                            lambda name, line: lines.append((name, line)))
    assert wrote.returncode == 0 and (tmp_path / "rel" / "problems.parquet").exists()
    assert refused.returncode == 2 and refused.tail[-1] == "error: missing.parquet: file not found"
    assert not any("plain process" in line for _, line in lines), lines
    assert any(key[0] == os.getpid() for key, z in zygote._ZYGOTES.items() if z is not None)


def test_off_switch_and_gpu_hosts_keep_plain_processes():
    assert not zygote.enabled({"TOPS_ZYGOTE": "0"})
    assert zygote.enabled({}) == (sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl")
                                  and not os.path.exists("/dev/kfd"))
    assert zygote.import_env({"OMP_NUM_THREADS": "1", "TOPS_PARENT_PID": "1", "HF_HOME": "x"}) == {"HF_HOME": "x"}


def test_the_zygote_ends_with_the_process_that_started_it(probe_dir):
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        from tops import zygote
        child = zygote.spawn("zygote_probe", ["--sleep"], {**os.environ, "PYTHONUNBUFFERED": "1"})
        child.stdout.readline()
        z = next(z for z in zygote._ZYGOTES.values() if z is not None)
        print(z.proc.pid, child.pid, z.path, flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True, cwd=probe_dir)
    zygote_pid, child_pid, path = owner.stdout.readline().split()
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 30
    while alive(int(zygote_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(int(zygote_pid)) and not Path(path).exists()
    os.killpg(int(child_pid), signal.SIGKILL)  # the probe has no exit_with_parent of its own (tops.cli does)
