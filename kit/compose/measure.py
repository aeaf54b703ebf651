"""What a running stack costs and serves: first good response, bounded HTTP load, memory, disk.

>>> from kit.compose import measure
>>> measure.first_response("http://127.0.0.1:18080/", timeout=120)     # seconds until a 200
>>> measure.http_load("http://127.0.0.1:18080/", requests=500, concurrency=8)
{'requests': 500, 'concurrency': 8, 'errors': 0, 'seconds': ..., 'rps': ..., 'p50_ms': ..., 'p99_ms': ...}
>>> measure.memory(stack)     # one row per instance: pss, monitor_pss apart
>>> measure.disk(stack)       # image (shared), instance bytes, volumes apart
"""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

from .. import api
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


def memory(stack):
    """One row per instance of the stack: pss (its own host processes) and monitor_pss apart,
    both in bytes, as :func:`kit.bench.memory.instance_rows` measures them after settling."""
    import pandas as pd

    from ..bench import memory as mem

    s = get(stack)
    rows = []
    for name, unit in s.units.items():
        handle = api.get(name)
        rt, inst = handle.backend, handle.state
        mem.settle(lambda: mem.host_pids(rt, inst))
        got = {r["metric"]: r for r in mem.instance_rows(rt, inst) if r["metric"] in ("pss", "uss")}
        monitor = sum(r["value"] for r in mem.instance_rows(rt, inst) if r["metric"] == "monitor_pss")
        rows.append({"instance": name, "services": ", ".join(unit.services), "runtime": unit.runtime,
                     "pss": got.get("pss", {}).get("value", 0.0), "uss": got.get("uss", {}).get("value", 0.0),
                     "monitor_pss": monitor})
    return pd.DataFrame(rows, columns=["instance", "services", "runtime", "pss", "uss", "monitor_pss"])


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
        handle = api.get(name)
        rt, inst = handle.backend, handle.state
        _, usages = dk.image_rows(images.get(unit.image))
        shared = dk.shared_usage(rt.name, usages, inst)
        inst_rows, own = dk.instance_rows(rt, inst, shared)
        rows.append({"instance": name, "part": "image", "component": unit.image, "bytes": float(shared.allocated)})
        rows.append({"instance": name, "part": "instance", "component": "", "bytes": float(own.allocated)})
        rows += [{"instance": name, "part": "volume", "component": r["component"], "bytes": r["value"]}
                 for r in inst_rows if r["metric"] == "volume_allocated"]
    return pd.DataFrame(rows, columns=["instance", "part", "component", "bytes"])
