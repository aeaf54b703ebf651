"""Start storms: N instances started at once, their workload run, removed; how many per second, and
what happens to the tail.

One storm (:func:`run`) starts ``n`` threads that each make one ``kit.run`` (a foreground run: the
workload runs to its exit, then the kit removes the instance). The threads wait at a barrier and
are released together (:func:`release`); the storm ends when the last instance is gone. Its
figures (definitions in :data:`kit.bench.metrics.METRICS`): ``storm_wall``, ``storm_starts_per_s``,
``storm_failures`` and ``storm_cpu_per_start`` per storm; ``launch_to_exit`` and ``total`` per
instance, whose median and p99 over the rounds :func:`table` gives per runtime and N.

Bounded: N is at most :data:`MAX_N` and a study's storms start at most :data:`MAX_TOTAL` instances
in all, refused before anything starts (:func:`sizes`, :func:`check_total`). Before each storm the
host must have room for it (:func:`headroom`: memory and PIDs, by a stated estimate); a storm that
has no room, or whose starts failed for want of memory or PIDs, stops that runtime's storms, and
the study keeps what it measured.

A benchmark storms the plain command line with the same :func:`release` and :func:`host_cpu`
(benchmarks/bench_storm.py), so the kit's share of a storm is visible.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import psutil

from .. import api
from ..errors import InvalidSpec, KitError
from .stats import measured

#: The most instances one storm starts at once.
MAX_N = 64
#: The most instances a study's storms start in all (every runtime, size, round and workload).
MAX_TOTAL = 5000
#: Memory a storm leaves the host at least (bytes of MemAvailable), beside its instances' estimate.
RESERVE_MEMORY = 1024**3
#: PIDs a storm leaves the host at least, beside its instances' estimate.
RESERVE_PIDS = 2000
#: What one instance is expected to need, by runtime kind: (bytes of memory, PIDs). A VM needs its
#: guest's RAM beside this. Rough on purpose: a storm is refused when it would come near the host's
#: limits, it is not a prediction.
ESTIMATE = {"process": (8 * 1024**2, 4), "container": (64 * 1024**2, 32), "sandbox": (160 * 1024**2, 64),
            "vm": (96 * 1024**2, 16)}
#: Words of an error that say the host ran out of memory or PIDs.
EXHAUSTED = ("resource temporarily unavailable", "cannot allocate memory", "out of memory", "oom",
             "too many processes", "pids.max", "no space left", "eagain", "enomem")


def sizes(value) -> tuple[int, ...]:
    """The storm sizes of a study: whole numbers 1..:data:`MAX_N`, as a sorted tuple.

    Raises:
        InvalidSpec: none given, not a whole number, or past the cap.
    """
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else \
        [value] if isinstance(value, int) else list(value)
    out = []
    for v in items:
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise InvalidSpec(f"storm size {v!r} is not a whole number: give e.g. storm=[1, 4, 16]") from None
        if n != float(v) or not 1 <= n <= MAX_N:
            raise InvalidSpec(f"storm size {v!r} must be a whole number from 1 to {MAX_N} (the cap on "
                              f"instances started at once)")
        out.append(n)
    if not out:
        raise InvalidSpec("no storm size given: give e.g. storm=[1, 4, 16]")
    return tuple(sorted(set(out)))


def check_total(cells) -> int:
    """The instances ``cells`` (each with its size at ``[-1]``) start in all.

    Raises:
        InvalidSpec: more than :data:`MAX_TOTAL`, before anything starts.
    """
    total = sum(int(c[-1]) for c in cells)
    if total > MAX_TOTAL:
        raise InvalidSpec(f"these storms would start {total} instances, more than the cap of {MAX_TOTAL}: "
                          f"fewer sizes, rounds (repeat) or runtimes")
    return total


def headroom(kind: str, n: int, vm_memory: int | None = None) -> str | None:
    """None when the host has room for a storm of ``n`` instances of ``kind``, else why not (memory and
    PIDs left after :data:`ESTIMATE` and the reserves)."""
    memory, pids = ESTIMATE.get(kind, ESTIMATE["container"])
    memory += (vm_memory or 0) if kind == "vm" else 0
    free = psutil.virtual_memory().available
    if free < RESERVE_MEMORY + n * memory:
        return (f"{free / 2**20:.0f} MiB available, a storm of {n} needs about {n * memory / 2**20:.0f} MiB beside "
                f"the {RESERVE_MEMORY / 2**20:.0f} MiB reserve")
    limit = min(_int("/proc/sys/kernel/pid_max"), _int("/proc/sys/kernel/threads-max"))
    used = _tasks()
    if limit - used < RESERVE_PIDS + n * pids:
        return (f"{limit - used} PIDs left of {limit}, a storm of {n} needs about {n * pids} beside the "
                f"{RESERVE_PIDS} reserve")
    return None


def _int(path: str) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 1 << 22


def _tasks() -> int:
    """Threads on the host now (each takes a PID)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return len(psutil.pids())


def exhausted(status: str) -> bool:
    """Whether a failed start's error says the host ran out of memory or PIDs."""
    s = status.lower()
    return any(w in s for w in EXHAUSTED)


