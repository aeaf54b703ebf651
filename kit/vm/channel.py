"""The host end of a VM's channels: a listening unix socket per channel, one reader thread each.

QEMU connects to each socket as it starts; every chunk is handed to a callback
*as it arrives*, so the host's clock stamps the guest's milestones live.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

#: Longest unix socket path (sun_path is 108 bytes, with its NUL).
MAX_PATH = 107


class Channel:
    """One listening socket and the thread that accepts QEMU and reads until EOF.

    Args:
        path: where to listen.
        on_data: called with each chunk, in the reader thread.
        on_close: called once when QEMU's end closes (or never connected).
    """

    def __init__(self, path: Path, on_data: Callable[[bytes], None],
                 on_close: Callable[[], None] | None = None):
        self.path = Path(path)
        if len(os.fsencode(self.path)) > MAX_PATH:
            raise ValueError(f"socket path too long: {self.path}")
        self.on_data, self.on_close = on_data, on_close
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(1)
        self.conn: socket.socket | None = None
        self.connected = threading.Event()
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, alive: Callable[[], bool], accept_timeout: float) -> None:
        """Accept and read in a thread; give up accepting once ``alive()`` is false or at the deadline."""
        self._thread = threading.Thread(target=self._run, args=(alive, accept_timeout), daemon=True,
                                        name=f"kit-vm-{self.path.name}")
        self._thread.start()

    def _run(self, alive, accept_timeout: float) -> None:
        deadline = time.monotonic() + accept_timeout
        self.listener.settimeout(0.05)
        try:
            while self.conn is None:
                try:
                    self.conn, _ = self.listener.accept()
                except socket.timeout:
                    if not alive() or time.monotonic() > deadline:
                        return
                except OSError:
                    return
            self.connected.set()
            self.conn.settimeout(None)
            while True:
                try:
                    chunk = self.conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                self.on_data(chunk)
        finally:
            self._close_listener()
            self.closed.set()
            if self.on_close is not None:
                self.on_close()

    def send(self, data: bytes) -> bool:
        """Write to the guest; False when QEMU is not (or no longer) connected."""
        if self.conn is None:
            return False
        with self._send_lock:
            try:
                self.conn.sendall(data)
                return True
            except OSError:
                return False

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _close_listener(self) -> None:
        try:
            self.listener.close()
        except OSError:
            pass
        try:
            self.path.unlink()
        except OSError:
            pass

    def close(self) -> None:
        """Drop both ends and the socket file (idempotent)."""
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                self.conn.close()
            except OSError:
                pass
        self._close_listener()


class LineRecords:
    """Splits a byte stream into text lines; calls ``on_line(line, t)`` with the arrival time."""

    def __init__(self, on_line: Callable[[str, float], None]):
        self.on_line = on_line
        self.buf = b""

    def __call__(self, chunk: bytes) -> None:
        t = time.time()
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.on_line(line.decode("utf-8", "replace").rstrip("\r"), t)
