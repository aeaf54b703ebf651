"""A launched process's own CPU time (kit._proc.Popen / Pumped, from its reap with wait4), against
what the process measured itself, while another child of this process is reaped meanwhile (which
RUSAGE_CHILDREN of this process would add); and QEMU's, as a run reports it, against QEMU's times
read from /proc while it ran."""

from __future__ import annotations

import resource
import subprocess
import sys
import threading

import psutil
import pytest

import kit
from kit._proc import Popen, Pumped
from tests.conftest import need, unique

#: Burns ``argv[1]`` CPU seconds, then prints the CPU time it has used by its own clock.
BUSY = ("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < float(sys.argv[1]):\n    pass\n"
        "print(time.process_time())")
#: Interpreter start-up and exit around the child's own clock: imports, teardown (tens of ms here,
#: doubled for a busy 2-core host).
OVERHEAD = 0.15


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Neighbour:
    """Another child of this process, busy for ``seconds`` of CPU and reaped in a thread of its own."""

    def __init__(self, seconds: float):
        self.done = threading.Event()
        self.thread = threading.Thread(target=lambda: (subprocess.run([sys.executable, "-c", BUSY, str(seconds)],
                                                                      capture_output=True, check=True),
                                                       self.done.set()))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(60)


@pytest.mark.parametrize("reap", ["wait", "poll"])
def test_a_process_cpu_time_is_its_own_not_another_child_reaped_meanwhile(tmp_path, reap):
    c0 = _children_cpu()
    with Neighbour(0.4) as other:
        p = Pumped([sys.executable, "-c", BUSY, "0.3"], tmp_path)
        other.thread.join(60)  # the neighbour is reaped while p runs or before it is reaped
        if reap == "poll":
            kit.wait_until(lambda: p.proc.poll() is not None, 60, what="the child to exit")
        p.wait(60)
    assert other.done.is_set()
    own = float((tmp_path / "stdout.log").read_text())
    assert own <= p.cpu_seconds <= own + OVERHEAD, (p.cpu_seconds, own)
    assert _children_cpu() - c0 >= own + 0.35  # what the whole process's children figure would have said


def test_popen_keeps_the_usage_of_a_child_reaped_by_communicate():
    p = Popen([sys.executable, "-c", BUSY, "0.2"], stdout=subprocess.PIPE)
    assert p.cpu_seconds is None  # running: nothing to say yet
    out, _ = p.communicate(timeout=60)
    own = float(out)
    assert own <= p.cpu_seconds <= own + OVERHEAD, (p.cpu_seconds, own)


def test_qemu_cpu_time_of_a_run_is_qemus_own():
    """kit.run's info qemu_cpu_s against QEMU's own times read from /proc every 20 ms while it ran:
    at least the last reading, at most that plus what two CPUs can do in the time left (the last
    reading is at most a poll interval, and the reaping, before the exit; 0.2 s is generous), while
    a neighbour child busy for 1 s is reaped meanwhile and must not count."""
    need("qemu")
    name = unique("own-cpu")
    seen: list[float] = []
    stop = threading.Event()

    def sample():
        proc = None
        while not stop.is_set():
            try:
                proc = proc or psutil.Process(kit.api.get(name).state.proc.pid)
                t = proc.cpu_times()
                seen.append(t.user + t.system)
            except (kit.KitError, AttributeError, psutil.Error):
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with Neighbour(1.0) as other:
            r = kit.run("busybox", ["true"], runtime="qemu", name=name, timeout=300)
            other.thread.join(60)
    finally:
        stop.set()
        sampler.join(10)
    assert r.exit_code == 0 and other.done.is_set() and seen
    cpu = r.info["qemu_cpu_s"]
    assert max(seen) <= cpu <= max(seen) + 0.2, (cpu, max(seen))
