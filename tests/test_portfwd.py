"""The kit's port forwarder on its own: both copy paths carry every byte both ways and count their CPU."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from kit.errors import InvalidSpec
from kit.net import free_port
from kit.portfwd import Forwarder, new_loopback_netns, setns


@pytest.fixture(scope="module")
def echo_ns():
    """A loopback-only namespace with an echo server on 127.0.0.1:PORT inside: (ns path, port)."""
    fd = new_loopback_netns()
    port = 7007
    ready, stop = threading.Event(), threading.Event()
    listener: list[socket.socket] = []

    def serve():
        setns(fd)  # this thread only
        ls = socket.socket()
        ls.bind(("127.0.0.1", port))
        ls.listen(8)
        listener.append(ls)
        ready.set()
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(c,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    yield f"/proc/{os.getpid()}/fd/{fd}", port
    stop.set()
    listener[0].shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
    listener[0].close()
    t.join(5)
    os.close(fd)


def _echo(c: socket.socket) -> None:
    with c:
        while data := c.recv(65536):
            c.sendall(data)


@pytest.mark.parametrize("copy", Forwarder.COPIES)
def test_both_copy_paths_carry_every_byte_and_count_their_cpu(echo_ns, copy):
    ns, inner = echo_ns
    host = free_port()
    fwd = Forwarder(ns, [(host, inner)], copy=copy).start()
    try:
        payload = os.urandom(4 << 20)
        with socket.create_connection(("127.0.0.1", host), timeout=10) as s:
            got = bytearray()
            sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
            sender.start()
            while chunk := s.recv(1 << 16):  # the half-close reaches the server, its EOF comes back
                got += chunk
            sender.join()
        assert bytes(got) == payload
        cpu = fwd.cpu_seconds()
        assert cpu > 0  # 8 MiB through Python threads cannot be free
        assert fwd.cpu_seconds() >= cpu  # finished threads' time is kept, not lost
    finally:
        fwd.stop()


def test_an_unknown_copy_mode_is_refused():
    with pytest.raises(InvalidSpec, match="copy mode 'zero'"):
        Forwarder("/proc/self/ns/net", [(1, 1)], copy="zero")
