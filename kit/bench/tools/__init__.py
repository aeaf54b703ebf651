"""One parser per load tool: its raw output in, the figures it reports out.

Each parser takes the tool's complete output (text, or the JSON/CSV the tool writes when asked
for a machine-readable format) and returns :class:`Figure` rows. Output of an unknown layout is
never guessed at: the parser raises :class:`ToolOutputError`, naming the tool and what it missed.

>>> from kit.bench.tools import parse
>>> [f.metric for f in parse("dd", "10+0 records in\\n10+0 records out\\n10 bytes copied, 0.00001 s, 1 MB/s\\n")]
['op_time', 'throughput']
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import KitError


class ToolOutputError(KitError):
    """A load tool printed something its parser does not recognise (or nothing at all)."""


@dataclass(frozen=True)
class Figure:
    """One number a tool reported: metric (see kit.bench.METRICS), value, unit, and which operation."""

    metric: str
    value: float
    unit: str
    component: str = ""

    def row(self) -> dict:
        return {"metric": self.metric, "value": float(self.value), "unit": self.unit, "component": self.component}


def need(cond, tool: str, what: str, text: str) -> None:
    """Raise ToolOutputError unless ``cond``: the tool's output lacks ``what``."""
    if not cond:
        head = " ".join(text.strip().split())[:160]
        raise ToolOutputError(f"{tool}: output has no {what} (unknown layout?): {head!r}")


def parse(tool: str, output: str) -> list[Figure]:
    """The figures in ``output`` of ``tool`` (``sysbench``, ``fio``, ``iperf3``, ``redis-benchmark``, ``dd``,
    ``tcp-rtt``)."""
    from . import dd, fio, iperf3, redis_benchmark, sysbench, tcp_rtt

    parsers = {"sysbench": sysbench.parse, "fio": fio.parse, "iperf3": iperf3.parse,
               "redis-benchmark": redis_benchmark.parse, "dd": dd.parse, "tcp-rtt": tcp_rtt.parse}
    if tool not in parsers:
        raise ToolOutputError(f"no parser for tool {tool!r}: one of {', '.join(parsers)}")
    return parsers[tool](output)
