"""What a study runs: run-to-exit commands, services with a readiness probe, idle instances.

>>> parse("true").argv
('true',)
>>> parse("idle").kind
'idle'
>>> parse("httpd").command(8080)
['busybox', 'httpd', '-f', '-p', '8080']
"""

from __future__ import annotations

import re
import shlex
import socket
from dataclasses import dataclass, field

from ..errors import InvalidSpec

KINDS = ("exit", "service", "idle")


@dataclass(frozen=True)
class Workload:
    """One workload of a study.

    Attributes:
        name: short label used in the results (``true``, ``idle``, ``httpd``).
        argv: the command. ``{port}`` is replaced by the port the run publishes
            (the same number on 127.0.0.1 and inside); ``{bind}`` by the address
            to listen on (127.0.0.1 for the bare process, which shares the host's
            network, else 0.0.0.0); ``{listen}`` by ``bind:port`` on the host and
            ``port`` elsewhere.
        kind: ``exit`` (runs to completion), ``service`` (ready when the probe
            succeeds) or ``idle`` (a long sleep, for steady-state memory).
        tcp: ready when 127.0.0.1:port answers: True for "accepts and keeps the
            connection open", or bytes to send, then ready once any reply comes.
            (A port forwarder, Docker's or the kit's, accepts before the
            service listens, so a bare connect proves little.)
        log: ready when this regular expression appears in stdout or stderr.
        probe: ready when this command, run inside with exec, exits 0.
    """

    name: str
    argv: tuple[str, ...]
    kind: str = "exit"
    tcp: bool | bytes = False
    log: str | None = None
    probe: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidSpec(f"workload kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.argv:
            raise InvalidSpec(f"workload {self.name!r} has no command: give e.g. 'true' or 'echo hello'")
        if self.kind == "service" and not (self.tcp or self.log or self.probe):
            raise InvalidSpec(f"service workload {self.name!r} needs a readiness probe: tcp=True, log= or probe=")
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        if self.probe is not None:
            object.__setattr__(self, "probe", tuple(str(a) for a in self.probe))

    @classmethod
    def exit(cls, name: str, argv) -> "Workload":
        return cls(name, tuple(argv), "exit")

    @classmethod
    def service(cls, name: str, argv, tcp: bool | bytes = False, log: str | None = None, probe=None) -> "Workload":
        """A long-running command that is ready once its probe succeeds."""
        return cls(name, tuple(argv), "service", tcp=tcp, log=log, probe=tuple(probe) if probe else None)

    @property
    def needs_port(self) -> bool:
        return bool(self.tcp) or any(k in a for a in self.argv for k in ("{port}", "{listen}"))

    def command(self, port: int | None = None, host_network: bool = False) -> list[str]:
        """The argv of one run, with ``{port}``, ``{bind}`` and ``{listen}`` filled in."""
        if port is None:
            return list(self.argv)
        bind = "127.0.0.1" if host_network else "0.0.0.0"
        listen = f"{bind}:{port}" if host_network else str(port)
        return [a.replace("{port}", str(port)).replace("{bind}", bind).replace("{listen}", listen)
                for a in self.argv]

    def ready(self, instance, port: int | None) -> bool:
        """Has this run (a :class:`kit.Instance`) become ready? (Called repeatedly until it is, or a
        deadline passes.)"""
        if self.kind == "idle":
            # Ready once its command has started, as the host sees it (the same event for every
            # runtime: see started_at), and still running.
            return started_at(instance.phases) is not None and instance.status == "running"
        if self.tcp and port is not None and not _answers(port, self.tcp):
            return False
        if self.log:
            out = instance.logs()
            if not re.search(self.log.encode(), out.stdout_bytes + out.stderr_bytes):
                return False
        if self.probe:
            try:
                code = instance.exec(list(self.probe), timeout=5).exit_code
            except Exception:  # not up enough to exec into yet
                return False
            if code != 0:
                return False
        return True


def started_at(phases: dict) -> float | None:
    """When the instance's command was started, as the host saw it: the readiness of an idle
    instance. Phase ``started`` (every runtime's start step stamps it once the command runs: the
    process's exec succeeded, an OCI container left "created", LXC's log says its init started,
    Docker's start call returned), for a VM ``command`` (its init says it execs the command, seconds
    after QEMU starts); None before."""
    return phases.get("command", phases.get("started"))


def _answers(port: int, send: bool | bytes) -> bool:
    """Does 127.0.0.1:port serve? With bytes: send them and wait (1 s) for any reply.

    Without: the connection must stay open 50 ms (a forwarder whose backend is
    not listening yet accepts, then closes at once).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
            if isinstance(send, bytes):
                s.sendall(send)
                s.settimeout(1.0)
                return bool(s.recv(1))
            s.settimeout(0.05)
            return s.recv(1) != b""
        except socket.timeout:
            return not isinstance(send, bytes)  # still open and silent: a server awaiting its client
        except OSError:
            return False


#: Named workloads. ``busybox`` runs all of them; the host runs them too
#: (``busybox httpd`` needs the host's static busybox, as the built-in image does).
PRESETS: dict[str, Workload] = {
    "true": Workload.exit("true", ["true"]),
    "echo": Workload.exit("echo", ["echo", "hello"]),
    "idle": Workload("idle", ("sleep", "3600"), "idle"),
    "httpd": Workload.service("httpd", ["busybox", "httpd", "-f", "-p", "{listen}"],
                              tcp=b"HEAD / HTTP/1.0\r\n\r\n"),
    "redis": Workload.service("redis", ["redis-server", "--port", "{port}", "--bind", "{bind}",
                                        "--protected-mode", "no", "--save", ""], tcp=b"PING\r\n"),
}

IDLE = PRESETS["idle"]


def parse(spec) -> Workload:
    """A Workload from a preset name, a command line string, or a Workload.

    Raises:
        InvalidSpec: empty or unparsable.
    """
    if isinstance(spec, Workload):
        return spec
    if not isinstance(spec, str):
        raise InvalidSpec(f"workload {spec!r} is not a string or Workload: give e.g. 'true' or 'echo hello'")
    if spec in PRESETS:
        return PRESETS[spec]
    try:
        argv = shlex.split(spec)
    except ValueError as e:
        raise InvalidSpec(f"workload {spec!r} cannot be split into arguments ({e}): check its quotes") from None
    if not argv:
        raise InvalidSpec("empty workload: give a command such as 'true' or 'echo hello'")
    return Workload.exit(spec, argv)


def parse_many(spec) -> list[Workload]:
    """One workload or a list of them (strings or Workloads)."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise InvalidSpec("no workload given: e.g. workload='true'")
    return [parse(s) for s in items]
