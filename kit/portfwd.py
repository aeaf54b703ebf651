"""Publish a container's TCP port on 127.0.0.1 with a small in-process forwarder.

Containers run in their own network namespace with only a loopback device,
so nothing outside can reach them. :class:`Forwarder` listens on
``127.0.0.1:HOST`` in the host's namespace and, for each connection, opens a
socket *inside the container's namespace* to ``127.0.0.1:CONT`` and copies
bytes both ways. A socket belongs to the namespace of the thread that created
it, so one helper thread calls ``setns(CLONE_NEWNET)`` (libc through ctypes:
Python 3.11 has no ``os.setns``) and creates every inner socket; the other
threads stay in the host's namespace.

>>> fwd = Forwarder("/proc/1234/ns/net", [(8080, 80)]).start()
>>> fwd.stop()
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import queue
import socket
import struct
import threading
import time

from .errors import InvalidSpec, KitError, StartFailed

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace ``fd`` refers to."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def new_loopback_netns() -> int:
    """Create a network namespace with only ``lo`` (up); return an fd that keeps it alive.

    The namespace is made by a short-lived thread, so the caller's own
    namespace never changes. Close the fd to let the namespace go.
    """
    out: dict = {}

    def make():
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            _loopback_up()
            out["fd"] = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            out["error"] = e

    t = threading.Thread(target=make, name="kit-netns")
    t.start()
    t.join(10)
    if "fd" not in out:
        raise StartFailed(f"cannot create a network namespace: {out.get('error', 'timed out')}; the kit needs root")
    return out["fd"]


def _loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack("16sH14x", ifr)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


class Forwarder:
    """Forward ``127.0.0.1:host`` on the host to ``127.0.0.1:cont`` inside a network namespace.

    Args:
        netns: path of the target namespace (``/proc/<pid>/ns/net``), opened once
            at :meth:`start`, so the forwarder keeps working whatever the pid becomes.
        ports: (host port, container port) pairs.
        connect_timeout: seconds to wait for the inner connection.
        copy: how bytes cross: ``"splice"`` (socket -> pipe -> socket in the kernel, the default)
            or ``"user"`` (recv/sendall through Python: the path before splice, kept so
            benchmarks/bench_forwarder.py can measure both).

    :meth:`cpu_seconds` is the CPU time every one of its threads used (the namespace's socket maker,
    each port's accept loop, each connection's two copy threads; finished and live), and the rootless
    socket helper's where there is one, so a benchmark can tell port publishing from the isolation's
    own cost.
    """

    COPIES = ("splice", "user")

    def __init__(self, netns: str, ports: list[tuple[int, int]], connect_timeout: float = 5.0,
                 copy: str = "splice"):
        if copy not in self.COPIES:
            raise InvalidSpec(f"forwarder copy mode {copy!r}: one of {', '.join(self.COPIES)}")
        self.netns = netns
        self.ports = list(ports)
        self.connect_timeout = connect_timeout
        self.copy = copy
        self._cpu_done = 0.0                # CPU seconds of its threads that ended
        self._cpu_live: set[int] = set()    # pthread ids of its threads still running
        self._helper = None                 # kit.userns.NetnsSockets, when one makes the inner sockets
        self._cpu_lost: str | None = None   # why a part of the CPU time could not be read
        self._listeners: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._nsfd: int | None = None

    def start(self) -> "Forwarder":
        """Bind every host port and start serving.

        Raises:
            InvalidSpec: a host port is taken.
            StartFailed: the namespace cannot be entered.
        """
        try:
            self._nsfd = os.open(self.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise StartFailed(f"cannot open network namespace {self.netns}: {e.strerror}; "
                              f"the container exited before its ports could be published") from None
        maker = threading.Thread(target=self._counted, args=(self._socket_maker,), name="kit-portfwd-ns",
                                 daemon=True)
        maker.start()
        self._threads.append(maker)
        try:
            for host, cont in self.ports:
                ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    ls.bind(("127.0.0.1", host))
                except OSError:
                    ls.close()
                    raise InvalidSpec(f"port {host} on 127.0.0.1 is already in use: choose another host port") from None
                ls.listen(64)
                self._listeners.append(ls)
                t = threading.Thread(target=self._counted, args=(self._accept, ls, cont), name=f"kit-portfwd-{host}",
                                     daemon=True)
                t.start()
                self._threads.append(t)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listeners and every open connection; idempotent."""
        self._stopped.set()
        self._requests.put(None)
        for ls in self._listeners:
            _close(ls)
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            _close(c)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self._listeners.clear()
        if self._nsfd is not None:
            os.close(self._nsfd)
            self._nsfd = None

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) every thread of the forwarder spent, those still running included,
        plus the rootless socket helper process's.

        Raises:
            KitError: a thread's CPU clock (or the helper's) cannot be read: the figure would be short.
        """
        with self._lock:  # held while reading: a thread leaves _cpu_live (under it) before it ends
            if self._cpu_lost:
                raise KitError(self._cpu_lost)
            threads = self._cpu_done + sum(_thread_cpu(tid) for tid in self._cpu_live)
            helper = self._helper
        if helper is None:
            return threads
        try:
            return threads + helper.cpu_seconds()
        except OSError as e:
            raise KitError(f"forwarder CPU: {e}") from None

    def _counted(self, fn, *args) -> None:
        """Run ``fn(*args)`` in this thread and add the thread's CPU time to :meth:`cpu_seconds`."""
        tid = threading.get_ident()
        with self._lock:
            self._cpu_live.add(tid)
        try:
            fn(*args)
        finally:
            spent = time.thread_time()
            with self._lock:
                self._cpu_live.discard(tid)
                self._cpu_done += spent

    # -- threads -----------------------------------------------------------
    def _socket_maker(self) -> None:
        """Live in the target namespace; hand out sockets created there."""
        helper = None
        try:
            setns(self._nsfd)
            error = None
        except OSError as e:
            error = e
            if e.errno == errno.EPERM and os.geteuid() != 0:  # a user namespace owns it (kit.userns)
                from .userns import NetnsSockets

                try:
                    helper, error = NetnsSockets(self._nsfd), None
                except OSError as e2:
                    error = e2
                with self._lock:
                    self._helper = helper
        while True:
            reply = self._requests.get()
            if reply is None:
                if helper is not None:
                    try:  # its last reading: it ends with close
                        spent, lost = helper.cpu_seconds(), None
                    except OSError as e:
                        spent, lost = 0.0, f"forwarder CPU: {e}"
                    with self._lock:
                        self._cpu_done += spent
                        self._cpu_lost = self._cpu_lost or lost
                        self._helper = None
                    helper.close()
                return
            if error is not None:
                reply.put(error)
                continue
            try:
                reply.put(helper.socket() if helper else socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            except OSError as e:
                reply.put(e)

    def _inner_socket(self) -> socket.socket:
        reply: queue.Queue = queue.Queue()
        self._requests.put(reply)
        got = reply.get(timeout=self.connect_timeout)
        if isinstance(got, Exception):
            raise got
        return got

    def _accept(self, ls: socket.socket, cont: int) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = ls.accept()
            except OSError:
                return  # listener closed by stop()
            threading.Thread(target=self._counted, args=(self._serve, client, cont), daemon=True,
                             name=f"kit-portfwd-conn-{cont}").start()

    def _serve(self, client: socket.socket, cont: int) -> None:
        try:
            inner = self._inner_socket()
            inner.settimeout(self.connect_timeout)
            inner.connect(("127.0.0.1", cont))
            inner.settimeout(None)
        except (OSError, queue.Empty):
            _close(client)  # nothing listens inside (yet): the client sees the connection close
            return
        with self._lock:
            if self._stopped.is_set():
                _close(client)
                _close(inner)
                return
            self._conns.update((client, inner))
        for s in (client, inner):
            # Request/response protocols (Redis, MySQL) write replies in pieces: with Nagle's
            # algorithm a piece waits for the ACK of the previous one, which the peer delays.
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        back = threading.Thread(target=self._counted, args=(_pipe, inner, client, self.copy), daemon=True,
                                name=f"kit-portfwd-back-{cont}")
        back.start()
        _pipe(client, inner, self.copy)
        back.join()
        with self._lock:
            self._conns.discard(client)
            self._conns.discard(inner)
        _close(client)
        _close(inner)


def _pipe(src: socket.socket, dst: socket.socket, copy: str = "splice") -> None:
    """Copy until EOF, then half-close, so request/response protocols see the end.

    ``splice``: the bytes go socket -> pipe -> socket with splice(2); they never enter Python, and
    the thread holds no GIL while it copies. ``user``: recv/sendall through Python (the path before
    splice). benchmarks/bench_forwarder.py measures both (results/load/forwarder.md).
    """
    try:
        if copy == "user":
            _copy_loop(src, dst)
        else:
            _splice_loop(src, dst)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


#: Bytes one splice moves at most (the pipe is grown to this where the kernel allows it).
_CHUNK = 1 << 18


def _copy_loop(src: socket.socket, dst: socket.socket) -> None:
    while data := src.recv(65536):
        dst.sendall(data)


def _splice_loop(src: socket.socket, dst: socket.socket) -> None:
    if not hasattr(os, "splice"):  # not Linux: copy through user space
        _copy_loop(src, dst)
        return
    r, w = os.pipe()
    try:
        try:
            fcntl.fcntl(w, 1031, _CHUNK)  # F_SETPIPE_SZ
        except OSError:
            pass
        s_in, s_out = src.fileno(), dst.fileno()
        while True:
            n = os.splice(s_in, w, _CHUNK)
            if n == 0:
                return
            while n:
                n -= os.splice(r, s_out, n)
    finally:
        os.close(r)
        os.close(w)


def _thread_cpu(ident: int) -> float:
    """CPU seconds of the running thread ``ident`` (``threading.get_ident()``) of this process.

    Raises:
        KitError: no per-thread CPU clock here (a 0 would make the forwarder look free).
    """
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError) as e:
        raise KitError(f"forwarder CPU: the CPU clock of its thread {ident} cannot be read ({e}); "
                       f"per-thread CPU clocks (pthread_getcpuclockid) are needed to measure it") from None


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
