"""redis-benchmark --csv (Redis 7): requests/s and latency percentiles per test (SET, GET...)."""

from __future__ import annotations

import csv
import io

from .figure import Figure, ToolOutputError, need

COLUMNS = {"p50": "p50_latency_ms", "p95": "p95_latency_ms", "p99": "p99_latency_ms"}


def _rows(text: str) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text.strip().replace("\r", "\n"))))
    need(rows and "rps" in rows[0] and "test" in rows[0], "redis-benchmark", "CSV header with test,rps", text)
    need(all(c in rows[0] for c in COLUMNS.values()), "redis-benchmark",
         "p50/p95/p99 columns (Redis >= 7's --csv)", text)
    return rows


def operations(text: str, argv: list[str]) -> tuple[float, str]:
    """Requests made: ``-n`` (each test makes exactly that many; --csv does not print it) times the
    tests that ran, one after the other (SET, then GET)."""
    tests = _rows(text)
    if "-n" not in argv[:-1]:
        raise ToolOutputError(f"redis-benchmark: no -n COUNT in its command line {' '.join(argv)!r}: "
                              f"the requests it made cannot be counted")
    return float(int(argv[argv.index("-n") + 1]) * len(tests)), "request"


def parse(text: str) -> list[Figure]:
    out = []
    for r in _rows(text):
        test = r["test"].split()[0]
        out.append(Figure("throughput", float(r["rps"]), "requests/s", test))
        out += [Figure(m, float(r[c]), "ms", test) for m, c in COLUMNS.items()]
    return out
