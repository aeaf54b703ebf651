"""Compose files read into a checked model, every key with its file and line.

>>> from kit import compose
>>> p = compose.read("services:\\n  cache:\\n    image: debian-redis\\n    command: redis-server\\n", project="demo")
>>> p.services["cache"].command
['redis-server']
>>> compose.read(["compose.yml", "compose.override.yml"], profiles=["debug"])   # as docker compose -f a -f b

:mod:`kit.compose.source` does what Compose does before reading a key (``.env``, variables, files
merged in order, ``extends``, profiles); this module reads each key with its Compose meaning. A key
is honoured, only tunes operations (accepted, listed in one warning line), or would change isolation
(refused in one line naming the key, the service and the line): :mod:`kit.compose.keys`.
Extension fields (``x-...``) are ignored as the specification says, except the kit's own
(``x-kit-runtime``, ``x-kit-packages``, ``x-kit-colocate``, ``x-kit-image``), which are checked.
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ComposeFileError, InvalidSpec
from ..spec import check_name, parse_memory, parse_tmpfs
from . import keys
from .source import LineDict, active, fail, interpolate, read_env_file, resolve

__all__ = ["read", "Project", "Service", "Healthcheck", "Secret", "duration", "interpolate"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SERVICE_KEYS = keys.SERVICE
CONDITIONS = keys.CONDITIONS


class ComposeWarning(UserWarning):
    """Keys accepted that only tune operations (the kit does not apply them)."""


@dataclass
class Healthcheck:
    """``healthcheck``: ``test`` as an argv run in the service (``CMD-SHELL`` becomes ``sh -c``)."""

    test: list[str]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0     # failures in this time after start do not count
    start_interval: float = 5.0   # how often to check during start_period


@dataclass
class Secret:
    """A top-level secret or config: its file, or the variable or literal content it comes from
    (a value is looked up when the project goes up, never kept here)."""

    name: str
    file: str | None = None
    environment: str | None = None
    content: str | None = None


@dataclass
class Service:
    """One service, its values in the kit's terms (lists, dicts, seconds, bytes)."""

    name: str
    line: int
    where: str = ""
    image: str | None = None
    build: dict | None = None     # context (absolute), dockerfile, target, args
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    ports: list[str] = field(default_factory=list)  # "HOST:CONTAINER", published on 127.0.0.1
    expose: list[int] = field(default_factory=list)
    volumes: list[tuple[str, str, bool, str]] = field(default_factory=list)  # (source, target, ro, kind)
    depends_on: dict[str, str] = field(default_factory=dict)  # service -> condition
    optional: set = field(default_factory=set)      # depends_on with required: false
    restart_with: set = field(default_factory=set)  # depends_on with restart: true (restarted after them)
    healthcheck: Healthcheck | None = None
    working_dir: str | None = None
    memory: int | None = None
    cpus: float | None = None
    runtime: str | None = None
    packages: list[str] = field(default_factory=list)
    colocate: str | None = None
    kit_image: str | None = None  # x-kit-image: the kit image run instead of a registry image
    secrets: list[tuple[str, str]] = field(default_factory=list)  # (secret, target path)
    configs: list[tuple[str, str]] = field(default_factory=list)  # (config, target path)
    #: target path -> (mode, uid, gid) a secret's or config's long syntax gives (None: not given)
    access: dict[str, tuple[int | None, int | None, int | None]] = field(default_factory=dict)
    restart: str = "no"
    restart_max: int | None = None  # on-failure:N
    container_name: str | None = None
    hostname: str | None = None
    read_only: bool = False
    networks: list[str] = field(default_factory=list)
    network_mode: str | None = None  # none, service:NAME
    platform: str | None = None
    options: dict = field(default_factory=dict)  # user, cap_add, cap_drop, sysctls, tmpfs, init, stop_*, labels
    ignored: list[str] = field(default_factory=list)  # keys accepted that only tune operations

    def argv(self, image_cmd=()) -> list[str]:
        """The command line Compose would run: entrypoint + command, else the image's own."""
        if self.entrypoint is not None:
            return list(self.entrypoint) + list(self.command or [])
        return list(self.command) if self.command else list(image_cmd)


