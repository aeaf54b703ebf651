"""Steady state: memory of one idle instance, then N = 1, 2, 4, 8 ... of them, then their disk.

One pass per runtime serves three parts of a study, so every instance
booted (a VM under TCG takes seconds) is measured for all of them:

- ``memory``: the first instance alone, at steady state (host PSS/USS by
  process, cgroup working set, the guest's view for VMs);
- ``density``: after each doubling, total and per-instance memory (the
  instances' own processes, their per-instance monitors apart) and the start
  time of each new instance, until ``max_n`` or a budget is reached; beside
  the PSS sum, gVisor's method (the host's MemAvailable before and after,
  divided by n); with KSM on, once its merging has settled (kit.bench.ksm);
- ``disk``: the bytes each live instance adds, and totals for 1..N instances
  with the shared image formats counted once.
"""

from __future__ import annotations

import time

from .. import runtimes
from ..errors import KitError
from ..instance import Instance
from . import disk, footprint, startup
from .workloads import IDLE


def targets(max_n: int) -> list[int]:
    """1, 2, 4, ... up to ``max_n`` (which is always included).

    >>> targets(6)
    [1, 2, 4, 6]
    """
    out, n = [], 1
    while n < max_n:
        out.append(n)
        n *= 2
    out.append(max(1, max_n))
    return out


def _row(part: str, metric: str, value: float, n: int, repeat: int = 0, component: str = "",
         status: str = "ok") -> dict:
    return {"part": part, "metric": metric, "component": component, "value": float(value), "n": n,
            "repeat": repeat, "status": status}


def steady_state(runtime: str, image: str, *, parts, max_n: int, memory_budget: int, time_budget: float,
                 timeout: float, prefix: str, image_usages: dict, memory_limit=None, tick=None,
                 options: dict | None = None, settle=None) -> list[dict]:
    """Run the steady-state pass for one runtime and image; return partial rows (see :func:`_row`).

    Every instance started here is removed before returning, even on error.

    Args:
        parts: which of ``memory``, ``density``, ``disk`` to record.
        max_n: the most idle instances to run at once.
        memory_budget: stop doubling when the next step's projected host memory would exceed this (bytes).
        time_budget: stop doubling when the next step's projected time would exceed this (seconds; the
            waits of ``settle`` left out).
        prefix: instance names are ``<prefix>-<i>``.
        image_usages: the image's per-format disk usage (from :func:`kit.bench.disk.image_rows`).
        memory_limit: the memory limit each instance gets (e.g. ``"256m"``; a VM's RAM).
        tick: called after each instance starts (progress).
        options: the runtime's own for every instance (e.g. a VM's ``kernel``).
        settle: with KSM on, ``settle(n, pids)`` waits, after each step, until its merging has settled
            and returns its rows (:func:`kit.bench.ksm.measure`), before memory is read.
    """
    rows: list[dict] = []
    lives: list[Instance] = []
    base_used = footprint.host_used()
    t_begin, paused = time.monotonic(), 0.0
    limit = runtimes.get(runtime).idle_limit(memory_limit)

    def start(i: int) -> tuple[Instance, startup.Ready]:
        return startup.start(runtime, image, IDLE, f"{prefix}-{i}", timeout, limit, options=options)

    def all_pids():  # the instances' own processes: their monitors apart (measurement reads the runtime's record)
        return [p for inst in lives for p in footprint.host_pids(inst.backend, inst.state)]

    steps = targets(max_n)
    try:
        for k, target in enumerate(steps):
            started = _start_up_to(target, lives, start, rows, "density" in parts, tick)
            if not lives:
                break
            n = len(lives)
            t_settle = time.monotonic()
            merged = settle(n, all_pids) if settle and "density" in parts else []
            paused += time.monotonic() - t_settle  # KSM's wait is not the instances' start time
            reading = footprint.steady(all_pids)  # partial (a process unreadable): its rows say so
            if n == 1 and "memory" in parts:
                rows += _memory_rows(lives[0], timeout)
            used = footprint.host_used() - base_used
            if "density" in parts:
                rows += _density_rows(lives, reading, used) + merged
            if not started or n >= max_n:
                break
            nxt = steps[k + 1]
            elapsed = time.monotonic() - t_begin - paused
            if max(reading.pss, used) / n * nxt > memory_budget or elapsed + elapsed / n * (nxt - n) > time_budget:
                break
        if "disk" in parts and lives:
            rows += _disk_rows(runtime, lives, image_usages)
    finally:
        for inst in lives:
            startup.remove(inst)
    return rows


