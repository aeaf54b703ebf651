"""iperf3 -J (client side): the received throughput of a TCP test, in Gbit/s."""

from __future__ import annotations

import json

from .figure import Figure, ToolOutputError, need


def _end(text: str) -> dict:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ToolOutputError(f"iperf3: output is not JSON ({e}): run the client with -J") from None
    need(isinstance(doc, dict), "iperf3", "JSON object", text)
    if doc.get("error"):
        raise ToolOutputError(f"iperf3: {doc['error']}")
    return doc.get("end") or {}


def operations(text: str, argv: list[str]) -> tuple[float, str]:
    """MiB received (iperf3's own byte count at the receiver)."""
    recv = _end(text).get("sum_received") or {}
    need("bytes" in recv, "iperf3", "end.sum_received.bytes", text)
    return recv["bytes"] / 2**20, "MiB"


def parse(text: str) -> list[Figure]:
    end = _end(text)
    recv = end.get("sum_received") or {}
    need("bits_per_second" in recv, "iperf3", "end.sum_received.bits_per_second", text)
    out = [Figure("throughput", recv["bits_per_second"] / 1e9, "Gbit/s", "tcp")]
    sent = end.get("sum_sent") or {}
    if "retransmits" in sent:
        out.append(Figure("retransmits", float(sent["retransmits"]), "count", "tcp"))
    return out
