"""Nothing outlives its session: the reaper and the dead-session sweep."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kit import config, lifetime
from kit._proc import wait_until

CHILD = r"""
import json, sys, kit
kit.start(None, ["sleep", "300"], runtime="process", name="orphan")
_h = kit.api.get("orphan")
rt, inst = _h.backend, _h.state
print(json.dumps({"session": kit.config.SESSION_ID, "pid": inst.proc.pid, "state": str(inst.state_dir)}), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A KIT_HOME of the test's own: no other session (of this suite or another) is seen or swept."""
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    return tmp_path


def _spawn_owner(home):
    """A separate kit session in ``home`` owning one detached process; returns (owner, its info)."""
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "KIT_HOME": str(home)})
    info = json.loads(p.stdout.readline())
    return p, info


def test_reaper_cleans_up_after_sigkill(home):
    owner, info = _spawn_owner(home)
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


def _dead_session(home, session):
    """A session directory whose owner is gone (no such pid) and whose reaper never ran."""
    run_dir = home / "run" / session
    (run_dir / "x").mkdir(parents=True)
    (run_dir / "owner.json").write_text(json.dumps({"pid": 999999999, "create_time": 0}))
    return run_dir


def test_sweep_of_dead_sessions_removes_leftovers(home):
    # A session whose owner is gone and whose reaper never ran (e.g. the machine rebooted).
    session = "dead" + secrets.token_hex(4)
    run_dir = _dead_session(home, session)
    leftover = subprocess.Popen(["sleep", "300"], env={**os.environ, lifetime.MARKER: session},
                                start_new_session=True)
    try:
        assert lifetime.dead_sessions() == [session]
        removed = lifetime.sweep_dead_sessions()
        assert f"{session}: process {leftover.pid}" in removed
        assert f"{session}: directory {run_dir}" in removed
        leftover.wait(5)  # raises TimeoutExpired if the sweep left it running
        assert not run_dir.exists()
        assert lifetime.dead_sessions() == [] and lifetime.leftovers(session) == []
    finally:
        leftover.kill()
        leftover.wait(5)


def test_live_sessions_are_not_swept(home):
    """A session whose owner lives, and one being set up right now, are left alone; a dead one is not."""
    owner, info = _spawn_owner(home)
    try:
        starting = home / "run" / ("new" + secrets.token_hex(4))
        starting.mkdir()  # no owner.json yet: a session in the middle of its first start
        dead = "dead" + secrets.token_hex(4)
        _dead_session(home, dead)
        assert lifetime.dead_sessions() == [dead]  # not the live owner's, not the starting one
        lifetime.sweep_dead_sessions()
        assert _alive(info["pid"]) and os.path.exists(info["state"]) and starting.is_dir()
        assert not (home / "run" / dead).exists()
        os.utime(starting, (0, 0))  # the same for another session: long dead
        assert lifetime.dead_sessions() == [starting.name]
    finally:
        owner.kill()
        owner.wait(10)
        wait_until(lambda: not _alive(info["pid"]), timeout=15, what="the reaper removing the orphan")
        _kill(info["pid"])


def test_the_own_session_never_counts_as_dead(home):
    """Even with its owner file gone and its directory old. In a home of its own with no other kit
    process in it: another session there (e.g. a spawned owner's import-time sweep) would take this
    stand-in for a dead session and sweep this very process's instances and cgroups, since a
    session's processes and cgroups are global, not per KIT_HOME."""
    own = home / "run" / config.SESSION_ID
    own.mkdir(parents=True)
    os.utime(own, (0, 0))  # older than the ten minutes a start may take
    assert config.SESSION_ID not in lifetime.dead_sessions()
    other = home / "run" / ("old" + secrets.token_hex(4))
    other.mkdir()
    os.utime(other, (0, 0))
    assert lifetime.dead_sessions() == [other.name]  # the same state in another session's name: dead


def test_a_session_directory_that_goes_while_listed_is_not_an_error(home, monkeypatch):
    """Sessions end at any moment: one that removes its directory while dead_sessions looks is skipped."""
    going = home / "run" / ("end" + secrets.token_hex(4))
    going.mkdir(parents=True)
    real_stat = Path.stat

    def stat(self, *a, **kw):
        st = real_stat(self, *a, **kw)
        if self == going and os.path.isdir(going):
            going.rmdir()  # right after the listing saw it: its owner's normal exit removes it
        return st

    monkeypatch.setattr(Path, "stat", stat)
    assert lifetime.dead_sessions() == []
    assert not going.exists()


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