def _start_up_to(target: int, lives: list, start, rows: list[dict], record: bool, tick) -> bool:
    """Start idle instances (``start(i)``) into ``lives`` until there are ``target``, each one's start
    time a row when ``record``; False when one failed to start (a failed row says why)."""
    while len(lives) < target:
        i = len(lives)
        try:
            inst, ready = start(i)
        except KitError as e:
            rows.append(_row("density", "failed", 1, n=i + 1, status=f"error: {e}"))
            return False
        lives.append(inst)
        if record:
            rows.append(_row("density", "density_start", ready.after, n=i + 1, repeat=i))
        if tick:
            tick()
    return True


def _memory_rows(inst: Instance, timeout: float) -> list[dict]:
    """The ``memory`` part: one idle instance alone, and for a VM the guest's own view."""
    rows = [_row("memory", r["metric"], r["value"], n=1, component=r["component"], status=r.get("status", "ok"))
            for r in footprint.instance_rows(inst.backend, inst.state)]
    if runtimes.get(inst.runtime).kind == "vm":
        # The measured VM's own view, or a failed row saying why (never another VM's).
        rows += [_row("memory", r["metric"], r["value"], n=1, component=r["component"], status=r.get("status", "ok"))
                 for r in footprint.guest_rows(inst.name, timeout=min(timeout, 60))]
    return rows


def _density_rows(lives: list, reading, used: float) -> list[dict]:
    """The ``density`` part at ``n = len(lives)``: the instances' PSS (total and per instance), the
    host's used memory, their monitors' PSS apart, and their cgroups' working set where every one has it."""
    n = len(lives)
    pss = reading.pss
    ws = [footprint.cgroup_memory(inst.cgroup)[1] for inst in lives]
    rows = [_row("density", "density_pss_total", pss, n=n, status=reading.status),
            _row("density", "density_pss_per_instance", pss / n, n=n, status=reading.status),
            _row("density", "density_host_used", used, n=n),
            _row("density", "density_host_per_instance", used / n, n=n)]
    monitors = footprint.read([p for inst in lives for p in inst.backend.monitor_pids(inst.state)])
    if monitors.procs or monitors.unreadable:
        rows.append(_row("density", "density_monitor_pss_total", monitors.pss, n=n, status=monitors.status))
    rows += [_row("density", r["metric"], r["value"], n=n, component=r["component"], status=r["status"])
             for r in footprint.partial_rows(reading, "density_pss_total")
             + footprint.partial_rows(monitors, "density_monitor_pss_total")]
    if all(w is not None for w in ws):
        rows.append(_row("density", "density_working_set_total", sum(ws), n=n))
    return rows


def _disk_rows(runtime: str, lives: list, image_usages: dict) -> list[dict]:
    """The ``disk`` part: the shared image formats once (a VM: the files it boots from), the bytes each
    live instance adds, and the total for 1..N instances."""
    shared = disk.shared_usage(runtime, image_usages, lives[0].state)
    rows = [_row("disk", "image_shared", shared.allocated, n=len(lives))]
    union = disk.Usage()
    for i, inst in enumerate(lives):
        inst_rows, u = disk.instance_rows(inst.backend, inst.state, shared)
        rows += [_row("disk", r["metric"], r["value"], n=len(lives), repeat=i, component=r["component"])
                 for r in inst_rows]
        union = union.add(u)
        rows.append(_row("disk", "total_for_n", shared.allocated + union.allocated, n=i + 1))
    return rows
