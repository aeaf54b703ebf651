"""Memory of a live instance: host-side PSS/USS, cgroup working set, the guest's own view.

An instance's figures (``pss``, ``uss``, ``rss``, ``pss_by_process``) count its own
processes: the workload and what runs it (runsc's sentry and gofer, QEMU). The
per-instance monitor a runtime keeps beside it (``runc run``, LXC's monitor, the
``runsc run`` CLI, Docker's containerd shim: ``Runtime.monitor_pids``) is reported
apart as ``monitor_pss``, as the shared daemons are as ``daemon_pss``: a user who runs
the same container detached, or through containerd, would not pay for it the same way.

Definitions of every figure are in :data:`kit.bench.metrics.METRICS`.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from .. import api, cgroups
from .._proc import wait_until
from ..errors import KitError, KitTimeout

#: Daemons whose cost is shared by every instance of a runtime, reported apart.
DAEMONS = {"docker": ("dockerd", "containerd")}


def process_memory(pids) -> list[dict]:
    """PSS, USS and RSS of each process that still exists (pid, name, pss, uss, rss)."""
    out = []
    for pid in sorted(set(pids)):
        try:
            p = psutil.Process(pid)
            info = p.memory_full_info()
            out.append({"pid": pid, "name": label(p), "pss": getattr(info, "pss", info.uss),
                        "uss": info.uss, "rss": info.rss})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def label(p: psutil.Process) -> str:
    """A process's name for a breakdown: its command name, or for a re-executed ``/proc/self/exe``
    (runsc's gofer and sandbox) its argv[0]; a child without argv (gVisor's ptrace stubs) is
    named after its parent."""
    name = p.name()
    if name != "exe":
        return name
    try:
        argv = p.cmdline()
        if argv:
            return argv[0].rsplit("/", 1)[-1]
        parent = p.parent()
        if parent is None:
            return name
        up = label(parent)
        return up if up.endswith(" child") else f"{up} child"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return name


def total_pss(pids) -> int:
    return sum(p["pss"] for p in process_memory(pids))


def _group(path) -> cgroups.Cgroup | None:
    """The kit's Cgroup view of an absolute memory-cgroup directory."""
    if path is None:
        return None
    p = Path(path)
    base = cgroups.ROOT if cgroups.version() == 2 else cgroups.ROOT / "memory"
    try:
        return cgroups.Cgroup(str(p.relative_to(base)))
    except ValueError:
        return None


def cgroup_memory(path) -> tuple[int | None, int | None]:
    """(usage, working set) of the memory cgroup at ``path``; (None, None) without one."""
    group = _group(path)
    if group is None or not group.exists():
        return None, None
    return group.memory_usage(), group.working_set()


def settle(pids_fn, timeout: float = 20.0, tolerance: float = 0.02, gap: float = 0.5) -> int:
    """Wait until the PSS of ``pids_fn()`` is steady (two readings ``gap`` s apart within ``tolerance``).

    Returns the last reading. A workload that keeps growing is measured as it is at ``timeout``.
    """
    last = [total_pss(pids_fn()), time.monotonic()]

    def steady():
        if time.monotonic() - last[1] < gap:
            return False
        now = total_pss(pids_fn())
        prev = last[0]
        last[:] = [now, time.monotonic()]
        return now > 0 and abs(now - prev) <= tolerance * max(now, prev)

    try:
        wait_until(steady, timeout, interval=0.05, what="steady memory")
    except KitTimeout:
        pass
    return last[0]


def split_pids(rt, inst) -> tuple[list[int], list[int]]:
    """(the instance's own host processes, its per-instance monitor's): two disjoint lists.

    Own: ``rt.pids(inst)`` without the monitor. Monitor: ``rt.monitor_pids(inst)``.
    """
    monitors = set(rt.monitor_pids(inst))
    return sorted(set(rt.pids(inst)) - monitors), sorted(monitors)


