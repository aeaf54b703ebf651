"""A small TCP request/response client: the ``latency`` load's generator, whose output
:mod:`kit.bench.tools.tcp_rtt` parses.

What it measures: over ONE TCP connection (TCP_NODELAY), it sends ``size`` bytes and waits until
the same ``size`` bytes come back from an echo server (``socat ... PIPE`` in the instance), one
round trip at a time, for ``seconds`` or ``count`` round trips, after ``warmup`` unrecorded ones.
Each round trip is timed with ``time.perf_counter_ns`` around the send and the complete reply, so a
figure is the time a small request takes to reach the service and its answer to come back,
through whatever lies between: loopback, the kit's forwarder, QEMU's user network.
The client is Python: its own part (a send, a recv, the clock; ~10-20 µs on this machine kind) is
the same on every path, so differences between paths are the path's. It is a child process,
pinned like the other host-side load tools, and never shares a GIL with the kit's forwarder.

    python -m kit.bench.tools.rtt HOST PORT [--seconds S] [--count N] [--size B] [--warmup W]

prints one JSON object: ``{"tool": "tcp-rtt", "n": ..., "warmup": ..., "size": ..., "seconds": ...,
"rtt_us": {"p50": ..., "p95": ..., "p99": ..., "mean": ..., "max": ...}}``. The package
:mod:`kit.bench.tools` does not import this module (only its parser), so ``python -m`` runs it once.
"""

from __future__ import annotations

import argparse
import json
import socket
import time


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` (0-100) percentile of ``sorted_values``, nearest-rank (a value that was measured)."""
    if not sorted_values:
        raise ValueError("no values")
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def round_trips(host: str, port: int, seconds: float = 2.0, count: int = 10**6, size: int = 64,
                warmup: int = 100, timeout: float = 10.0) -> dict:
    """Measure round trips against an echo server; the summary the command line prints."""
    msg = b"k" * size
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(size)
        view = memoryview(buf)
        clock = time.perf_counter_ns
        rtts: list[int] = []
        end = None
        for i in range(warmup + count):
            if i == warmup:
                end = time.monotonic() + seconds
            elif end is not None and time.monotonic() >= end:
                break
            t0 = clock()
            s.sendall(msg)
            got = 0
            while got < size:
                n = s.recv_into(view[got:])
                if n == 0:
                    raise ConnectionError(f"the echo server at {host}:{port} closed the connection")
                got += n
            if i >= warmup:
                rtts.append(clock() - t0)
    if not rtts:
        raise ConnectionError("no round trip was measured")
    if bytes(buf) != msg:
        raise ConnectionError(f"the server at {host}:{port} does not echo what it receives")
    rtts.sort()
    us = [r / 1000 for r in rtts]
    return {"tool": "tcp-rtt", "n": len(us), "warmup": warmup, "size": size, "seconds": sum(us) / 1e6,
            "rtt_us": {"p50": percentile(us, 50), "p95": percentile(us, 95), "p99": percentile(us, 99),
                       "mean": sum(us) / len(us), "max": us[-1]}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kit.bench.tools.rtt", description=__doc__.split("\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--count", type=int, default=10**6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=100)
    a = ap.parse_args(argv)
    try:
        out = round_trips(a.host, a.port, a.seconds, a.count, a.size, a.warmup)
    except OSError as e:
        raise SystemExit(f"tcp-rtt: {a.host}:{a.port}: {e}") from None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
