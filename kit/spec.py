"""What to run, validated: the options shared by every runtime.

A :class:`RunSpec` is built once from user input (the magics, or
:func:`kit.run`) and handed to a runtime; every field is already checked, so
runtimes never parse user strings themselves.
"""

from __future__ import annotations

import re
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidSpec

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
MIN_MEMORY = 6 * 1024**2  # docker's minimum; below it nothing starts
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Linux's MAX_ARG_STRLEN: execve refuses a longer argument or KEY=VALUE string (E2BIG),
#: and each runtime reports that differently (or not at all), so it is checked here once.
MAX_ARG_BYTES = 128 * 1024
HOST_NAME_MAX = 64
MAX_TIMEOUT = 1e6  # seconds (11 days)


def show(value, limit: int = 40) -> str:
    """``repr(value)`` clipped to about ``limit`` characters: messages echo user input on one short line."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def check_string(value: str, what: str) -> str:
    """Refuse what no program can receive: a NUL byte, invalid text, or more than MAX_ARG_BYTES.

    Args:
        value: an argument, environment value, working directory or hostname.
        what: how the message names it, e.g. ``"argument 2"``.
    """
    if "\0" in value:
        raise InvalidSpec(f"{what} {show(value)} contains a NUL byte, which no program can receive: remove it")
    try:
        # Strict: runtimes disagree on surrogates (raw bytes, U+FFFD, or a crash writing a config file).
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidSpec(f"{what} {show(value)} is not valid text (it holds a surrogate): pass UTF-8 text") from None
    if size >= MAX_ARG_BYTES:
        raise InvalidSpec(f"{what} is {size} bytes: Linux passes at most {MAX_ARG_BYTES // 1024} KiB per argument "
                          f"or variable; pass big data in a file or on stdin")
    return value


def parse_memory(value: str | int | None, minimum: int = MIN_MEMORY, what: str = "a container") -> int | None:
    """Parse ``64m``/``1g``/``1048576`` into bytes.

    Args:
        minimum: the least the instance can start in (a VM needs more than a container).
        what: names the kind of instance in the message about the minimum.

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
                f"memory {show(value)} is not a size: use a number with an optional unit, e.g. 64m, 512k, 1g"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n < minimum:
        floor = f"{minimum / 1024**2:g}m"
        raise InvalidSpec(f"memory {show(value)} is below the {floor} minimum {what} can start in: give at least {floor}")
    if n > 1024**4:
        raise InvalidSpec(f"memory {show(value)} is over 1 TiB: give a limit this host could honour, e.g. 512m")
    return n


def parse_cpus(value: str | float | None) -> float | None:
    """Parse a CPU share like ``1.5`` (CPUs' worth of time per second)."""
    if value is None or value == "":
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise InvalidSpec(f"cpus {show(value)} is not a number: use e.g. 0.5 or 2") from None
    if not (0.01 <= n <= 1024) or n != n:
        raise InvalidSpec(f"cpus {show(value)} is out of range: use a number from 0.01 to 1024")
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
        raise InvalidSpec(f"port {show(value)} is malformed: use HOSTPORT:PORT, e.g. 8080:80 (published on 127.0.0.1 only)")
    host, cont = int(parts[0]), int(parts[1])
    for p in (host, cont):
        if not 1 <= p <= 65535:
            raise InvalidSpec(f"port {show(value)} is out of range: ports go from 1 to 65535")
    return host, cont


def parse_expose(value) -> list[int]:
    """The ports a VM member serves to its kit network (``expose=[6379]``, ``"6379,8080"`` or ``--expose``).

    Containers need none: they share the network namespace's loopback. A VM's ports are forwarded into it.
    """
    if value in (None, "", []):
        return []
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    out = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise InvalidSpec(f"expose {show(item)} is not a port: give numbers from 1 to 65535, e.g. expose=[6379]")
        out.append(int(text))
    return out


