"""QEMU's control socket (QMP), with a deadline on every call.

Plain blocking socket I/O (:class:`Monitor`), no asyncio: ``qemu.qmp``'s synchronous
wrapper runs an event loop of its own and fails where one already runs (a Jupyter
kernel's main thread), so a VM's graceful quit silently became a kill in notebooks.
:func:`command` and its callers return False on any failure (QEMU already gone, socket
missing, deadline passed) rather than raising, since the caller's next step is always
to kill the process anyway.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path


def command(path: Path, name: str, timeout: float = 2.0, **args) -> dict | bool:
    """Send one QMP command; its return value, or False when it could not be done in time."""
    if not Path(path).exists():
        return False
    try:
        mon = Monitor(path, timeout)
    except (OSError, ValueError, RuntimeError):
        return False
    try:
        ret = mon.cmd(name, **args)
        return ret if ret else True
    except (OSError, ValueError, RuntimeError):  # QEMU exiting mid-call closes the socket: that is success for quit
        return name == "quit"
    finally:
        mon.close()


def quit(path: Path, timeout: float = 2.0) -> bool:  # noqa: A001
    """Ask QEMU to exit at once (the guest gets no say)."""
    return bool(command(path, "quit", timeout))


def status(path: Path, timeout: float = 2.0) -> str | None:
    """The VM's run state (``running``, ``paused``, ...), or None."""
    r = command(path, "query-status", timeout)
    return r.get("status") if isinstance(r, dict) else None


class Monitor:
    """One synchronous QMP connection, every read under the deadline given.

    Commands raise :class:`RuntimeError` with QEMU's reason; socket errors and timeouts pass.
    """

    def __init__(self, path: Path, timeout: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
            self.reader = self.sock.makefile("rb")
            self.events: list[dict] = []
            self._read()  # the greeting
            self.cmd("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def _read(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("QEMU closed its QMP socket")
        return json.loads(line)

    def cmd(self, name: str, **args):
        """Run one command; its return value."""
        msg = {"execute": name, **({"arguments": args} if args else {})}
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{name}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def event(self, deadline: float) -> dict:
        """The next event (raises TimeoutError at the monotonic ``deadline``)."""
        if self.events:
            return self.events.pop(0)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no QMP event in time")
        self.sock.settimeout(left)
        return self._read()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
