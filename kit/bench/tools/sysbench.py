"""sysbench 1.0 text output (cpu, memory, oltp_*): it has no machine-readable format.

The layout is matched line by line against the labels sysbench 1.0 prints; the throughput line
of the test that ran must be there, and so must the latency block, else ToolOutputError.
"""

from __future__ import annotations

import re

from .figure import Figure, need

_CPU = re.compile(r"^\s*events per second:\s*([\d.]+)\s*$", re.M)
_MEMORY = re.compile(r"^\s*[\d.]+ MiB transferred \(([\d.]+) MiB/sec\)\s*$", re.M)
_OLTP = re.compile(r"^\s*transactions:\s*\d+\s+\(([\d.]+) per sec\.\)\s*$", re.M)
_OLTP_COUNT = re.compile(r"^\s*transactions:\s*(\d+)\s+\(", re.M)
_EVENTS = re.compile(r"^\s*total number of events:\s*(\d+)\s*$", re.M)
_MIB = re.compile(r"^\s*([\d.]+) MiB transferred \(", re.M)
_QUERIES = re.compile(r"^\s*queries:\s*\d+\s+\(([\d.]+) per sec\.\)\s*$", re.M)
_P95 = re.compile(r"^\s*95th percentile:\s*([\d.]+)\s*$", re.M)
_AVG = re.compile(r"^\s*avg:\s*([\d.]+)\s*$", re.M)
_VERSION = re.compile(r"^sysbench 1\.", re.M)


def operations(text: str, argv: list[str]) -> tuple[float, str]:
    """What sysbench counted: transactions (oltp), MiB transferred (memory), else events (cpu)."""
    need(_VERSION.search(text), "sysbench", "'sysbench 1.x' banner", text)
    for rx, unit in ((_OLTP_COUNT, "transaction"), (_MIB, "MiB"), (_EVENTS, "event")):
        if found := rx.findall(text):
            need(len(found) == 1, "sysbench", f"a single count of {unit}s", text)
            return float(found[0]), unit
    need(False, "sysbench", "'total number of events' line", text)


def parse(text: str) -> list[Figure]:
    need(_VERSION.search(text), "sysbench", "'sysbench 1.x' banner", text)
    need("Latency (ms):" in text, "sysbench", "'Latency (ms):' block", text)
    found = [(m, unit, comp) for rx, unit, comp in ((_CPU, "events/s", "cpu"), (_MEMORY, "MiB/s", "memory"),
                                                    (_OLTP, "transactions/s", "transactions"))
             if (m := rx.findall(text))]
    need(len(found) == 1 and len(found[0][0]) == 1, "sysbench", "single throughput line (events per second, "
         "MiB transferred or transactions)", text)
    (value,), unit, comp = found[0]
    out = [Figure("throughput", float(value), unit, comp)]
    if comp == "transactions" and (q := _QUERIES.findall(text)):
        out.append(Figure("throughput", float(q[0]), "queries/s", "queries"))
    p95, avg = _P95.findall(text), _AVG.findall(text)
    need(len(p95) == 1 and len(avg) == 1, "sysbench", "95th percentile and avg latency", text)
    out += [Figure("p95", float(p95[0]), "ms", comp), Figure("mean_latency", float(avg[0]), "ms", comp)]
    return out