@dataclass
class Project:
    """A compose project: its services in file order, top-level volumes, networks, secrets and configs."""

    name: str
    services: dict[str, Service]
    volumes: dict[str, dict]
    networks: dict[str, dict]
    directory: Path
    secrets: dict[str, Secret] = field(default_factory=dict)
    configs: dict[str, Secret] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    profiles: tuple = ()

    def order(self) -> list[str]:
        """Services in an order where each comes after what it depends on (file order otherwise)."""
        done: list[str] = []
        visiting: list[str] = []

        def visit(name):
            if name in done:
                return
            if name in visiting:
                cycle = " -> ".join(visiting[visiting.index(name):] + [name])
                raise ComposeFileError(f"depends_on forms a cycle: {cycle}; remove one of these dependencies")
            visiting.append(name)
            for dep in self.services[name].depends_on:
                visit(dep)
            net = self.services[name].network_mode or ""
            if net.startswith("service:"):
                visit(net.split(":", 1)[1])
            visiting.pop()
            done.append(name)

        for name in self.services:
            visit(name)
        return done

    def ignored(self) -> dict[str, list[str]]:
        """``{service: [keys accepted but not applied]}``."""
        return {s.name: s.ignored for s in self.services.values() if s.ignored}


def read(source, project: str | None = None, environ: dict | None = None, *, profiles=None,
         strict: bool = False) -> Project:
    """Read compose files (a path, YAML text, or a list of them merged in order) into a checked :class:`Project`.

    Args:
        source: path to ``docker-compose.yml``, its text, or a list (``docker compose -f a -f b``).
        project: the project name; default ``COMPOSE_PROJECT_NAME``, else the file's ``name:``, else its
            directory's name.
        environ: the variables ``${VAR}`` takes (default ``os.environ``); they win over the project's ``.env``.
        profiles: active profiles (default ``COMPOSE_PROFILES``); services of other profiles are left out.
        strict: refuse keys that only tune operations too, instead of warning.

    Raises:
        ComposeFileError: one line naming the key, the service and the line.
    """
    r = resolve(source, os.environ if environ is None else environ, profiles)
    top = r.tree
    for key in top:
        if key not in keys.TOP and not key.startswith("x-"):
            fail(top, key, f"top-level key {key!r} is not supported (supported: {', '.join(keys.TOP)})")
    if not isinstance(top.get("services"), dict) or not top["services"]:
        raise ComposeFileError(f"{top.where}: no 'services:' section: a compose file names at least one service")
    name = project or r.variables.get("COMPOSE_PROJECT_NAME") or top.get("name") or r.directory.name
    name = re.sub(r"[^a-z0-9_-]", "", str(name).lower()) or "default"
    check_name(name)
    reader = _Reader(r.directory, r.variables, strict)
    volumes = reader.section(top, "volumes", keys.VOLUME)
    networks = reader.section(top, "networks", keys.NETWORK)
    secrets = {n: reader.secret(top["secrets"], n, v) for n, v in (top.get("secrets") or {}).items()}
    configs = {n: reader.secret(top["configs"], n, v) for n, v in (top.get("configs") or {}).items()}
    services = {}
    for sname, body in top["services"].items():
        if not active(body or {}, r.profiles):
            continue
        services[sname] = reader.service(top["services"], sname, body)
    proj = Project(name, services, volumes, networks, r.directory, secrets, configs, r.files, r.profiles)
    _cross_check(proj, top["services"])
    proj.order()  # a cycle is refused now, not halfway through up
    if proj.ignored():
        warnings.warn("keys that only tune operations, accepted but not applied: " + "; ".join(
            f"{s}: {', '.join(k)}" for s, k in proj.ignored().items()), ComposeWarning, stacklevel=2)
    return proj


