"""A service's health as Compose keeps it: ``starting``, then ``healthy`` or ``unhealthy``.

One :func:`probe` runs the service's healthcheck once inside its instance and moves its
:class:`Health` by the Compose specification's rules: a pass makes it ``healthy`` (and ends the
start period early); a failure during ``start_period`` does not count, before the service first
passed; after it, ``retries`` failures in a row make it ``unhealthy``, until a pass. ``up`` probes
while it waits (:func:`kit.compose.stack.up`), then a thread of the project keeps probing every
``interval`` so that ``ps`` shows the health as it is now, as ``docker compose ps`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import KitError
from .file import Healthcheck

#: How long an exec into a VM may take, whatever the file's timeout says (a guest under TCG starts slowly).
VM_EXEC_TIMEOUT = 120.0


@dataclass
class Health:
    """One service's health: its state, the failures in a row that count, the last check's output."""

    status: str = "starting"   # starting, healthy, unhealthy
    failures: int = 0          # consecutive failures that count towards retries
    checks: int = 0            # checks run
    last: str = ""             # the last failing check's last line of output (or its exit code)
    passed: bool = False       # passed once: the start period is over


def probe(instance, hc: Healthcheck, health: Health, started: float, vm: bool = False) -> Health:
    """Run ``hc`` once in ``instance`` (started at ``started``, a ``time.time()``) and update ``health``.

    Returns:
        ``health``, updated.
    """
    try:
        r = instance.exec(hc.test, timeout=max(hc.timeout, VM_EXEC_TIMEOUT) if vm else hc.timeout)
        ok, last = r.exit_code == 0, ((r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.exit_code}"])[0]
    except KitError as e:  # timed out, or the instance is gone: a failed check, as Compose counts it
        ok, last = False, str(e)
    health.checks += 1
    if ok:
        health.status, health.failures, health.passed = "healthy", 0, True
        return health
    health.last = last
    if health.passed or time.time() - started >= hc.start_period:
        health.failures += 1
        if health.failures >= hc.retries:
            health.status = "unhealthy"
    return health


def pause(hc: Healthcheck, health: Health, started: float) -> float:
    """Seconds until the next check: ``start_interval`` during the start period, else ``interval``."""
    return hc.start_interval if not health.passed and time.time() - started < hc.start_period else hc.interval
