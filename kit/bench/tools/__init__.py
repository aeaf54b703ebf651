"""One parser per load tool: its raw output in, the figures it reports out.

Each parser takes the tool's complete output (text, or the JSON/CSV the tool writes when asked
for a machine-readable format) and returns :class:`Figure` rows. Output of an unknown layout is
never guessed at: the parser raises :class:`ToolOutputError`, naming the tool and what it missed.

>>> from kit.bench.tools import operations, parse
>>> [f.metric for f in parse("dd", "10+0 records in\\n10+0 records out\\n10 bytes copied, 0.00001 s, 1 MB/s\\n")]
['op_time', 'throughput']

:func:`operations` counts what the tool did, from its own counts (its output, or the count it was
told to do), never a rate times a wall time: redis-benchmark runs SET and then GET, each at its own
rate for part of the run, so the sum of the rates times the run's time counts about twice the
requests, and a wall time also holds the tool's start and connection set-up.

>>> operations("dd", "10+0 records in\\n10+0 records out\\n10 bytes copied, 0.00001 s, 1 MB/s\\n", ["dd"])
(20.0, 'syscall')
"""

from __future__ import annotations

from . import dd, fio, iperf3, redis_benchmark, sysbench, tcp_rtt
from .figure import Figure, ToolOutputError, need

__all__ = ["Figure", "ToolOutputError", "need", "parse", "operations", "PARSERS"]

#: The parser module of each tool.
PARSERS = {"sysbench": sysbench, "fio": fio, "iperf3": iperf3, "redis-benchmark": redis_benchmark, "dd": dd,
           "tcp-rtt": tcp_rtt}


def _module(tool: str):
    if tool not in PARSERS:
        raise ToolOutputError(f"no parser for tool {tool!r}: one of {', '.join(PARSERS)}")
    return PARSERS[tool]


def parse(tool: str, output: str) -> list[Figure]:
    """The figures in ``output`` of ``tool`` (``sysbench``, ``fio``, ``iperf3``, ``redis-benchmark``, ``dd``,
    ``tcp-rtt``)."""
    return _module(tool).parse(output)


def operations(tool: str, output: str, argv) -> tuple[float, str]:
    """(how many operations ``tool`` did, what one is), counted by the tool: from ``output``, or from
    its command line ``argv`` where the tool does exactly what it is told and does not print the count
    (redis-benchmark ``-n`` per test). The unit names the operation of the ``cpu_per_op`` rows
    (event, MiB, transaction, syscall, I/O, request, round trip)."""
    return _module(tool).operations(output, list(argv))
