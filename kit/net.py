"""Waiting for what an instance serves: a free port to publish on, and the moment it answers.

>>> import kit
>>> port = kit.free_port()
>>> web = kit.start("busybox", ["httpd", "-f", "-p", "80"], runtime="runc", ports=[f"{port}:80"])
>>> kit.wait_for_port(port, timeout=30)        # something behind 127.0.0.1:port serves it
>>> kit.wait_until(lambda: not kit.ps().empty, timeout=5, what="the instance")   # any condition

Only 127.0.0.1 by default: published ports are bound to loopback (see :mod:`kit.portfwd`).
"""

from __future__ import annotations

import socket

from ._proc import wait_until
from .errors import InvalidSpec

__all__ = ["free_port", "wait_for_port", "wait_until"]

#: How long a connection must stay open before it counts as "answered": a port forwarder (the
#: kit's, which Docker's published ports go through too, or QEMU's user network) accepts at once
#: and closes the connection when nothing listens behind it yet, which takes a few milliseconds;
#: 0.2 s leaves a margin of tens of times that on a busy 2-core host while keeping the wait short.
SETTLE = 0.2


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the kernel picks it), e.g. to publish a service on.

    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _accepts(host: str, port: int, settle: float) -> bool:
    """True once a connection to host:port is accepted and not closed again within ``settle`` s."""
    try:
        with socket.create_connection((host, port), timeout=max(settle, 1.0)) as s:
            s.settimeout(settle)
            try:
                data = s.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                return True  # still open and quiet: a service that waits for the client to speak
            return bool(data)  # a greeting (SSH, MySQL, SMTP...); b"" is a forwarder with nothing behind it
    except OSError:
        return False  # refused, reset or unreachable: not yet


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1", settle: float = SETTLE) -> int:
    """Wait until something serves TCP ``host:port``; return the port.

    A published port is accepted by a forwarder before the service inside listens; the
    forwarder then closes the connection at once. So a port counts as served when a
    connection stays open for ``settle`` seconds or the service speaks first. For a
    protocol-level check (an HTTP page, a Redis PONG), use :func:`wait_until` with it.

    Args:
        port: the TCP port, e.g. the host side of ``ports=["8080:80"]``.
        timeout: seconds to wait in all.
        host: the address to connect to (the kit publishes on 127.0.0.1).
        settle: seconds an accepted connection must stay open (see :data:`SETTLE`).

    Raises:
        KitTimeout: nothing served the port within ``timeout`` seconds.
        InvalidSpec: ``port`` is not a TCP port number.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidSpec(f"port {port!r} is not a TCP port: give a number from 1 to 65535, e.g. kit.free_port()")
    wait_until(lambda: _accepts(host, port, settle), timeout, interval=0.05, what=f"{host}:{port} to be served")
    return port
