"""fio --output-format=json: IOPS and completion-latency percentiles per direction."""

from __future__ import annotations

import json

from .figure import Figure, ToolOutputError, need

PERCENTILES = {"p50": "50.000000", "p95": "95.000000", "p99": "99.000000"}


def _doc(text: str) -> dict:
    start = text.find("{")  # fio may print warnings before the JSON document
    try:
        doc = json.loads(text[start:]) if start >= 0 else None
    except ValueError as e:
        raise ToolOutputError(f"fio: output is not JSON ({e}): run it with --output-format=json") from None
    need(isinstance(doc, dict) and doc.get("jobs"), "fio", "'jobs' list", text)
    return doc


def operations(text: str, argv: list[str]) -> tuple[float, str]:
    """I/Os completed, reads and writes of every job (fio's own total_ios)."""
    ios = [job[d]["total_ios"] for job in _doc(text)["jobs"] for d in ("read", "write")
           if isinstance(job.get(d), dict) and "total_ios" in job[d]]
    need(ios, "fio", "read/write total_ios", text)
    return float(sum(ios)), "I/O"


def parse(text: str) -> list[Figure]:
    doc = _doc(text)
    out = []
    for job in doc["jobs"]:
        for direction in ("read", "write"):
            d = job.get(direction)
            if not d or not d.get("total_ios"):
                continue
            need("iops" in d and "clat_ns" in d, "fio", f"{direction} iops and clat_ns", text)
            comp = direction if len(doc["jobs"]) == 1 else f"{job.get('jobname', '')}-{direction}"
            out.append(Figure("throughput", float(d["iops"]), "IOPS", comp))
            pct = d["clat_ns"].get("percentile") or {}
            need(all(k in pct for k in PERCENTILES.values()), "fio", f"{direction} clat percentiles 50/95/99",
                 text)
            out += [Figure(m, pct[k] / 1e6, "ms", comp) for m, k in PERCENTILES.items()]
    need(out, "fio", "job with completed reads or writes", text)
    return out
