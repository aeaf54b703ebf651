"""GNU dd's summary, as the syscall loop reads it: ``dd if=/dev/zero of=/dev/null bs=1 count=N``.

Each record is one read(2) of /dev/zero and one write(2) to /dev/null: two of the cheapest
system calls there are, so the time per record over two is the cost of entering the kernel
(or, under gVisor, the Sentry) and coming back. Run with LC_ALL=C (the numbers are localised).
"""

from __future__ import annotations

import re

from .figure import Figure, need

_RECORDS = re.compile(r"^(\d+)\+0 records out$", re.M)
_COPIED = re.compile(r"^(\d+) bytes.* copied, ([\d.]+(?:e-?\d+)?) s(?:econds)?, ", re.M)
SYSCALLS_PER_RECORD = 2


def _records(text: str) -> list[str]:
    rec = _RECORDS.findall(text)
    need(len(rec) == 1, "dd", "'N+0 records out' line", text)
    return rec


def operations(text: str, argv: list[str]) -> tuple[float, str]:
    """System calls made: two per record copied (its own count)."""
    return float(int(_records(text)[0]) * SYSCALLS_PER_RECORD), "syscall"


def parse(text: str) -> list[Figure]:
    rec, cop = _records(text), _COPIED.findall(text)
    need(len(cop) == 1, "dd", "'... copied, T s, ...' line (run dd with LC_ALL=C)", text)
    n, secs = int(rec[0]), float(cop[0][1])
    need(n > 0 and secs > 0, "dd", "positive record count and time", text)
    calls = n * SYSCALLS_PER_RECORD
    return [Figure("op_time", secs / calls * 1e9, "ns", "syscall"),
            Figure("throughput", calls / secs, "syscalls/s", "syscall")]