def _cross_check(proj: Project, raw: LineDict) -> None:
    """What one service says of the others, of volumes, secrets and networks, checked against them."""
    for s in proj.services.values():
        body = raw[s.name]
        for dep in list(s.depends_on):
            if dep not in proj.services:
                if dep in s.optional:  # required: false: left out with its profile
                    del s.depends_on[dep]
                    continue
                why = "is in a profile that is not active" if dep in raw else "is not a service of this project"
                fail(body, "depends_on", f"service {s.name!r} depends on {dep!r}, which {why} "
                                         f"({', '.join(proj.services)})")
        for src, _, _, kind in s.volumes:
            if kind == "volume" and src not in proj.volumes:
                fail(body, "volumes", f"service {s.name!r} uses volume {src!r}, which is not declared under "
                                      f"the top-level 'volumes:'; add '{src}:' there")
        for what, have in (("secrets", proj.secrets), ("configs", proj.configs)):
            for src, _ in getattr(s, what):
                if src not in have:
                    fail(body, what, f"service {s.name!r} uses {what[:-1]} {src!r}, which is not declared under "
                                     f"the top-level '{what}:'")
        for net in s.networks:
            if net not in proj.networks and net != "default":
                fail(body, "networks", f"service {s.name!r} joins network {net!r}, which is not declared under "
                                       f"the top-level 'networks:'")
        mode = s.network_mode or ""
        if mode.startswith("service:") and mode[8:] not in proj.services:
            fail(body, "network_mode", f"service {s.name!r} shares the network of {mode[8:]!r}, which is not "
                                       f"a service of this project")


