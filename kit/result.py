"""What a run gives back: a :class:`RunResult` with a readable repr."""

from __future__ import annotations

import html
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .errors import ExitError

_REPR_LIMIT = 2000


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def _clip(text: str, limit: int = _REPR_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters; see .stdout)"


@dataclass
class RunResult:
    """The outcome of one run or exec.

    Attributes:
        stdout, stderr: decoded text (undecodable bytes become U+FFFD);
            the exact bytes are in ``stdout_bytes``/``stderr_bytes``.
        exit_code: the command's exit code; 124 when killed at the timeout
            (as coreutils ``timeout``), 137 when killed by SIGKILL.
        oom_killed: the kernel killed it for exceeding its memory limit.
        timed_out: the run was killed at its timeout.
        phases: named timestamps (seconds since the epoch) of the run's
            milestones, e.g. ``launched``, ``started``, ``exited``.
        info: runtime-specific facts (e.g. the VM accelerator and why).
    """

    runtime: str
    image: str | None
    name: str
    command: list[str]
    exit_code: int | None = None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    started_at: float | None = None
    ended_at: float | None = None
    oom_killed: bool = False
    timed_out: bool = False
    detached: bool = False
    #: Output was already echoed into the cell; the repr then does not repeat it.
    streamed: bool = field(default=False, repr=False, compare=False)
    phases: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        return _decode(self.stdout_bytes)

    @property
    def stderr(self) -> str:
        return _decode(self.stderr_bytes)

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> "RunResult":
        """Raise :class:`~kit.errors.ExitError` unless the exit code is 0."""
        if self.exit_code != 0:
            raise ExitError(self)
        return self

    def _status(self) -> str:
        if self.detached and self.exit_code is None:
            return "running (detached)"
        status = f"exit {self.exit_code}"
        if self.oom_killed:
            status += ", killed: out of memory"
        if self.timed_out:
            status += ", killed: timed out"
        return status

    def _when(self) -> str:
        if self.started_at is None:
            return ""
        t = datetime.fromtimestamp(self.started_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        d = self.duration
        return t + (f", {d * 1000:.1f} ms" if d is not None else "")

    def __repr__(self) -> str:
        head = (
            f"<RunResult {self.runtime}:{self.image or '-'} {shlex.join(self.command)!s} "
            f"name={self.name} {self._status()} {self._when()}>"
        )
        parts = [head]
        if self.streamed:
            return head
        if self.stdout:
            parts.append("stdout:\n" + _clip(self.stdout))
        if self.stderr:
            parts.append("stderr:\n" + _clip(self.stderr))
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        e = html.escape
        colour = "#2e7d32" if self.exit_code == 0 else ("#555" if self.exit_code is None else "#c62828")
        rows = [
            ("runtime", self.runtime),
            ("image", self.image or "-"),
            ("name", self.name),
            ("command", shlex.join(self.command)),
            ("status", self._status()),
            ("started", self._when()),
        ]
        rows += [(k, str(v)) for k, v in self.info.items()]
        table = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        out = ""
        for label, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                out += f"<details><summary>{label}</summary><pre>{e(_clip(text))}</pre></details>"
        return (
            f"<div style='border-left:4px solid {colour};padding-left:8px'>"
            f"<table>{table}</table>{out}</div>"
        )
