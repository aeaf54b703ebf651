"""Memory accounting on real instances of known size: 64 MiB held by dd must show up."""

import secrets

import pytest

import kit
from kit._proc import wait_until
from kit.bench import memory

MIB = 1024 * 1024
# dd reads 64 MiB from /dev/zero into its buffer (every page touched), then blocks
# writing into a pipe nobody reads: the buffer stays resident until the instance ends.
HOLD_64M = ["sh", "-c", "dd if=/dev/zero bs=64M count=1 | sleep 3600"]
CANDIDATES = ["process", "runc", "crun", "lxc", "runsc", "docker"]
USABLE = [r for r in CANDIDATES if kit.runtimes.get(r).availability().available]


@pytest.fixture
def started(names):
    """Start detached instances; conftest's ``names`` force-removes them afterwards, even on failure."""

    def start(runtime, argv, **kw):
        name = f"tbm-{runtime}-{secrets.token_hex(3)}"
        names.append(name)
        kit.start(None if runtime == "process" else "busybox", argv, runtime=runtime, name=name, **kw)
        return kit.api.instance(name)

    return start


def _metrics(rt, inst) -> dict:
    return {(r["metric"], r["component"]): r["value"] for r in memory.instance_rows(rt, inst)}


@pytest.mark.parametrize("runtime", USABLE)
def test_64m_allocation_shows_in_pss_and_working_set(started, runtime):
    rt, inst = started(runtime, HOLD_64M, memory="256m")

    def both():
        m = _metrics(rt, inst)
        return m.get(("pss", ""), 0) >= 64 * MIB and m.get(("cgroup_working_set", ""), 0) >= 64 * MIB and m

    m = wait_until(both, timeout=30, what=f"{runtime}: 64 MiB visible in PSS and cgroup working set")
    assert m[("uss", "")] >= 64 * MIB
    assert m[("rss", "")] >= m[("pss", "")] >= m[("uss", "")]
    # the per-process breakdown adds up to the total
    assert sum(v for (metric, _), v in m.items() if metric == "pss_by_process") == pytest.approx(m[("pss", "")])
    assert m[("pss", "")] < 256 * MIB  # and nothing absurd: the limit holds
    if runtime == "docker":
        # the container's own containerd shim belongs to it, though it is not its descendant
        assert any(c.startswith("containerd-shim") for (metric, c) in m if metric == "pss_by_process")


def test_idle_process_is_small(started):
    rt, inst = started("process", ["sleep", "3600"], memory="64m")
    wait_until(lambda: rt.running(inst) and memory.total_pss(rt.pids(inst)) > 0, 10, what="sleep running")
    pss = memory.settle(lambda: rt.pids(inst), timeout=10)
    assert 0 < pss < 8 * MIB


def test_parse_meminfo():
    info = memory.parse_meminfo("MemTotal:        2000 kB\nMemAvailable:     500 kB\nHugePages_Total:       0\n")
    assert info == {"MemTotal": 2_048_000, "MemAvailable": 512_000, "HugePages_Total": 0}


def test_daemon_rows_only_for_docker():
    assert memory.daemon_rows("runc") == []
    if "docker" in USABLE:
        rows = {r["component"]: r["value"] for r in memory.daemon_rows("docker")}
        assert rows.get("dockerd", 0) > 1 * MIB


@pytest.mark.slow
@pytest.mark.skipif(not kit.runtimes.get("qemu").availability().available, reason="no usable qemu here")
def test_vm_guest_view_sees_64m(started):
    rt, inst = started("qemu", HOLD_64M, memory="256m")
    wait_until(lambda: "command" in inst.phases, 120, what="the guest running its command")

    def guest_used():
        rows = {r["metric"]: r["value"] for r in memory.guest_rows(inst.name, "qemu", "busybox")}
        return rows.get("guest_used", 0) >= 64 * MIB and rows

    rows = wait_until(guest_used, 60, interval=0.5, what="64 MiB used in the guest's own view")
    assert rows["guest_total"] <= 256 * MIB
    host = _metrics(rt, inst)
    assert host[("pss", "")] >= 64 * MIB  # QEMU's resident guest RAM holds it too
    assert any(c.startswith("qemu") for (metric, c) in host if metric == "pss_by_process")
