"""redis-benchmark --csv (Redis 7): requests/s and latency percentiles per test (SET, GET...)."""

from __future__ import annotations

import csv
import io

from . import Figure, need

COLUMNS = {"p50": "p50_latency_ms", "p95": "p95_latency_ms", "p99": "p99_latency_ms"}


def parse(text: str) -> list[Figure]:
    rows = list(csv.DictReader(io.StringIO(text.strip().replace("\r", "\n"))))
    need(rows and "rps" in rows[0] and "test" in rows[0], "redis-benchmark", "CSV header with test,rps", text)
    need(all(c in rows[0] for c in COLUMNS.values()), "redis-benchmark",
         "p50/p95/p99 columns (Redis >= 7's --csv)", text)
    out = []
    for r in rows:
        test = r["test"].split()[0]
        out.append(Figure("throughput", float(r["rps"]), "requests/s", test))
        out += [Figure(m, float(r[c]), "ms", test) for m, c in COLUMNS.items()]
    return out
