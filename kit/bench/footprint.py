"""An instance's memory footprint: host-side PSS/USS, cgroup working set, the guest's own view.

(Named apart from the ``memory=`` parameter, a limit, and from the ``memory`` load, a bandwidth test.)

An instance's figures (``pss``, ``uss``, ``rss``, ``pss_by_process``) count its own
processes: the workload and what runs it (runsc's sentry and gofer, QEMU). The
per-instance monitor a runtime keeps beside it (``runc run``, LXC's monitor, the
``runsc run`` CLI, Docker's containerd shim: ``Runtime.monitor_pids``) is reported
apart as ``monitor_pss``, as the shared daemons are as ``daemon_pss``: a user who runs
the same container detached, or through containerd, would not pay for it the same way.

A figure is never silently smaller: a process that exists but cannot be read
(psutil's AccessDenied, e.g. another user's process for a rootless user, or no
PSS figure from the kernel) makes the figure partial, and its row says so in its
``status`` (``partial: ...``, see :data:`kit.bench.metrics.METRICS` ``failed``), so
summaries, which take ``ok`` rows only, leave it out. A process that has ended
meanwhile uses no memory and is not counted.

Definitions of every figure are in :data:`kit.bench.metrics.METRICS`.
"""

from __future__ import annotations

import psutil

from .. import api, usage
from .. import runtimes as _runtimes
from ..errors import KitError
from ..usage import PartialMemory, Reading, cgroup_memory, label, read  # noqa: F401  (this module's figures)


def process_memory(pids) -> list[dict]:
    """PSS, USS and RSS of each process that still exists (pid, name, pss, uss, rss).

    Raises:
        PartialMemory: a process exists but could not be read (see :func:`read` for the figures
            with the reason instead).
    """
    return read(pids).checked().procs


def total_pss(pids) -> int:
    """The PSS of ``pids`` summed.

    Raises:
        PartialMemory: a process could not be read (the sum would be too small).
    """
    return read(pids).checked().pss


def steady(pids_fn, timeout: float = 20.0, tolerance: float = 0.02, gap: float = 0.5) -> Reading:
    """Wait until the PSS of ``pids_fn()`` is steady (:func:`kit.usage.steady`: two readings ``gap`` s
    apart within ``tolerance``).

    Returns the last reading (its ``status`` says whether it is partial). A workload that keeps
    growing is measured as it is at ``timeout``.
    """
    last: list[Reading] = []

    def pss() -> int:
        last[:] = [read(pids_fn())]
        return last[0].pss

    usage.steady(pss, timeout, tolerance, gap)
    return last[0]


def settle(pids_fn, timeout: float = 20.0, tolerance: float = 0.02, gap: float = 0.5) -> int:
    """:func:`steady`'s last reading of PSS (bytes).

    Raises:
        PartialMemory: a process could not be read (the figure would be too small).
    """
    return steady(pids_fn, timeout, tolerance, gap).checked().pss


def split_pids(rt, inst) -> tuple[list[int], list[int]]:
    """(the instance's own host processes, its per-instance monitor's): two disjoint lists.

    Own: ``rt.pids(inst)`` without the monitor. Monitor: ``rt.monitor_pids(inst)``.
    """
    monitors = set(rt.monitor_pids(inst))
    return sorted(set(rt.pids(inst)) - monitors), sorted(monitors)


def host_pids(rt, inst) -> list[int]:
    """The instance's own host processes: what its ``pss`` counts (its monitor left out)."""
    return split_pids(rt, inst)[0]


def _by_name(r: Reading, metric: str) -> list[dict]:
    by_name: dict[str, int] = {}
    for p in r.procs:
        by_name[p["name"]] = by_name.get(p["name"], 0) + p["pss"]
    return [{"metric": metric, "component": k, "value": float(v), "status": r.status}
            for k, v in sorted(by_name.items())]


def instance_rows(rt, inst) -> list[dict]:
    """Every memory metric of one live instance, as (metric, component, value, status) rows.

    ``pss``/``uss``/``rss`` and ``pss_by_process`` (which sums to ``pss``) cover the
    instance's own processes; ``monitor_pss`` (component: process name) its monitor's. When a
    process could not be read, the figures it belongs to have status ``partial: ...`` (which
    process, why), and a ``failed`` row (component: the figure) says so too.
    """
    own_pids, monitor_pids = split_pids(rt, inst)
    own, monitors = read(own_pids), read(monitor_pids)
    rows = [{"metric": m, "component": "", "value": float(own.total(m)), "status": own.status}
            for m in ("pss", "uss", "rss")]
    rows += _by_name(own, "pss_by_process")
    rows += _by_name(monitors, "monitor_pss")
    rows += partial_rows(own, "pss") + partial_rows(monitors, "monitor_pss")
    usage, ws = cgroup_memory(rt.cgroup_path(inst))
    if usage is not None:
        rows.append({"metric": "cgroup_usage", "component": "", "value": float(usage), "status": "ok"})
    if ws is not None:
        rows.append({"metric": "cgroup_working_set", "component": "", "value": float(ws), "status": "ok"})
    return rows


def partial_rows(r: Reading, figure: str) -> list[dict]:
    """One ``failed`` row (component: ``figure``) when ``r`` is partial, saying which processes and why."""
    if not r.unreadable:
        return []
    return [{"metric": "failed", "component": figure, "value": 1.0, "status": f"error: {r.status}"}]


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
    """PSS of the daemons a runtime depends on (dockerd, containerd), one row per daemon (status
    ``partial: ...`` and a ``failed`` row when a daemon's process could not be read, e.g. by a
    rootless user)."""
    names = _runtimes.get(runtime).daemons  # their cost is shared by every instance, reported apart
    found: dict[str, list[int]] = {n: [] for n in names}
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in found:
            found[p.info["name"]].append(p.pid)
    rows = []
    for n, pids in found.items():
        if pids:
            r = read(pids)
            rows.append({"metric": "daemon_pss", "component": n, "value": float(r.pss), "status": r.status})
            rows += partial_rows(r, f"daemon_pss/{n}")
    return rows


def host_used() -> int:
    """The host's MemTotal - MemAvailable, bytes."""
    vm = psutil.virtual_memory()
    return int(vm.total - vm.available)