def host_pids(rt, inst) -> list[int]:
    """The instance's own host processes: what its ``pss`` counts (its monitor left out)."""
    return split_pids(rt, inst)[0]


def _by_name(procs: list[dict], metric: str) -> list[dict]:
    by_name: dict[str, int] = {}
    for p in procs:
        by_name[p["name"]] = by_name.get(p["name"], 0) + p["pss"]
    return [{"metric": metric, "component": k, "value": float(v)} for k, v in sorted(by_name.items())]


def instance_rows(rt, inst) -> list[dict]:
    """Every memory metric of one live instance, as (metric, component, value) rows.

    ``pss``/``uss``/``rss`` and ``pss_by_process`` (which sums to ``pss``) cover the
    instance's own processes; ``monitor_pss`` (component: process name) its monitor's.
    """
    own, monitors = split_pids(rt, inst)
    procs = process_memory(own)
    rows = [{"metric": m, "component": "", "value": float(sum(p[m] for p in procs))} for m in ("pss", "uss", "rss")]
    rows += _by_name(procs, "pss_by_process")
    rows += _by_name(process_memory(monitors), "monitor_pss")
    usage, ws = cgroup_memory(rt.cgroup_path(inst))
    if usage is not None:
        rows.append({"metric": "cgroup_usage", "component": "", "value": float(usage)})
    if ws is not None:
        rows.append({"metric": "cgroup_working_set", "component": "", "value": float(ws)})
    return rows


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per field."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


def guest_meminfo(name: str, timeout: float = 30) -> dict[str, int]:
    """The VM ``name``'s own ``/proc/meminfo``, bytes per field, read by exec into that very VM.

    ``Shmem`` is what the guest's tmpfs holds: a kit VM's writable root lives there, so a file
    written in a VM grows it (and its used memory), not the host's disk.

    Raises:
        KitError: the exec failed, or its output has no ``MemTotal`` and ``MemAvailable``.
    """
    try:
        r = api.exec_(name, ["cat", "/proc/meminfo"], timeout=timeout)
    except (KitError, OSError) as e:
        raise KitError(f"exec into {name!r} failed: {e}") from e
    info = parse_meminfo(r.stdout) if r.exit_code == 0 else {}
    if "MemTotal" not in info or "MemAvailable" not in info:
        said = (r.stderr or r.stdout).strip()[-200:]
        raise KitError(f"cat /proc/meminfo in {name!r} exited {r.exit_code} without MemTotal and "
                       f"MemAvailable: {said or 'no output'}")
    return info


def guest_rows(name: str, timeout: float = 30) -> list[dict]:
    """The VM ``name``'s own view of its memory (:func:`guest_meminfo`) as rows.

    When that fails, one ``failed`` row (component ``guest_view``) says why in its
    ``status``: no other VM is ever booted to stand in for the measured one.
    """
    try:
        info = guest_meminfo(name, timeout)
    except KitError as e:
        return [_guest_failed(str(e))]
    return [{"metric": "guest_used", "component": "", "value": float(info["MemTotal"] - info["MemAvailable"])},
            {"metric": "guest_total", "component": "", "value": float(info["MemTotal"])}]


def _guest_failed(why: str) -> dict:
    return {"metric": "failed", "component": "guest_view", "value": 1.0, "status": f"error: {why}"}


def daemon_rows(runtime: str) -> list[dict]:
    """PSS of the daemons a runtime depends on (dockerd, containerd), one row per daemon."""
    names = DAEMONS.get(runtime, ())
    found: dict[str, list[int]] = {n: [] for n in names}
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in found:
            found[p.info["name"]].append(p.pid)
    return [{"metric": "daemon_pss", "component": n, "value": float(total_pss(pids))}
            for n, pids in found.items() if pids]


def host_used() -> int:
    """The host's MemTotal - MemAvailable, bytes."""
    vm = psutil.virtual_memory()
    return int(vm.total - vm.available)
