"""QEMU's control socket (QMP), with a deadline on every call.

Uses the ``qemu.qmp`` library's synchronous client; any failure (QEMU already
gone, socket missing, deadline passed) returns False rather than raising, since
the caller's next step is always to kill the process anyway.
"""

from __future__ import annotations

from pathlib import Path


def command(path: Path, name: str, timeout: float = 2.0, **args) -> dict | bool:
    """Send one QMP command; its return value, or False when it could not be done in time."""
    if not Path(path).exists():
        return False
    try:
        from qemu.qmp.legacy import QEMUMonitorProtocol
    except ImportError:
        return False
    mon = QEMUMonitorProtocol(str(path))
    try:
        mon.settimeout(timeout)
        mon.connect()
        ret = mon.cmd(name, **args)
        return ret if ret else True
    except Exception:  # QEMU exiting mid-call closes the socket: that is success for quit
        return name == "quit"
    finally:
        try:
            mon.close()
        except Exception:
            pass


def quit(path: Path, timeout: float = 2.0) -> bool:  # noqa: A001
    """Ask QEMU to exit at once (the guest gets no say)."""
    return bool(command(path, "quit", timeout))


def status(path: Path, timeout: float = 2.0) -> str | None:
    """The VM's run state (``running``, ``paused``, ...), or None."""
    r = command(path, "query-status", timeout)
    return r.get("status") if isinstance(r, dict) else None
