"""The parser of what the TCP round-trip client prints (:mod:`kit.bench.tools.rtt`): one JSON object,
``{"tool": "tcp-rtt", "n": ..., "warmup": ..., "size": ..., "seconds": ..., "rtt_us": {"p50": ...,
"p95": ..., "p99": ..., "mean": ..., "max": ...}}``.
"""

from __future__ import annotations

import json

from .figure import Figure, ToolOutputError, need


def _doc(text: str) -> dict:
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else None
    except ValueError as e:
        raise ToolOutputError(f"tcp-rtt: output is not its JSON summary ({e})") from None
    need(isinstance(doc, dict) and doc.get("tool") == "tcp-rtt", "tcp-rtt", "JSON summary", text)
    return doc


def operations(text: str, argv: list[str]) -> tuple[float, str]:
    """Round trips made: the timed ones and the warm-up ones before them (all during the run)."""
    doc = _doc(text)
    need(isinstance(doc.get("n"), int) and isinstance(doc.get("warmup"), int), "tcp-rtt", "n and warmup counts",
         text)
    return float(doc["n"] + doc["warmup"]), "round trip"


def parse(text: str) -> list[Figure]:
    """Round trips/s (one connection, one request in flight) and RTT percentiles in ms."""
    doc = _doc(text)
    rtt = doc.get("rtt_us") or {}
    need(all(k in rtt for k in ("p50", "p95", "p99", "mean")) and doc.get("n", 0) > 0 and doc.get("seconds", 0) > 0,
         "tcp-rtt", "n, seconds and rtt_us p50/p95/p99/mean", text)
    return [Figure("throughput", doc["n"] / doc["seconds"], "round trips/s", "rtt"),
            *(Figure(m, rtt[m] / 1000, "ms", "rtt") for m in ("p50", "p95", "p99")),
            Figure("mean_latency", rtt["mean"] / 1000, "ms", "rtt")]
