"""Kill a real notebook kernel with SIGKILL: nothing of its session may remain (issue 6)."""

import os
import signal
import time

import pytest

import kit
from kit import lifetime
from kit._proc import wait_until
from tests.conftest import EXPECTED_HERE, need, skipped_by_env

jupyter_client = pytest.importorskip("jupyter_client")

SETUP = """
import kit
_session = kit.config.SESSION_ID
_started = []
for _rt in {runtimes!r}:
    kit.start("busybox", ["sleep", "300"], runtime=_rt, name="left-" + _rt)
    _started.append(_rt)
if "qemu" in _started:  # a VM restored from its template (issue 14): its QEMU goes, the template stays
    kit.start("busybox", ["sleep", "300"], runtime="qemu", start="snapshot", name="left-qemu-warm")
# A kit network with a member: its holder (a Docker container here) must go with the session too.
kit.networks.create("left-net")
kit.start("busybox", ["sleep", "300"], runtime="runc", name="left-net-member", network="left-net")
# A named volume in use (written to): the sweep leaves it, data and all, with nothing of it mounted.
kit.start("busybox", ["sh", "-c", "echo kept > /d/f; exec sleep 300"], runtime="runc", name="left-vol-user",
          volumes=["{vol}:/d"])
kit.wait_until(lambda: kit.volumes.inspect("{vol}")["size"] > 4096, 10, what="the volume's write")
print(_session, flush=True)
"""

#: How each instance shows in ``lifetime.leftovers`` before the kill: by its name (runtime state,
#: containers, cgroups), or, for the host-process runtimes, by its process.
SEEN_AS = {"process": "(sleep)", "qemu": "(qemu-system"}


def _runtimes(with_vm: bool) -> list[str]:
    """The expected runtimes, each proven available (a missing one fails, unless KIT_SKIP_RUNTIMES names it)."""
    chosen = [r for r in EXPECTED_HERE if (with_vm or r != "qemu") and r not in skipped_by_env()]
    for r in chosen:
        need(r)
    return chosen


def _execute(kc, code, timeout=240):
    """Run ``code`` in the kernel; return its stdout; fail on an error."""
    out = []
    msg_id = kc.execute(code)
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "error":
            pytest.fail("kernel error: " + "\n".join(content["traceback"][-3:]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(5))
def test_sigkill_of_kernel_leaves_nothing(attempt, record_property):
    # One VM per suite run: a TCG boot is slow, and the reaper path is the same.
    runtimes = _runtimes(with_vm=attempt == 0)
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ})
    kc = km.client()
    kc.start_channels()
    session = None
    vol = f"left-vol-{os.getpid()}-{attempt}"
    try:
        kc.wait_for_ready(timeout=60)
        session = _execute(kc, SETUP.format(runtimes=runtimes, vol=vol)).split()[-1]
        before = lifetime.leftovers(session)
        for rt in runtimes:  # every instance is there before the kill: the sweep has something to do
            mark = SEEN_AS.get(rt, f"left-{rt}")
            assert any(mark in x for x in before), (rt, mark, before)
        assert any("--net-left-net" in x for x in before), before  # the network's holder
        if "qemu" in runtimes:  # the cold VM and the restored one
            assert sum("(qemu-system" in x for x in before) == 2, before
        t0 = time.monotonic()
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        wait_until(lambda: not lifetime.leftovers(session), timeout=15, interval=0.2,
                   what=f"the reaper removing session {session}'s instances")
        elapsed = time.monotonic() - t0
        data = kit.volumes.root() / vol / "data"
        assert (data / "f").read_text() == "kept\n"  # the volume outlives the session
        assert str(data) not in open("/proc/mounts").read()
        kit.volumes.rm(vol)  # the dead session's marker does not hold it
        record_property("cleanup_seconds", round(elapsed, 2))
        print(f"session {session} ({', '.join(runtimes)}) cleaned up in {elapsed:.2f} s")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        if session:
            lifetime.sweep(session)
        if vol in kit.volumes.names():
            kit.volumes.rm(vol)