def duration(value, what: str = "duration") -> float:
    """A Compose duration (``1m30s``, ``500ms``, ``10s``, or a number of seconds) in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{what} {value!r} is not a duration: e.g. 5s, 500ms, 1m30s")
    return sum(float(n) * _UNITS[u] for n, u in parts)


class _Reader:
    """Reads each key of the resolved tree; every error names the file and line it comes from."""

    def __init__(self, directory: Path, variables: dict, strict: bool):
        self.directory, self.variables, self.strict = directory, variables, strict

    def path(self, p) -> str:
        return str((self.directory / os.path.expanduser(str(p))).resolve())

    def section(self, top: LineDict, what: str, allowed) -> dict:
        out = {}
        for name, body in (top.get(what) or {}).items():
            body = body or {}
            if not isinstance(body, dict):
                fail(top[what], name, f"top-level {what} {name!r} must be a mapping")
            for k in body:
                if k not in allowed and not k.startswith("x-"):
                    fail(body, k, f"key {k!r} of top-level {what} {name!r} is not supported "
                                  f"(supported: {', '.join(allowed)})")
            out[name] = dict(body)
            try:
                check_name(str(out[name].get("name", name)))
            except InvalidSpec as e:
                fail(top[what], name, str(e))
        return out

    def secret(self, section: LineDict, name: str, body) -> Secret:
        if not isinstance(body, dict):
            fail(section, name, f"secret or config {name!r} must be a mapping: file: PATH, or environment: VAR")
        if body.get("external"):
            fail(body, "external", f"{name!r} is external (a swarm's secret store): give file: or environment:")
        given = [k for k in ("file", "environment", "content") if k in body]
        if len(given) != 1:
            fail(section, name, f"{name!r} needs exactly one of file:, environment: or content:")
        s = Secret(name)
        if "file" in body:
            s.file = self.path(body["file"])
            if not Path(s.file).is_file():
                fail(body, "file", f"the file of {name!r} does not exist: {s.file}")
        elif "environment" in body:
            s.environment = str(body["environment"])
            if s.environment not in self.variables:
                fail(body, "environment", f"{name!r} comes from variable {s.environment!r}, which is not set")
        else:
            s.content = str(body["content"])
        return s

    def service(self, section: LineDict, name: str, body) -> Service:
        if body is None:
            body = LineDict()
        if not isinstance(body, dict):
            fail(section, name, f"service {name!r} must be a mapping")
        s = Service(name=name, line=section.lines.get(name, 1), where=section.where_of(name))
        try:
            check_name(name)
        except InvalidSpec:
            fail(section, name, f"service name {name!r} is not valid: use letters, digits, '_', '.' or '-'")
        for key, value in body.items():
            if key.startswith("x-") and not key.startswith("x-kit-"):
                continue
            self._sort(s, body, key, value)
            if key in keys.SERVICE:
                try:
                    _FIELDS[key](self, s, value)
                except (ValueError, TypeError, InvalidSpec) as e:
                    fail(body, key, f"key {key!r} of service {name!r}: {e}")
        if "env_file" in body:  # environment: wins over env_file, as in Compose
            s.environment = {**self.env_files(body, body["env_file"]), **s.environment}
        if not s.image and not s.packages and not s.build:
            fail(section, name, f"service {name!r} has no 'image:' (a kit image such as debian-redis), no "
                                f"'build:' and no 'x-kit-packages:'")
        return s

    def _sort(self, s: Service, body, key, value) -> None:
        """Refuse a key that changes isolation (and with strict, one that only tunes operations)."""
        if key in keys.ISOLATION:
            fail(body, key, f"key {key!r} of service {s.name!r} is refused: it {keys.ISOLATION[key]}")
        if key in ("pid", "ipc", "network_mode") and str(value).startswith(keys.SHARED_NAMESPACE) \
                and not (key == "network_mode" and str(value).startswith("service:")):
            fail(body, key, f"key {key!r} ({value}) of service {s.name!r} is refused: it shares a namespace with "
                            f"the host or another container")
        if key in keys.OPS:
            if self.strict:
                fail(body, key, f"key {key!r} of service {s.name!r} is not applied by the kit (strict=True)")
            s.ignored.append(key)
        elif key not in keys.SERVICE:
            fail(body, key, f"key {key!r} of service {s.name!r} is not a Compose key the kit knows "
                            f"(honoured: {', '.join(keys.SERVICE[:12])}, ...)")

    def env_files(self, body, value) -> dict:
        out = {}
        for item in value if isinstance(value, list) else [value]:
            path, required = (item.get("path"), item.get("required", True)) if isinstance(item, dict) else (item, True)
            p = Path(self.path(path))
            if not p.is_file():
                if required:
                    fail(body, "env_file", f"env_file {str(path)!r} does not exist ({p})")
                continue
            out.update(read_env_file(p, body.where_of("env_file")))
        return out

    def volume(self, item) -> tuple[str, str, bool, str]:
        if isinstance(item, dict):
            unknown = set(item) - {"type", "source", "target", "read_only", "bind", "volume", "tmpfs", "consistency"}
            if unknown:
                raise ValueError(f"volume key {sorted(unknown)[0]!r} is not supported")
            kind = item.get("type", "volume")
            if kind not in ("bind", "volume", "tmpfs") or not item.get("target"):
                raise ValueError("a long-form volume needs type (volume, bind or tmpfs) and target")
            src, dest, ro = str(item.get("source") or ""), str(item["target"]), bool(item.get("read_only"))
            if kind == "tmpfs":
                size = (item.get("tmpfs") or {}).get("size")
                return (f"{dest}:size={size}" if size else dest), dest, False, "tmpfs"
            if not src:
                kind = "anonymous"
        else:
            parts = _string(item, "volume").split(":")
            if len(parts) == 1:
                src, dest, ro, kind = "", parts[0], False, "anonymous"
            else:
                opts = parts[2].split(",") if len(parts) == 3 else []
                if len(parts) > 3 or any(o not in ("ro", "rw", "z", "Z", "cached", "delegated", "consistent",
                                                   "nocopy") for o in opts):
                    raise ValueError(f"{item!r} is not SOURCE:TARGET[:ro]")
                src, dest, ro = parts[0], parts[1], "ro" in opts
                kind = "bind" if src.startswith((".", "/", "~")) else "volume"
        if not dest.startswith("/"):
            raise ValueError(f"volume target {dest!r} must be an absolute path")
        if kind == "bind":
            src = self.path(src)
        return src, dest, ro, kind

    def depends(self, s: Service, v) -> None:
        if isinstance(v, list):
            v = {str(d): None for d in v}
        for dep, body in (v or {}).items():
            body = body or {}
            for k in body:
                if k not in ("condition", "required", "restart"):
                    raise ValueError(f"key {k!r} under depends_on {dep!r} is not supported "
                                     f"(condition, required, restart)")
            cond = body.get("condition", "service_started")
            if cond not in keys.CONDITIONS:
                raise ValueError(f"condition {cond!r} is not one of {', '.join(keys.CONDITIONS)}")
            s.depends_on[str(dep)] = cond
            if body.get("required") is False:
                s.optional.add(str(dep))
            if body.get("restart") is True:
                s.restart_with.add(str(dep))

    def health(self, s: Service, v) -> None:
        for k in v:
            if k not in keys.HEALTH:
                raise ValueError(f"key {k!r} is not supported ({', '.join(keys.HEALTH)})")
        if v.get("disable"):
            return
        test = v.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        test = _strings(test, "healthcheck test") if test is not None else None
        if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE") or (test[0] != "NONE" and len(test) < 2):
            raise ValueError("test must be [CMD, arg...], [CMD-SHELL, 'shell line'], [NONE] or a string")
        if test[0] == "NONE":
            return
        argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", " ".join(test[1:])]
        retries = v.get("retries", 3)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
            raise ValueError(f"retries {retries!r} must be a whole number >= 1")
        s.healthcheck = Healthcheck(argv, duration(v.get("interval", 30), "interval"),
                                    duration(v.get("timeout", 30), "timeout"), retries,
                                    duration(v.get("start_period", 0), "start_period"),
                                    duration(v.get("start_interval", 5), "start_interval"))

    def deploy(self, s: Service, v) -> None:
        for path, value in _leaves(v):
            if path == "resources.limits.memory":
                s.memory = parse_memory(value)
            elif path == "resources.limits.cpus":
                s.cpus = float(value)
            elif path == "restart_policy.condition":
                s.restart = {"none": "no", "any": "always", "on-failure": "on-failure"}.get(str(value), "")
                if not s.restart:
                    raise ValueError(f"restart_policy.condition {value!r}: none, on-failure or any")
            elif path == "restart_policy.max_attempts":
                s.restart_max = int(value)
            elif path.startswith("resources.reservations.devices"):
                raise ValueError("resources.reservations.devices hands host devices (GPUs) to the service: refused")
            elif path == "replicas" and int(value) != 1:
                raise ValueError(f"replicas: {value}: the kit runs one instance per service")
            elif path != "replicas":
                s.ignored.append(f"deploy.{path}")
        if self.strict and any(k.startswith("deploy.") for k in s.ignored):
            raise ValueError(f"{[k for k in s.ignored if k.startswith('deploy.')][0]} is not applied (strict=True)")

    def build(self, s: Service, v) -> None:
        b = {"context": v} if isinstance(v, str) else dict(v or {})
        for k in b:
            if k in keys.BUILD_OPS:
                if self.strict:
                    raise ValueError(f"build.{k} is not applied (strict=True)")
                s.ignored.append(f"build.{k}")
            elif k not in keys.BUILD:
                raise ValueError(f"key {k!r} is not supported ({', '.join(keys.BUILD)})")
        ctx = Path(self.path(b.get("context", ".")))
        if not ctx.is_dir():
            raise ValueError(f"build context {str(b.get('context', '.'))!r} is not a directory ({ctx})")
        df = ctx / str(b.get("dockerfile", "Dockerfile"))
        if not df.is_file():
            raise ValueError(f"no Dockerfile at {df}")
        args = {str(k): ("" if a is None else str(a)) for k, a in (b.get("args") or {}).items()}
        s.build = {"context": str(ctx), "dockerfile": str(df), "target": b.get("target"), "args": args}

    def mounted(self, s: Service, v, what: str) -> list[tuple[str, str]]:
        """``secrets``/``configs`` of a service: ``[(name, absolute target)]``."""
        out = []
        for item in _list(v, what):
            src, target = (item.get("source"), item.get("target")) if isinstance(item, dict) else (item, None)
            src = _string(src, f"{what} source")
            target = str(target or src)
            if not target.startswith("/"):
                target = ("/run/secrets/" if what == "secrets" else "/") + target
            out.append((src, target))
            if isinstance(item, dict) and any(k in item for k in ("mode", "uid", "gid")):
                s.access[target] = (_number(item.get("mode"), f"{what} mode", 8),
                                    _number(item.get("uid"), f"{what} uid"), _number(item.get("gid"), f"{what} gid"))
        return out


def _leaves(d, prefix=""):
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _restart(r, s: Service, v) -> None:
    text = "no" if v is False else str(v)
    policy, _, n = text.partition(":")
    if policy not in keys.RESTART or (n and (policy != "on-failure" or not n.isdigit())):
        raise ValueError(f"{v!r} is not one of no, always, on-failure[:N], unless-stopped")
    s.restart, s.restart_max = policy, int(n) if n else None


def _platform(r, s: Service, v) -> None:
    from ..images.archive import host_platform

    text = _string(v, "platform")
    os_, _, arch = text.partition("/")
    if os_ != "linux" or arch.split("/")[0] not in (host_platform(), ""):
        raise ValueError(f"{text!r} cannot run on this host (linux/{host_platform()}); remove platform: or "
                         f"use an image built for it")
    s.platform = text


def _network_mode(r, s: Service, v) -> None:
    mode = _string(v, "network_mode")
    if mode not in ("none", "bridge", "default") and not mode.startswith("service:"):
        raise ValueError(f"{mode!r}: the kit runs none, bridge (its network) or service:NAME")
    s.network_mode = None if mode in ("bridge", "default") else mode


def _port(p) -> list[str]:
    """Published ports as ``HOST:CONTAINER`` (on 127.0.0.1 only); short and long syntax, ranges."""
    if isinstance(p, dict):
        if p.get("protocol", "tcp") != "tcp":
            raise ValueError(f"port {p.get('target')}/{p['protocol']}: the kit forwards TCP only")
        pub = p.get("published")
        return [f"{_int_port(str(pub)) if pub else 0}:{_int_port(str(p.get('target')))}"]
    text = _string(p, "port")
    if text.endswith("/udp"):
        raise ValueError(f"port {text!r}: the kit forwards TCP only")
    parts = text.removesuffix("/tcp").rsplit(":", 2)
    if len(parts) == 3:
        parts = parts[1:]  # any host address: the kit publishes on 127.0.0.1 only
    host, cont = (parts if len(parts) == 2 else ["", parts[0]])
    hosts, conts = _range(host) if host else [0] * len(_range(cont)), _range(cont)
    if len(hosts) != len(conts):
        raise ValueError(f"port {text!r}: the host and container ranges differ in length")
    return [f"{h}:{c}" for h, c in zip(hosts, conts)]


def _range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(_int_port(lo), _int_port(hi) + 1)) if hi else [_int_port(lo)]


def _int_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not a port number (1-65535)")
    return int(text)


def _string(v, what: str) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError(f"{what} must be a string, not {v!r}")
    return str(v)


def _number(v, what: str, base: int = 10) -> int | None:
    """A mode (YAML reads ``0440`` as the octal number already; ``"0440"`` is read in ``base``) or a uid/gid."""
    if v is None:
        return None
    try:
        n = v if isinstance(v, int) and not isinstance(v, bool) else int(v, base) if isinstance(v, str) else -1
    except ValueError:
        n = -1
    if n < 0 or (base == 8 and n > 0o7777):
        raise ValueError(f"{what} must be a whole number ({'octal, as 0440' if base == 8 else 'as 1000'}), not {v!r}")
    return n


def _list(v, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what} must be a list")
    return v


def _strings(v, what: str) -> list[str]:
    return [_string(x, what) for x in _list(v, what)]


def _argv(v, key):
    return shlex.split(v) if isinstance(v, str) else _strings(v, key) if v is not None else None


def _environment(r: _Reader, v) -> dict[str, str]:
    out = {}
    for k, val in (v or {}).items():
        if val is None:  # KEY alone: from the variables of whoever runs up, if set there
            if k in r.variables:
                out[str(k)] = r.variables[k]
            continue
        out[str(k)] = "true" if val is True else "false" if val is False else str(val)
    return out


def _option(name, convert):
    def set_(r, s, v):
        s.options[name] = convert(v)
    return set_


def _set(attr, convert):
    def set_(r, s, v):
        setattr(s, attr, convert(v))
    return set_


_FIELDS = {
    "image": _set("image", lambda v: _string(v, "image")),
    "build": lambda r, s, v: r.build(s, v),
    "command": lambda r, s, v: setattr(s, "command", _argv(v, "command")),
    "entrypoint": lambda r, s, v: setattr(s, "entrypoint", _argv(v, "entrypoint")),
    "environment": lambda r, s, v: setattr(s, "environment", _environment(r, v)),
    "env_file": lambda r, s, v: None,  # read after environment (which wins)
    "ports": lambda r, s, v: setattr(s, "ports", [x for p in _list(v, "ports") for x in _port(p)]),
    "expose": _set("expose", lambda v: [_range(str(p).split("/")[0])[0] for p in _list(v, "expose")]),
    "volumes": lambda r, s, v: setattr(s, "volumes", [r.volume(i) for i in _list(v, "volumes")]),
    "depends_on": lambda r, s, v: r.depends(s, v),
    "healthcheck": lambda r, s, v: r.health(s, v or {}),
    "working_dir": _set("working_dir", lambda v: _string(v, "working_dir")),
    "mem_limit": _set("memory", parse_memory),
    "cpus": _set("cpus", float),
    "deploy": lambda r, s, v: r.deploy(s, v),
    "user": _option("user", lambda v: _string(v, "user")),
    "cap_add": _option("cap_add", lambda v: _strings(v, "cap_add")),
    "cap_drop": _option("cap_drop", lambda v: _strings(v, "cap_drop")),
    "sysctls": _option("sysctls", lambda v: {str(k): str(x) for k, x in (v or {}).items()}),
    "tmpfs": _option("tmpfs", lambda v: [parse_tmpfs(t) for t in ([v] if isinstance(v, str) else _list(v, "tmpfs"))]),
    "init": _option("init", bool),
    "stop_signal": _option("stop_signal", lambda v: _string(v, "stop_signal")),
    "stop_grace_period": _option("stop_timeout", lambda v: duration(v, "stop_grace_period")),
    "labels": _option("labels", lambda v: {str(k): "" if x is None else str(x) for k, x in (v or {}).items()}),
    "restart": _restart,
    "secrets": lambda r, s, v: setattr(s, "secrets", r.mounted(s, v, "secrets")),
    "configs": lambda r, s, v: setattr(s, "configs", r.mounted(s, v, "configs")),
    "container_name": _set("container_name", lambda v: check_name(_string(v, "container_name"))),
    "hostname": _set("hostname", lambda v: _string(v, "hostname")),
    "read_only": _set("read_only", bool),
    "networks": _set("networks", lambda v: [str(n) for n in (v or {})]),
    "network_mode": _network_mode,
    "platform": _platform,
    "profiles": lambda r, s, v: None,
    "extends": lambda r, s, v: None,  # resolved by kit.compose.source
    "pid": lambda r, s, v: None,      # only private values get here (kit.compose.keys.SHARED_NAMESPACE)
    "ipc": lambda r, s, v: None,
    "x-kit-runtime": _set("runtime", lambda v: _string(v, "x-kit-runtime")),
    "x-kit-packages": _set("packages", lambda v: _strings(v, "x-kit-packages")),
    "x-kit-colocate": _set("colocate", lambda v: check_name(_string(v, "x-kit-colocate"))),
    "x-kit-image": _set("kit_image", lambda v: _string(v, "x-kit-image")),
}
