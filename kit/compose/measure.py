"""What a running stack costs and serves: first good response, bounded HTTP load, memory, disk.

>>> from kit.compose import measure
>>> measure.first_response("http://127.0.0.1:18080/", timeout=120)     # seconds until a 200
>>> measure.http_load("http://127.0.0.1:18080/", requests=500, concurrency=8)
{'requests': 500, 'concurrency': 8, 'errors': 0, 'seconds': ..., 'rps': ..., 'p50_ms': ..., 'p99_ms': ...}
>>> measure.memory(stack)     # one row per instance: pss, monitor_pss apart, partial says what is not whole
>>> measure.disk(stack)       # image (shared), instance bytes, volumes apart
"""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

from .._proc import wait_until
from ..errors import InvalidSpec
from .stack import get


def _check(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
        raise InvalidSpec(f"url {url!r}: the kit loads only http://127.0.0.1:PORT/... (loopback)")
    return url


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def first_response(url: str, timeout: float = 300, since: float | None = None) -> float:
    """Seconds from ``since`` (a ``time.time()``, default now) until ``url`` answers 200.

    Raises:
        KitTimeout: no 200 within ``timeout`` seconds.
    """
    t0 = time.time() if since is None else since
    _check(url)

    def ok():
        try:
            return _get(url, 5)[0] == 200
        except OSError:
            return False

    wait_until(ok, timeout, interval=0.1, what=f"a 200 from {url}")
    return time.time() - t0


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def http_load(url: str, requests: int = 1000, concurrency: int = 8, timeout: float = 30) -> dict:
    """A bounded load: exactly ``requests`` GETs of ``url`` by ``concurrency`` client threads,
    one new connection each (as independent browsers would).

    Returns:
        requests, concurrency, errors (non-200 or failed), seconds (wall time), rps (good
        responses per second), p50_ms, p99_ms (latency of good responses), latencies_ms.
    """
    if int(requests) < 1 or int(concurrency) < 1:
        raise InvalidSpec(f"requests ({requests}) and concurrency ({concurrency}) must be at least 1")
    _check(url)
    requests, concurrency = int(requests), min(int(concurrency), int(requests))
    left = [requests]
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            t = time.perf_counter()
            try:
                good = _get(url, timeout)[0] == 200
            except OSError:
                good = False
            dt = time.perf_counter() - t
            with lock:
                if good:
                    latencies.append(dt * 1000)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker, name=f"kit-load-{i}", daemon=True) for i in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"requests": requests, "concurrency": concurrency, "errors": errors[0], "seconds": wall,
            "rps": len(latencies) / wall if wall > 0 else float("nan"),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "latencies_ms": latencies}


#: The columns of :func:`memory`'s table, each with the figure of :func:`kit.bench.footprint.instance_rows`
#: it comes from: ``pss`` and ``uss`` are one reading of the instance's own processes (a ``failed``
#: row names it ``pss``), ``monitor_pss`` sums its monitor's processes.
MEMORY_FIGURES = {"pss": "pss", "uss": "pss", "monitor_pss": "monitor_pss"}


def memory_row(rows: list[dict]) -> dict:
    """The memory table's figures of one instance, from its :func:`kit.bench.footprint.instance_rows`.

    A figure some of whose processes could not be read (a row with status ``partial: ...``, or a
    ``failed`` row naming it) is NaN, never the smaller sum of what could be read: a total or a plot
    over the table then cannot pass for the whole (sum with ``skipna=False``). ``partial`` says which
    figures and why, and is ``""`` when every figure is whole.

    Returns:
        pss, uss, monitor_pss (bytes) and partial.

    >>> memory_row([{"metric": "pss", "component": "", "value": 5e6, "status": "ok"},
    ...             {"metric": "uss", "component": "", "value": 4e6, "status": "ok"}])
    {'pss': 5000000.0, 'uss': 4000000.0, 'monitor_pss': 0.0, 'partial': ''}
    """
    why: dict[str, str] = {}
    for r in rows:
        status = str(r.get("status", "ok"))
        if r["metric"] == "failed" and r["component"] in MEMORY_FIGURES.values():
            why.setdefault(r["component"], status.removeprefix("error: "))
        elif r["metric"] in ("pss", "uss", "monitor_pss") and status.startswith("partial"):
            why.setdefault(MEMORY_FIGURES[r["metric"]], status)
    out = {}
    for column, figure in MEMORY_FIGURES.items():
        values = [r["value"] for r in rows if r["metric"] == column]
        out[column] = float("nan") if figure in why else float(sum(values))
    out["partial"] = "; ".join(f"{', '.join(c for c, f in MEMORY_FIGURES.items() if f == figure)}: {text}"
                               for figure, text in why.items())
    return out


def memory(stack):
    """One row per instance of the stack: pss (its own host processes) and monitor_pss apart,
    both in bytes, as :func:`kit.bench.footprint.instance_rows` measures them once the instance's
    PSS is steady; a figure that is not whole is NaN and ``partial`` says why (:func:`memory_row`)."""
    import pandas as pd

    from ..bench import footprint as mem

    s = get(stack)
    rows = []
    for name, unit in s.units.items():
        rt, inst = unit.instance.backend, unit.instance.state  # what the bench's figures read
        mem.steady(lambda: mem.host_pids(rt, inst))  # waits only: the figures come from the rows below
        rows.append({"instance": name, "services": ", ".join(unit.services), "runtime": unit.runtime,
                     **memory_row(mem.instance_rows(rt, inst))})
    return pd.DataFrame(rows, columns=["instance", "services", "runtime", "pss", "uss", "monitor_pss", "partial"])


def disk(stack):
    """Bytes on disk of the stack, one row per instance and part: ``image`` (the formats its
    runtime reads, shared by every instance of that image), ``instance`` (its own writable bytes),
    and each ``volume`` apart (component: the volume or host directory)."""
    import pandas as pd

    from .. import images
    from ..bench import disk as dk

    s = get(stack)
    rows = []
    for name, unit in s.units.items():
        rt, inst = unit.instance.backend, unit.instance.state  # what the bench's figures read
        _, usages = dk.image_rows(images.get(unit.image))
        shared = dk.shared_usage(rt.name, usages, inst)
        inst_rows, own = dk.instance_rows(rt, inst, shared)
        rows.append({"instance": name, "part": "image", "component": unit.image, "bytes": float(shared.allocated)})
        rows.append({"instance": name, "part": "instance", "component": "", "bytes": float(own.allocated)})
        rows += [{"instance": name, "part": "volume", "component": r["component"], "bytes": r["value"]}
                 for r in inst_rows if r["metric"] == "volume_allocated"]
    return pd.DataFrame(rows, columns=["instance", "part", "component", "bytes"])