def host_cpu() -> float:
    """Seconds of CPU time the whole host has spent busy (user, nice, system, irq, softirq over every
    CPU, from ``/proc/stat``; resolution 1/USER_HZ per CPU)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass
class Released:
    """What :func:`release` returns: the release moment (epoch seconds), and per thread the moment
    its call returned and what it returned (or the exception it raised)."""

    at: float
    ended: list[float] = field(default_factory=list)
    results: list = field(default_factory=list)


def release(n: int, call: Callable[[int], object], timeout: float) -> Released:
    """Run ``call(i)`` for i in 0..n-1 in ``n`` threads, released together once every one of them is
    waiting at a barrier; return when all have returned (each within ``timeout`` seconds of the release,
    else :class:`KitTimeout`-like failure in its place)."""
    gate = threading.Barrier(n + 1)
    out = Released(0.0, [math.nan] * n, [None] * n)

    def one(i: int) -> None:
        gate.wait()
        try:
            out.results[i] = call(i)
        except Exception as e:  # noqa: BLE001  (each start's failure is its own row)
            out.results[i] = e
        out.ended[i] = time.time()

    threads = [threading.Thread(target=one, args=(i,), name=f"kit-storm-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    while gate.n_waiting < n:  # every thread at the gate: the release is one moment
        time.sleep(0.0005)
    out.at = time.time()
    gate.wait()
    deadline = time.monotonic() + timeout
    try:
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:  # interrupted: the started runs still end (each has its timeout) and remove themselves
        for t in threads:
            t.join(timeout)
    for i, t in enumerate(threads):
        if t.is_alive():
            out.results[i] = KitError(f"storm start {i} did not return within {timeout:g} s")
    return out


def run(runtime: str, image: str, workload, n: int, prefix: str, timeout: float, memory=None,
        **options) -> list[dict]:
    """One storm of ``n`` foreground runs of ``workload`` (run to its exit) on ``runtime``: rows of the
    storm's figures and of each instance's (``n`` = the storm's size, ``repeat`` = the instance);
    ``options`` go to each ``kit.run`` (e.g. ``read_only``, ``harden``)."""
    names = [f"{prefix}-{i}" for i in range(n)]
    api.wait_until_quiet()  # nothing of an earlier storm still being removed
    cpu0 = host_cpu()

    def start(i: int):
        return api.run(image, workload.command(), runtime=runtime, name=names[i], timeout=timeout, memory=memory,
                       **options)

    got = release(n, start, timeout + 60)
    # each instance is gone when its removal ended (None: it had none pending, its run failed and was
    # removed on the spot, before its call returned)
    gone = [api.wait_for_teardown(name, timeout=timeout) or got.ended[i] for i, name in enumerate(names)]
    gone = [t if math.isfinite(t) else time.time() for t in gone]
    cpu = host_cpu() - cpu0
    rows, failures = [], 0
    for i, r in enumerate(got.results):
        status = _status(r, timeout)
        base = {"part": "storm", "component": "", "n": n, "repeat": i, "status": status}
        if status != "ok":
            failures += 1
            rows.append({**base, "metric": "failed", "value": 1.0})
        if isinstance(r, BaseException):
            continue
        rows.append({**base, "metric": "launch_to_exit", "value": r.phases["exited"] - r.phases["requested"]})
        rows.append({**base, "metric": "total", "value": gone[i] - got.at})
    wall = max(gone) - got.at
    ok = n - failures
    base = {"part": "storm", "component": "", "n": n, "repeat": 0, "status": "ok"}
    rows += [{**base, "metric": "storm_wall", "value": wall},
             {**base, "metric": "storm_starts_per_s", "value": ok / wall},
             {**base, "metric": "storm_failures", "value": float(failures)}]
    if ok:
        rows.append({**base, "metric": "storm_cpu_per_start", "value": cpu / ok})
    return rows


def _status(r, timeout: float) -> str:
    if isinstance(r, BaseException):
        return f"error: {type(r).__name__}: {r}"
    if r.timed_out:
        return f"timeout after {timeout:g} s"
    if r.exit_code != 0:
        tail = (r.stderr.strip().splitlines() or [""])[-1][:200]
        return f"exit {r.exit_code}: {tail}".rstrip(": ")
    return "ok"


def stopped(rows: list[dict]) -> str | None:
    """Why a runtime's storms stop after these rows: every start failed, or one failed for want of
    memory or PIDs; None to go on."""
    failed = [r["status"] for r in rows if r["metric"] == "failed"]
    starts = [r for r in rows if r["metric"] == "launch_to_exit"]
    if failed and not starts:
        return f"every start of the storm failed: {failed[0][:200]}"
    short = [s for s in failed if exhausted(s)]
    return f"the host ran out: {short[0][:200]}" if short else None


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Per runtime (and image, workload) and storm size: rounds, starts per second (median of the rounds
    and their range), median and p99 of launch_to_exit over every instance of those rounds (p99: the
    value 99 % of them do not exceed, linear interpolation: with fewer than 100 instances it lies
    between the two largest), failures, host CPU per start."""
    d = df[df["part"] == "storm"]
    ok = measured(d)
    out = []
    for (image, rt, w, n), g in ok.groupby(["image", "runtime", "workload", "n"], sort=True):
        per = g[g["metric"] == "storm_starts_per_s"]["value"]
        l2e = g[g["metric"] == "launch_to_exit"]["value"].to_numpy()
        cpu = g[g["metric"] == "storm_cpu_per_start"]["value"]
        fails = d[(d["image"] == image) & (d["runtime"] == rt) & (d["workload"] == w) & (d["n"] == n)
                  & (d["metric"] == "storm_failures") & ~d["warmup"]]["value"]
        out.append({"runtime": rt, "kind": g["kind"].iloc[0], "image": image, "workload": w, "N": int(n),
                    "rounds": len(per), "starts/s": per.median(), "starts/s min": per.min(),
                    "starts/s max": per.max(),
                    "median ms": float(np.median(l2e)) * 1e3 if l2e.size else math.nan,
                    "p99 ms": float(np.quantile(l2e, 0.99)) * 1e3 if l2e.size else math.nan,
                    "failures": int(fails.sum()), "CPU ms/start": cpu.median() * 1e3})
    return pd.DataFrame(out)
