"""Several networks per service on the kit's one-namespace-per-network model.

A kit network is one shared loopback namespace (:mod:`kit.netspace`), and an instance lives in one
namespace. Compose lets a service join several networks (``app`` on ``frontnet`` and ``backnet``), and
what matters there is who can reach whom: ``proxy`` (frontnet only) reaches ``app`` but never ``db``
(backnet only). The kit maps it so:

* each compose network is its own kit network, ``<project>_<net>``;
* a service on several networks *joins* the first it lists (it reaches that network's members by name
  and they reach it), and is *reached* on each other network through a forwarder: in that network's
  namespace, on ``127.0.0.1``, the service's declared ports (``expose`` and the container side of
  ``ports``) are forwarded into the namespace it joined, and a stand-in member (a ``sleep`` named
  ``<instance>-<net>`` with the service's hostname) puts its name in that network's hosts file.

So frontnet's members reach ``app``'s declared ports and nothing else of backnet; ``db`` stays out of
their reach. What the mapping does not give: ``app`` opening connections *to* frontnet's members (a
service reaches the members of the network it joined only). :func:`kit.compose.plan` shows, per
instance, the network it joins and those it is reached on.
"""

from __future__ import annotations

import os
import socket
import threading

from ..portfwd import setns
from .file import Project

#: The image and command of a stand-in member (its name in the hosts file of a network it is reached on).
STAND_IN = ("busybox", ["sleep", "2147483647"])


def service_networks(proj: Project) -> dict[str, list[str]]:
    """``{service: [compose network, ...]}``: the one it joins first; ``[]`` for ``network_mode: none``;
    ``service:NAME`` joins NAME's."""
    out: dict[str, list[str]] = {}

    def of(name, seen=()):
        if name in out:
            return out[name]
        s = proj.services[name]
        mode = s.network_mode or ""
        if mode == "none":
            nets = []
        elif mode.startswith("service:") and mode[8:] not in seen:
            nets = of(mode[8:], seen + (name,))[:1]
        else:
            nets = list(s.networks) or ["default"]
        out[name] = nets
        return nets

    for name in proj.services:
        of(name)
    return out


class Forward:
    """TCP from ``127.0.0.1:PORT`` in one namespace to ``127.0.0.1:PORT`` in another, for each port.

    A socket belongs to the namespace of the thread that made it: the listener is made by a thread
    that entered the listening namespace, each outgoing socket by one that entered the target's.
    """

    def __init__(self, listen_ns: str, target_ns: str, ports):
        self.ports = sorted(set(ports))
        self.listen_fd = os.open(listen_ns, os.O_RDONLY | os.O_CLOEXEC)
        self.target_fd = os.open(target_ns, os.O_RDONLY | os.O_CLOEXEC)
        self.listeners: list[socket.socket] = []
        self.stopped = threading.Event()

    def start(self) -> "Forward":
        made: list = []

        def listen():
            try:
                setns(self.listen_fd)
                for port in self.ports:
                    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    ls.bind(("127.0.0.1", port))
                    ls.listen(64)
                    made.append(ls)
            except OSError as e:
                made.append(e)

        t = threading.Thread(target=listen, daemon=True)
        t.start()
        t.join()
        self.listeners = [x for x in made if isinstance(x, socket.socket)]
        errors = [x for x in made if isinstance(x, OSError)]
        if errors:
            self.stop()
            raise OSError(f"cannot listen in the network's namespace: {errors[0]}")
        for ls in self.listeners:
            threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def _accept(self, ls: socket.socket) -> None:
        port = ls.getsockname()[1]
        while not self.stopped.is_set():
            try:
                client, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, port), daemon=True).start()

    def _serve(self, client: socket.socket, port: int) -> None:
        try:
            setns(self.target_fd)  # this thread only; it ends with the connection
            inner = socket.create_connection(("127.0.0.1", port), timeout=5)
            inner.settimeout(None)
        except OSError:
            client.close()
            return
        threading.Thread(target=_copy, args=(inner, client), daemon=True).start()
        _copy(client, inner)

    def stop(self) -> None:
        self.stopped.set()
        for ls in self.listeners:
            try:
                ls.close()
            except OSError:
                pass
        for fd in (self.listen_fd, self.target_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.listen_fd = self.target_fd = -1


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
