"""kit._proc.Pumped: a foreground process's output is pumped by the thread that waits for it (no pump
thread of its own, issue 24), with the same results as a thread gave: every byte in the logs and the
stream, timeouts, a stray holder of the pipes, a process nobody waits for."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kit
from kit._proc import DRAIN_DEADLINE, Pumped


def _pump_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kit-pump"]


def test_a_foreground_wait_pumps_in_its_own_thread_and_starts_none(tmp_path):
    before = len(_pump_threads())
    seen = []
    p = Pumped(["sh", "-c", "echo out; echo err >&2"], tmp_path,
               stream=lambda label, data: seen.append((label, data, threading.get_ident())))
    assert len(_pump_threads()) == before  # none started for it
    assert p.wait(60) == 0
    assert (tmp_path / "stdout.log").read_bytes() == b"out\n"
    assert (tmp_path / "stderr.log").read_bytes() == b"err\n"
    assert sorted((label, data) for label, data, _ in seen) == [("stderr", b"err\n"), ("stdout", b"out\n")]
    assert {tid for _, _, tid in seen} == {threading.get_ident()}  # delivered by the waiter
    assert p.exited_at is not None and p.launched_at <= p.exited_at <= time.time()


def test_more_output_than_a_pipe_holds_before_the_wait_is_all_collected(tmp_path):
    p = Pumped([sys.executable, "-c", "import sys; sys.stdout.write('x' * 1_000_000)"], tmp_path)
    # The child blocks on its full pipe until the wait pumps: the wait still gets every byte.
    assert p.wait(60) == 0
    assert (tmp_path / "stdout.log").stat().st_size == 1_000_000


def test_a_wait_that_times_out_leaves_the_rest_to_a_thread(tmp_path):
    p = Pumped(["sh", "-c", "echo early; read x; echo late"], tmp_path, stdin=subprocess.PIPE)
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(0.3)
    kit.wait_until(lambda: (tmp_path / "stdout.log").exists() and
                   (tmp_path / "stdout.log").read_bytes() == b"early\n", 10, what="the early output in the log")
    assert any(t.is_alive() for t in _pump_threads())  # the pumping went on in the background
    p.proc.stdin.write(b"go\n")
    p.proc.stdin.close()
    assert p.wait(60) == 0
    assert (tmp_path / "stdout.log").read_bytes() == b"early\nlate\n"


def test_a_stray_holder_of_the_pipes_ends_the_wait_after_the_drain_deadline(tmp_path):
    p = Pumped(["sh", "-c", "echo before; sleep 30 & echo after"], tmp_path)
    t0 = time.monotonic()
    assert p.wait(60) == 0
    took = time.monotonic() - t0
    assert took < DRAIN_DEADLINE + 3, took  # the exit is the process's; the sleep keeps only the pipe
    assert p.exited_at - p.launched_at < 3  # the exit as seen, not the pipes' end
    assert (tmp_path / "stdout.log").read_bytes() == b"before\nafter\n"  # written as it came
    p.kill()


def test_output_of_a_process_nobody_waits_for_reaches_the_log_once_released(tmp_path):
    p = Pumped(["sh", "-c", "echo unwaited"], tmp_path)
    kit.wait_until(lambda: p.proc.poll() is not None, 30, what="the process to exit")
    p.release()
    kit.wait_until(lambda: (tmp_path / "stdout.log").exists() and
                   (tmp_path / "stdout.log").read_bytes() == b"unwaited\n", 10, what="the output in the log")
    assert p.wait(10) == 0  # a wait after the release still returns the exit code


def test_two_waiters_of_one_process_both_get_its_exit(tmp_path):
    p = Pumped(["sh", "-c", "read x; echo done"], tmp_path, stdin=subprocess.PIPE)
    codes = []
    other = threading.Thread(target=lambda: codes.append(p.wait(60)))
    other.start()
    kit.wait_until(lambda: p._pump is None, 10, what="the other thread to take the pump")
    p.proc.stdin.write(b"go\n")
    p.proc.stdin.close()
    codes.append(p.wait(60))
    other.join(60)
    assert codes == [0, 0]
    assert (tmp_path / "stdout.log").read_bytes() == b"done\n"


def test_without_pidfd_one_thread_pumps_also_when_a_stray_outlives_the_wait(tmp_path, monkeypatch):
    # Linux < 5.3 has no pidfd: a thread pumps while Popen polls. The pipes outliving the wait must not
    # hand the same pump to a second thread (two threads on one poller would race over its pipes).
    monkeypatch.delattr("os.pidfd_open")
    monkeypatch.setattr("kit._proc.DRAIN_DEADLINE", 0.3)
    before = len(_pump_threads())
    p = Pumped(["sh", "-c", "echo before; sleep 30 & echo after"], tmp_path)
    assert p.wait(60) == 0
    assert len(_pump_threads()) == before + 1  # the one thread, still on the stray's pipe
    assert (tmp_path / "stdout.log").read_bytes() == b"before\nafter\n"
    p.kill()


#: Run in a Python of its own: a count of this process's descriptors would also see other tests' threads
#: (a pump thread left to a stray, a teardown) close theirs meanwhile (it did once under xdist).
_NO_LEAK = """
import gc, os, sys
from pathlib import Path
from kit._proc import Pumped

tmp = Path(sys.argv[1])

def open_fds():
    return len(os.listdir("/proc/self/fd"))

Pumped(["true"], tmp).wait(60)  # a first run: whatever the module opens once
(tmp / "detached").mkdir()
before = open_fds()
for _ in range(5):
    assert Pumped(["sh", "-c", "echo out; echo err >&2"], tmp).wait(60) == 0
    assert Pumped(["sh", "-c", "echo detached"], tmp / "detached", detach=True).proc.wait(60) == 0
    try:
        Pumped(["/nonexistent/kit-test-binary"], tmp)
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("a missing binary launched")
dropped = Pumped(["sh", "-c", "echo unread"], tmp)  # never waited for nor released
dropped.proc.wait(60)
del dropped
gc.collect()
print(before, open_fds())
"""


def test_no_descriptor_is_left_open_by_a_run_a_detached_run_or_a_failed_launch(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_LEAK, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=Path(kit.__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split()
    assert after == before
    assert (tmp_path / "stdout.log").read_bytes() == b"out\n" * 5  # appended, run after run
    assert (tmp_path / "detached" / "stdout.log").read_bytes() == b"detached\n" * 5