def parse_env(value: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE``."""
    key, sep, val = str(value).partition("=")
    if not sep or not _ENV_KEY.fullmatch(key):
        raise InvalidSpec(f"environment {show(value)} is malformed: use KEY=VALUE with KEY made of letters, digits and _")
    return key, val


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise InvalidSpec(
            f"name {show(name)} is not valid: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def check_argv(argv: list[str]) -> list[str]:
    """Check every argument of a command line with :func:`check_string`."""
    for i, arg in enumerate(argv):
        check_string(arg, "command" if i == 0 else f"argument {i}")
    return argv


@dataclass(frozen=True)
class Mount:
    """One ``-v SRC:DEST[:ro]``, as ``docker run -v`` reads it.

    Attributes:
        source: a host directory (absolute path) or a named volume (see :mod:`kit.volumes`).
        target: the absolute path inside the instance.
        read_only: ``:ro``: writes fail inside.
        kind: ``"bind"`` (a host directory) or ``"volume"`` (a named volume).
    """

    source: str
    target: str
    read_only: bool = False
    kind: str = "bind"


def parse_volume(value) -> Mount:
    """Parse ``SRC:DEST[:ro|:rw]`` (a Mount passes through).

    ``SRC`` starting with ``/`` is a host directory; otherwise it is a volume name
    (letters, digits, ``_ . -``; no ``/`` or ``..``). Existence is checked where the
    mount is resolved (:meth:`kit.volumestore.Volumes.attach`), not here.

    >>> parse_volume("data:/var/lib/mysql")
    Mount(source='data', target='/var/lib/mysql', read_only=False, kind='volume')
    """
    if isinstance(value, Mount):
        return value
    text = check_string(str(value), "volume")
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not parts[0] or not parts[1]:
        raise InvalidSpec(f"volume {show(value)} is malformed: use SRC:DEST[:ro], e.g. data:/var/lib/mysql or "
                          f"/srv/www:/www:ro")
    src, dest = parts
    if not dest.startswith("/"):
        raise InvalidSpec(f"volume {show(value)}: the destination {show(dest)} must be an absolute path inside, "
                          f"e.g. /data")
    if dest.rstrip("/") == "" or ".." in dest.split("/"):
        raise InvalidSpec(f"volume {show(value)}: the destination {show(dest)} cannot be / or contain '..'")
    if src.startswith("/"):
        if src.rstrip("/") == "" or ".." in src.split("/"):
            raise InvalidSpec(f"volume {show(value)}: the host directory cannot be / or contain '..': "
                              f"give the directory to share, e.g. /srv/data")
        return Mount(src.rstrip("/"), dest.rstrip("/"), mode == "ro", "bind")
    if src.startswith(".") or not _NAME_RE.match(src):
        raise InvalidSpec(f"volume {show(value)}: {show(src)} is neither an absolute host path nor a volume "
                          f"name (letters, digits, '_', '.', '-'; no '/' or '..'): e.g. data:/data or "
                          f"/abs/path:/data")
    return Mount(src, dest.rstrip("/"), mode == "ro", "volume")


#: Every capability name a container runtime knows (``CAP_`` + these), for cap_add/cap_drop.
CAPABILITY_NAMES = frozenset("""
    AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE CHOWN DAC_OVERRIDE
    DAC_READ_SEARCH FOWNER FSETID IPC_LOCK IPC_OWNER KILL LEASE LINUX_IMMUTABLE MAC_ADMIN MAC_OVERRIDE
    MKNOD NET_ADMIN NET_BIND_SERVICE NET_BROADCAST NET_RAW PERFMON SETFCAP SETGID SETPCAP SETUID
    SYSLOG SYS_ADMIN SYS_BOOT SYS_CHROOT SYS_MODULE SYS_NICE SYS_PACCT SYS_PTRACE SYS_RAWIO
    SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG WAKE_ALARM""".split())
#: The sysctls a container may set: those its own namespaces hold (Docker's and runc's list).
#: Any other would change the host kernel for everyone.
NAMESPACED_SYSCTLS = re.compile(r"^(net\..+|kernel\.(shm(max|all|mni)|msg(max|mnb|mni)|sem|shm_rmid_forced"
                                r"|domainname|hostname)|fs\.mqueue\..+)$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def parse_caps(value, what: str) -> list[str]:
    """``cap_add``/``cap_drop``: ``NET_ADMIN``, ``CAP_NET_ADMIN`` or ``ALL``, as ``CAP_NET_ADMIN`` / ``ALL``."""
    items = [value] if isinstance(value, str) else list(value or [])
    out = []
    for item in items:
        name = str(item).strip().upper()
        name = name[4:] if name.startswith("CAP_") else name
        if name != "ALL" and name not in CAPABILITY_NAMES:
            raise InvalidSpec(f"{what} {show(item)} is not a Linux capability: e.g. NET_ADMIN, CHOWN or ALL")
        out.append("ALL" if name == "ALL" else f"CAP_{name}")
    return list(dict.fromkeys(out))


def parse_sysctls(value) -> dict[str, str]:
    """``{"net.core.somaxconn": "1024"}`` or ``["KEY=VALUE"]``; only namespaced keys (:data:`NAMESPACED_SYSCTLS`)."""
    items = value.items() if isinstance(value, dict) else (str(v).partition("=")[::2] for v in (value or []))
    out = {}
    for key, val in items:
        key = str(key).strip()
        if not NAMESPACED_SYSCTLS.match(key):
            raise InvalidSpec(f"sysctl {show(key)} is not namespaced: it would change the host's kernel for every "
                              f"process; an instance may set net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*")
        out[key] = check_string(str(val).strip(), f"sysctl {key}")
    return out


def parse_signal(value) -> str:
    """A signal name or number (``SIGQUIT``, ``QUIT``, ``3``) as its name, e.g. ``SIGQUIT``."""
    text = str(value).strip().upper()
    try:
        sig = signal.Signals(int(text)) if text.isdigit() else signal.Signals["SIG" + text.removeprefix("SIG")]
    except (KeyError, ValueError):
        raise InvalidSpec(f"signal {show(value)} is not a signal: e.g. SIGTERM, SIGQUIT or 15") from None
    return sig.name


@dataclass(frozen=True)
class Tmpfs:
    """A tmpfs mounted at ``target`` (memory-backed, empty at each start): ``size`` bytes, ``mode`` bits."""

    target: str
    size: int | None = None
    mode: int | None = None

    def options(self) -> list[str]:
        """Its mount options, as mount(8) and the OCI config take them."""
        return [o for o in (f"size={self.size}" if self.size else "", f"mode={self.mode:o}" if self.mode is not None
                            else "") if o]


def parse_tmpfs(value) -> Tmpfs:
    """``/run``, ``/run:size=64m,mode=1777`` (``docker run --tmpfs``), or a Tmpfs."""
    if isinstance(value, Tmpfs):
        return value
    target, _, opts = check_string(str(value), "tmpfs").partition(":")
    if not target.startswith("/") or target.rstrip("/") == "" or ".." in target.split("/"):
        raise InvalidSpec(f"tmpfs {show(value)}: the mount point must be an absolute path other than /, e.g. /run")
    size = mode = None
    for opt in filter(None, opts.split(",")):
        key, _, val = opt.partition("=")
        if key == "size":
            size = parse_memory(val, minimum=1)
        elif key == "mode" and re.fullmatch(r"[0-7]{3,4}", val):
            mode = int(val, 8)
        elif key not in ("rw", "noexec", "nosuid", "nodev", "exec", "suid", "dev"):
            raise InvalidSpec(f"tmpfs option {show(opt)} is not supported: give size=64m and/or mode=1777")
    return Tmpfs(target.rstrip("/"), size, mode)


def resolve_user(user: str, rootfs: Path | None) -> tuple[int, int, list[int]]:
    """``user`` (``uid[:gid]`` or ``name[:group]``) as (uid, gid, supplementary gids), the names looked up in
    the image's ``/etc/passwd`` and ``/etc/group`` as ``docker run --user`` does (a bare uid with no entry
    runs with gid 0).

    Raises:
        InvalidSpec: a name the image does not have.
    """
    def table(name: str) -> list[list[str]]:
        try:
            text = (rootfs / "etc" / name).read_text(errors="replace") if rootfs is not None else ""
        except OSError:
            text = ""
        return [line.split(":") for line in text.splitlines() if line.count(":") >= 2]

    name, _, group = user.partition(":")
    passwd = {row[0]: row for row in table("passwd") if len(row) >= 4}
    by_uid = {row[2]: row for row in passwd.values()}
    row = passwd.get(name) or by_uid.get(name)
    if row is None and not name.isdigit():
        raise InvalidSpec(f"user {show(name)} is not in the image's /etc/passwd: give a uid, or one of its users")
    uid, gid = int(row[2] if row else name), int(row[3]) if row else 0
    groups = table("group")
    if group:
        found = next((g for g in groups if g[0] == group), None)
        if found is None and not group.isdigit():
            raise InvalidSpec(f"group {show(group)} is not in the image's /etc/group: give a gid, or one of its groups")
        gid = int(found[2]) if found else int(group)
    login = row[0] if row else None
    extra = sorted({int(g[2]) for g in groups if len(g) >= 4 and login in g[3].split(",") and g[2].isdigit()} - {gid})
    return uid, gid, extra


def new_name() -> str:
    return "kit-" + secrets.token_hex(4)


#: How an instance can start: from nothing, pre-created ahead of time, or restored from a snapshot.
START_MODES = ("cold", "precreated", "snapshot")
#: The options of a run beyond the basics, which a runtime may not be able to honour
#: (:attr:`kit.runtimes.base.Runtime.cannot`): a run asking for one there is refused.
EXTRAS = ("user", "cap_add", "cap_drop", "sysctls", "tmpfs", "init", "stop_signal", "labels")


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
        volumes: :class:`Mount` s (``-v SRC:DEST[:ro]``), host directories or named volumes.
        network: the kit network (:mod:`kit.networks`) to join, or None (alone, loopback only).
        harden: the baseline hardening Docker applies by default (a seccomp filter refusing
            dangerous system calls, dropped capabilities, masked /proc paths), applied by
            every container runtime that can; False runs without it.
        start: how the instance starts (:data:`START_MODES`): ``cold`` (from nothing, the default),
            ``precreated`` (created ahead of time, the clock starts at the start request) or
            ``snapshot`` (restored from a snapshot: a VM template, or CRIU for containers).
        user: ``uid[:gid]`` or ``name[:group]`` the command runs as (the image's names), default root.
        cap_add, cap_drop: capabilities added to / dropped from the runtime's default set (``ALL``).
        sysctls: namespaced kernel parameters set inside (:data:`NAMESPACED_SYSCTLS`).
        tmpfs: :class:`Tmpfs` mounts (``/run:size=64m``).
        init: a small init as PID 1 that forwards signals and reaps orphans (``docker run --init``).
        stop_signal: what stop sends first (default SIGTERM); stop_timeout: seconds before SIGKILL.
        labels: metadata kept with the instance (Docker labels, OCI annotations).

    A runtime that cannot honour one of :data:`EXTRAS` says so (:attr:`kit.runtimes.base.Runtime.cannot`),
    and a run asking for it there is refused, never run without it.
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
    harden: bool = True
    volumes: list[Mount] = field(default_factory=list)
    network: str | None = None
    start: str = "cold"
    options: dict = field(default_factory=dict)  # runtime-specific extras (e.g. VM kernel)
    user: str | None = None
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    tmpfs: list[Tmpfs] = field(default_factory=list)
    init: bool = False
    stop_signal: str = "SIGTERM"
    stop_timeout: float | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.command, str):
            raise InvalidSpec("command must be a list of arguments, not a string: e.g. ['echo', 'hello']")
        self.command = [str(c) for c in self.command]
        if not self.command:
            raise InvalidSpec("no command given: put the command after the image, e.g. busybox echo hello")
        check_argv(self.command)
        if len(check_string(str(self.image), "image name")) > 255:
            raise InvalidSpec(f"image name {show(self.image)} is too long: image names have at most 255 characters")
        check_name(self.name)
        self.env = {str(k): str(v) for k, v in self.env.items()}
        for k, v in self.env.items():
            if not _ENV_KEY.fullmatch(k):
                raise InvalidSpec(f"environment variable name {show(k)} is not valid: use letters, digits and _, "
                                  f"not starting with a digit")
            check_string(f"{k}={v}", f"environment variable {k}")
        if self.hostname is None:
            self.hostname = self.name[:63]
        self.hostname = check_string(str(self.hostname), "hostname")
        if not self.hostname or len(self.hostname.encode()) > HOST_NAME_MAX or not self.hostname.isprintable():
            raise InvalidSpec(f"hostname {show(self.hostname)} is not valid: use 1-{HOST_NAME_MAX} bytes of "
                              f"printable characters, e.g. web1")
        if self.workdir is not None:
            self.workdir = check_string(str(self.workdir), "working directory")
            if not self.workdir.startswith("/"):
                raise InvalidSpec(f"working directory {show(self.workdir)} must be an absolute path, e.g. /tmp")
        # Bounded above: waits hand it to poll(2) and socket timeouts, which overflow on inf or 1e300.
        if self.timeout is not None and not (0 < self.timeout <= MAX_TIMEOUT):
            raise InvalidSpec(f"timeout {self.timeout!r} must be a number of seconds from 0 to {MAX_TIMEOUT:g}: "
                              f"leave it out for no timeout")
        seen = set()
        for host, _ in self.ports:
            if host in seen:
                raise InvalidSpec(f"host port {host} is published twice: give each -p a different host port")
            seen.add(host)
        self.volumes = [parse_volume(v) for v in self.volumes]
        targets = [m.target for m in self.volumes]
        for t in targets:
            if targets.count(t) > 1:
                raise InvalidSpec(f"two volumes are mounted at {show(t)}: give each -v a different destination")
        if self.network is not None:
            check_name(str(self.network))
        if self.start not in START_MODES:
            raise InvalidSpec(f"start mode {show(self.start)} is not known: use one of {', '.join(START_MODES)}")
        self._check_extras()

    def _check_extras(self) -> None:
        if self.user is not None and not _USER.match(str(self.user)):
            raise InvalidSpec(f"user {show(self.user)} is not valid: give uid[:gid] or name[:group], e.g. 1000:1000")
        self.cap_add, self.cap_drop = parse_caps(self.cap_add, "cap_add"), parse_caps(self.cap_drop, "cap_drop")
        self.sysctls = parse_sysctls(self.sysctls)
        self.tmpfs = [parse_tmpfs(t) for t in self.tmpfs]
        self.stop_signal = parse_signal(self.stop_signal)
        if self.stop_timeout is not None and not (0 <= float(self.stop_timeout) <= MAX_TIMEOUT):
            raise InvalidSpec(f"stop timeout {self.stop_timeout!r} must be a number of seconds from 0 to {MAX_TIMEOUT:g}")
        self.labels = {check_string(str(k), "label"): check_string(str(v), f"label {k}") for k, v in self.labels.items()}
        targets = [m.target for m in self.volumes] + [t.target for t in self.tmpfs]
        for t in targets:
            if targets.count(t) > 1:
                raise InvalidSpec(f"two mounts are at {show(t)} (volumes and tmpfs): give each a different destination")

    def capabilities(self, default) -> list[str]:
        """The capability set: the runtime's ``default`` less ``cap_drop`` plus ``cap_add``, as Docker
        computes it (``ALL`` in cap_drop empties the default, in cap_add gives every capability)."""
        every = sorted(f"CAP_{c}" for c in CAPABILITY_NAMES)
        caps = [] if "ALL" in self.cap_drop else [c for c in default if c not in self.cap_drop]
        for c in every if "ALL" in self.cap_add else self.cap_add:
            if c not in caps:
                caps.append(c)
        return caps

    def asked(self) -> list[str]:
        """The :data:`EXTRAS` this run asks for (not left at their defaults)."""
        return [name for name in EXTRAS if getattr(self, name) not in (None, False, [], {}, "SIGTERM")]

    def environment(self, image=None) -> dict[str, str]:
        """The full environment inside the instance, as ``docker run`` makes it: the kit's defaults,
        then the image's own ``ENV`` (``image.config["env"]``, a dict or OCI's ``["K=V"]`` list, e.g.
        its PATH), then the user's ``env``."""
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": self.hostname or self.name}
        img_env = ((image.config or {}).get("env") if image is not None else None) or {}
        if isinstance(img_env, list):
            img_env = dict(e.split("=", 1) for e in img_env if "=" in e)
        env.update({k: str(v) for k, v in img_env.items()})
        env.update(self.env)
        return env

    def working_dir(self, image=None) -> str:
        """The working directory inside: the user's, else the image's ``WORKDIR``, else ``/``."""
        return self.workdir or ((image.config or {}).get("workdir") if image is not None else None) or "/"
