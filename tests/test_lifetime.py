"""Nothing outlives its session: the reaper and the dead-session sweep."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from kit import config, lifetime
from kit._proc import wait_until

CHILD = r"""
import json, sys, kit
kit.start(None, ["sleep", "300"], runtime="process", name="orphan")
rt, inst = kit.api.instance("orphan")
print(json.dumps({"session": kit.config.SESSION_ID, "pid": inst.proc.pid, "state": str(inst.state_dir)}), flush=True)
sys.stdin.read()
"""


def _spawn_owner():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    info = json.loads(p.stdout.readline())
    return p, info


def test_reaper_cleans_up_after_sigkill():
    owner, info = _spawn_owner()
    try:
        assert psutil.pid_exists(info["pid"])
        assert lifetime.owner_alive(info["session"])
        t0 = time.monotonic()
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        wait_until(lambda: not _alive(info["pid"]) and not os.path.exists(info["state"]), timeout=15,
                   what="the reaper removing the orphan")
        assert time.monotonic() - t0 < 15
        assert not lifetime.owner_alive(info["session"])
    finally:
        owner.kill()
        _kill(info["pid"])


def test_sweep_of_dead_sessions_removes_leftovers():
    # A session whose owner is gone and whose reaper never ran (e.g. the machine rebooted).
    session = "deadbeef"
    run_dir = config.home() / "run" / session
    (run_dir / "x").mkdir(parents=True, exist_ok=True)
    (run_dir / "owner.json").write_text(json.dumps({"pid": 999999999, "create_time": 0}))
    leftover = subprocess.Popen(["sleep", "300"], env={**os.environ, lifetime.MARKER: session},
                                start_new_session=True)
    try:
        assert session in lifetime.dead_sessions()
        removed = lifetime.sweep_dead_sessions()
        assert any(f"process {leftover.pid}" in r for r in removed)
        leftover.wait(5)  # raises TimeoutExpired if the sweep left it running
        assert not run_dir.exists()
    finally:
        leftover.kill()


def test_live_sessions_are_not_swept():
    assert config.SESSION_ID not in lifetime.dead_sessions()


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_normal_exit_leaves_no_session_directory(tmp_path):
    code = ("import kit; kit.config.state_dir(); "
            "print(kit.config.SESSION_ID)")  # no instance, so no reaper: only atexit can remove it
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "KIT_HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    session = p.stdout.split()[-1]
    wait_until(lambda: not (tmp_path / "run" / session).exists(), timeout=10, what="the session directory going")
