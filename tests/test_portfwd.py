"""The kit's port forwarder on its own: both copy paths carry every byte both ways, and its CPU time
is every thread's, checked against the kernel's own accounting of this process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import kit
from kit.errors import InvalidSpec, KitError
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


# -- its CPU time against the kernel's accounting ---------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(stat: str) -> float:
    """utime + stime (seconds) of a /proc .../stat file."""
    f = open(stat).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / _TICK


def _threads_cpu() -> dict[str, float]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[tid] = _cpu_of(f"/proc/self/task/{tid}/stat")
        except OSError:  # ended meanwhile
            pass
    return out


_CLIENT = r"""
import os, socket, sys, threading
port, short, mib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for _ in range(short):  # many short connections: the accept loop and the socket maker work for each
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x" * 100)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
block = os.urandom(1 << 20)
with socket.create_connection(("127.0.0.1", port)) as s:  # and one long transfer
    def send():
        for _ in range(mib):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    got = 0
    while chunk := s.recv(1 << 16):
        got += len(chunk)
    t.join()
assert got == mib << 20, got
"""


#: An echo server, a thread per connection. Not socat's PIPE: its blocking write into the pipe it
#: alone drains stalls now and then under a bulk stream (both forwarder threads then wait on it).
_ECHO = r"""
import socket, sys, threading
def echo(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
ls = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    threading.Thread(target=echo, args=(ls.accept()[0],), daemon=True).start()
"""


@pytest.fixture(scope="module")
def echo_process_ns():
    """A loopback-only namespace with an echo server on 127.0.0.1:7007 in a process of its own (so
    nothing but the forwarder runs in this process's threads): (ns path, port)."""
    fd = new_loopback_netns()
    ns = f"/proc/{os.getpid()}/fd/{fd}"
    echo = subprocess.Popen(["nsenter", f"--net={ns}", "--", sys.executable, "-c", _ECHO, "7007"], pass_fds=(fd,))
    try:
        yield ns, 7007
    finally:
        echo.terminate()
        echo.wait(10)
        os.close(fd)


def test_cpu_seconds_is_every_thread_of_the_forwarder_as_the_kernel_counts_them(echo_process_ns):
    """Independent measure: the CPU time the kernel charged this process while the forwarder worked,
    minus that of the threads which existed before it started (the client and echo server are other
    processes): what its threads used, those that ended included. 1000 short connections make the
    accept loop and the socket maker about a quarter of it (the connection threads alone gave about
    0.65 of the kernel's figure). A thread's own exit, after its last reading, cannot be counted by
    it: tens of µs per connection thread, about 10 % here, so the figure must reach 0.8 of the
    kernel's; and it can never exceed it (+ two clock ticks per thread that existed before)."""
    ns, inner = echo_process_ns
    host = free_port()
    before, total0 = _threads_cpu(), _cpu_of("/proc/self/stat")
    fwd = Forwarder(ns, [(host, inner)], copy="user").start()
    try:
        kit.wait_until(lambda: _echoes(host), 10, what="the echo server answering through the forwarder")
        subprocess.run([sys.executable, "-c", _CLIENT, str(host), "1000", "32"], check=True, timeout=120)
        kit.wait_until(lambda: not any(t.name.startswith(("kit-portfwd-conn", "kit-portfwd-back"))
                                       for t in threading.enumerate()), 30, what="connection threads ending")
        counted = fwd.cpu_seconds()
        after, total1 = _threads_cpu(), _cpu_of("/proc/self/stat")
    finally:
        fwd.stop()
    old = sum(after.get(tid, cpu) - cpu for tid, cpu in before.items())
    kernel = total1 - total0 - old
    assert kernel > 0.3, kernel  # enough work that clock ticks (10 ms) do not decide
    assert 0.8 * kernel <= counted <= kernel + 2 * len(before) / _TICK + 0.02, (counted, kernel)


def _echoes(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"k")
            return s.recv(1) == b"k"
    except OSError:
        return False


def test_cpu_seconds_fails_loudly_when_a_thread_clock_cannot_be_read(echo_ns, monkeypatch):
    ns, inner = echo_ns
    fwd = Forwarder(ns, [(free_port(), inner)]).start()
    try:
        assert fwd.cpu_seconds() >= 0  # its accept loop and socket maker are running

        def no_clock(ident):
            raise OSError(22, "Invalid argument")

        monkeypatch.setattr(time, "pthread_getcpuclockid", no_clock)
        with pytest.raises(KitError, match="forwarder CPU: the CPU clock of its thread .* cannot be read"):
            fwd.cpu_seconds()
    finally:
        monkeypatch.undo()
        fwd.stop()
