"""What every tool parser returns and raises: a :class:`Figure` per number, :class:`ToolOutputError`
for output it does not know (see :mod:`kit.bench.tools`)."""

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
