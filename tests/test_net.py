"""kit.free_port, kit.wait_for_port and kit.wait_until: what the notebooks (and users) wait with."""

from __future__ import annotations

import socket
import threading

import pytest

import kit
from kit.errors import InvalidSpec, KitTimeout
from tests.conftest import need, unique


class Server:
    """A TCP server on 127.0.0.1 that handles each connection with ``handle(conn)``."""

    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.handle, self.open = handle, []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.open.append(conn)
            self.handle(conn)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        self.sock.close()
        for c in self.open:
            c.close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    made = []

    def new(handle):
        made.append(Server(handle))
        return made[-1]

    yield new
    for s in made:
        s.close()


def test_public_names():
    assert {"free_port", "wait_for_port", "wait_until", "net"} <= set(kit.__all__)
    assert kit.wait_until is kit.net.wait_until


def test_free_port_can_be_bound_on_loopback():
    port = kit.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if it was not free


def test_wait_for_port_returns_once_a_quiet_service_listens(server):
    srv = server(lambda conn: None)  # accepts and waits for the client, as HTTP servers do
    assert kit.wait_for_port(srv.port, timeout=10) == srv.port


def test_wait_for_port_returns_when_the_service_greets_first(server):
    srv = server(lambda conn: conn.sendall(b"+OK ready\r\n"))
    assert kit.wait_for_port(srv.port, timeout=10) == srv.port


def test_a_forwarder_with_nothing_behind_it_does_not_count(server):
    # It accepts and closes at once, as a port forwarder does while the service inside is not up.
    # settle=1.0 s: the close comes from a thread of this process within milliseconds; a second
    # leaves a wide margin for a loaded 2-core host.
    srv = server(lambda conn: conn.close())
    with pytest.raises(KitTimeout, match=f"127.0.0.1:{srv.port} to be served did not happen within 3 s"):
        kit.wait_for_port(srv.port, timeout=3, settle=1.0)


def test_nothing_listening_times_out_naming_the_port():
    port = kit.free_port()
    with pytest.raises(KitTimeout, match=f"127.0.0.1:{port} to be served"):
        kit.wait_for_port(port, timeout=0.5)


@pytest.mark.parametrize("port", [0, 70000, "80", True, None])
def test_wait_for_port_refuses_what_is_not_a_port(port):
    with pytest.raises(InvalidSpec, match="is not a TCP port"):
        kit.wait_for_port(port, timeout=1)


def test_wait_until_returns_the_truthy_value_or_raises():
    seen = iter([None, 0, "done"])
    assert kit.wait_until(lambda: next(seen), timeout=10, interval=0.001) == "done"
    with pytest.raises(KitTimeout, match="the sky to fall did not happen within 0.1 s"):
        kit.wait_until(lambda: False, timeout=0.1, what="the sky to fall")


def test_wait_for_port_sees_through_the_kits_forwarder(names):
    """A published port accepts at once; it counts only once the service inside listens."""
    need("runc")
    port, name = kit.free_port(), unique("net")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime="runc", name=name, ports=[f"{port}:8080"])
    with pytest.raises(KitTimeout):
        kit.wait_for_port(port, timeout=2, settle=1.0)  # settle: as above, the forwarder closes within ms
    kit.exec(name, ["httpd", "-p", "8080", "-h", "/"])  # busybox httpd daemonizes
    assert kit.wait_for_port(port, timeout=30) == port
