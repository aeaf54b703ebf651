"""What to run, validated: the options shared by every runtime.

A :class:`RunSpec` is built once from user input (the magics, or
:func:`kit.run`) and handed to a runtime; every field is already checked, so
runtimes never parse user strings themselves.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from .errors import InvalidSpec

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
MIN_MEMORY = 6 * 1024**2  # docker's minimum; below it nothing starts
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_memory(value: str | int | None) -> int | None:
    """Parse ``64m``/``1g``/``1048576`` into bytes.

    >>> parse_memory("64m")
    67108864
    """
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*", str(value).lower())
        if not m:
            raise InvalidSpec(
                f"memory {value!r} is not a size: use a number with an optional unit, e.g. 64m, 512k, 1g"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n < MIN_MEMORY:
        raise InvalidSpec(f"memory {value!r} is below the 6m minimum a container can start in: give at least 6m")
    if n > 1024**4:
        raise InvalidSpec(f"memory {value!r} is over 1 TiB: give a limit this host could honour, e.g. 512m")
    return n


def parse_cpus(value: str | float | None) -> float | None:
    """Parse a CPU share like ``1.5`` (CPUs' worth of time per second)."""
    if value is None or value == "":
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise InvalidSpec(f"cpus {value!r} is not a number: use e.g. 0.5 or 2") from None
    if not (0.01 <= n <= 1024) or n != n:
        raise InvalidSpec(f"cpus {value!r} is out of range: use a number from 0.01 to 1024")
    return n


def parse_port(value: str) -> tuple[int, int]:
    """Parse ``HOSTPORT:PORT`` (or ``127.0.0.1:HOSTPORT:PORT``) into a pair.

    Ports are only ever published on 127.0.0.1.
    """
    parts = str(value).split(":")
    if len(parts) == 3 and parts[0] in ("127.0.0.1", "localhost"):
        parts = parts[1:]
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidSpec(f"port {value!r} is malformed: use HOSTPORT:PORT, e.g. 8080:80 (published on 127.0.0.1 only)")
    host, cont = int(parts[0]), int(parts[1])
    for p in (host, cont):
        if not 1 <= p <= 65535:
            raise InvalidSpec(f"port {value!r} is out of range: ports go from 1 to 65535")
    return host, cont


def parse_env(value: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE``."""
    key, sep, val = str(value).partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise InvalidSpec(f"environment {value!r} is malformed: use KEY=VALUE with KEY made of letters, digits and _")
    return key, val


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise InvalidSpec(
            f"name {name!r} is not valid: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def new_name() -> str:
    return "kit-" + secrets.token_hex(4)


@dataclass
class RunSpec:
    """A validated description of one run.

    Args:
        image: image name (ignored by the ``process`` runtime).
        command: argv list; never passed through a shell.
        name: instance name, unique among live instances.
        detach: start and return at once (a service).
        memory: limit in bytes, or None.
        cpus: CPU share, or None.
        env: extra environment.
        ports: (host port, container port) pairs, published on 127.0.0.1.
        workdir: working directory inside the instance.
        timeout: seconds before a foreground run is killed.
        hostname: defaults to the name.
        read_only: root filesystem read-only.
    """

    image: str
    command: list[str]
    name: str = field(default_factory=new_name)
    detach: bool = False
    memory: int | None = None
    cpus: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    ports: list[tuple[int, int]] = field(default_factory=list)
    workdir: str | None = None
    timeout: float | None = None
    hostname: str | None = None
    read_only: bool = False
    options: dict = field(default_factory=dict)  # runtime-specific extras (e.g. VM kernel)

    def __post_init__(self):
        if isinstance(self.command, str):
            raise InvalidSpec("command must be a list of arguments, not a string: e.g. ['echo', 'hello']")
        self.command = [str(c) for c in self.command]
        if not self.command:
            raise InvalidSpec("no command given: put the command after the image, e.g. busybox echo hello")
        check_name(self.name)
        if self.hostname is None:
            self.hostname = self.name[:63]
        if self.workdir is not None and not str(self.workdir).startswith("/"):
            raise InvalidSpec(f"working directory {self.workdir!r} must be an absolute path, e.g. /tmp")
        if self.timeout is not None and not (self.timeout > 0):
            raise InvalidSpec(f"timeout {self.timeout!r} must be a positive number of seconds")
        seen = set()
        for host, _ in self.ports:
            if host in seen:
                raise InvalidSpec(f"host port {host} is published twice: give each -p a different host port")
            seen.add(host)

    def environment(self) -> dict[str, str]:
        """The full environment inside the instance."""
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": self.hostname or self.name}
        env.update(self.env)
        return env
