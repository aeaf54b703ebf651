"""A ``docker-compose.yml`` read into a checked model, every key with its line.

>>> from kit import compose
>>> p = compose.read("services:\\n  cache:\\n    image: debian-redis\\n    command: redis-server\\n", project="demo")
>>> p.services["cache"].command
['redis-server']

Only the keys the kit honours are accepted (:data:`SERVICE_KEYS`); any other key is refused
with one line naming the key, the service and the line, before anything starts. Extension
fields (``x-...``) are ignored as the Compose specification says, except the kit's own
(``x-kit-runtime``, ``x-kit-packages``, ``x-kit-colocate``), which are checked.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ComposeFileError
from ..spec import check_name, parse_memory

#: Service keys the kit honours (the Compose specification's meaning) and its own extensions.
SERVICE_KEYS = ("image", "command", "entrypoint", "environment", "ports", "expose", "volumes", "depends_on",
                "healthcheck", "working_dir", "mem_limit", "deploy",
                "x-kit-runtime", "x-kit-packages", "x-kit-colocate")
TOP_KEYS = ("services", "volumes", "networks", "name", "version")
HEALTH_KEYS = ("test", "interval", "timeout", "retries", "disable")
CONDITIONS = ("service_started", "service_healthy")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class Healthcheck:
    """``healthcheck``: ``test`` as an argv run in the service (``CMD-SHELL`` becomes ``sh -c``)."""

    test: list[str]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3


@dataclass
class Service:
    """One service, its values in the kit's terms (lists, dicts, seconds, bytes)."""

    name: str
    line: int
    image: str | None = None
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    ports: list[str] = field(default_factory=list)  # "HOST:CONTAINER", published on 127.0.0.1
    expose: list[int] = field(default_factory=list)
    volumes: list[tuple[str, str, bool, str]] = field(default_factory=list)  # (source, target, ro, kind)
    depends_on: dict[str, str] = field(default_factory=dict)  # service -> condition
    healthcheck: Healthcheck | None = None
    working_dir: str | None = None
    memory: int | None = None
    runtime: str | None = None
    packages: list[str] = field(default_factory=list)
    colocate: str | None = None

    def argv(self, image_cmd=()) -> list[str]:
        """The command line Compose would run: entrypoint + command, else the image's own."""
        if self.entrypoint is not None:
            return list(self.entrypoint) + list(self.command or [])
        return list(self.command) if self.command else list(image_cmd)


@dataclass
class Project:
    """A compose file: its services in file order, top-level volumes and networks."""

    name: str
    services: dict[str, Service]
    volumes: dict[str, dict]
    networks: dict[str, dict]
    directory: Path

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
            visiting.pop()
            done.append(name)

        for name in self.services:
            visit(name)
        return done


def read(source, project: str | None = None, environ: dict | None = None) -> Project:
    """Read a compose file (a path, or YAML text) into a checked :class:`Project`.

    Args:
        source: path to ``docker-compose.yml``, or its text.
        project: the project name; default the file's ``name:``, else its directory's name.
        environ: where ``environment: [KEY]`` without a value takes it from (default ``os.environ``).

    Raises:
        ComposeFileError: one line naming the key, the service and the line.
    """
    path = Path(source) if isinstance(source, Path) or "\n" not in str(source) else None
    if path is not None:
        try:
            text = path.read_text()
        except OSError as e:
            raise ComposeFileError(f"cannot read compose file {str(path)!r}: {e.strerror}") from None
        where, directory = str(path), path.resolve().parent
    else:
        text, where, directory = str(source), "<text>", Path.cwd()
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        raise ComposeFileError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()
    r = _Reader(loader, where, environ)
    top = r.mapping(root, "the file")
    for key, (knode, _) in top.items():
        if key not in TOP_KEYS and not key.startswith("x-"):
            raise ComposeFileError(f"{where}:{_line(knode)}: top-level key {key!r} is not supported "
                                   f"(supported: {', '.join(TOP_KEYS)})")
    if "services" not in top:
        raise ComposeFileError(f"{where}: no 'services:' section: a compose file names at least one service")
    name = project or (r.value(top["name"][1]) if "name" in top else None) or directory.name
    name = re.sub(r"[^a-z0-9_-]", "", str(name).lower()) or "default"
    check_name(name)
    volumes = r.named_section(top.get("volumes"), "volumes", ("external", "name"))
    networks = r.named_section(top.get("networks"), "networks", ())
    services = {}
    for sname, (knode, snode) in r.mapping(top["services"][1], "services").items():
        services[sname] = r.service(sname, knode, snode, environ if environ is not None else os.environ)
    proj = Project(name, services, volumes, networks, directory)
    for s in services.values():
        for dep in s.depends_on:
            if dep not in services:
                raise ComposeFileError(f"{where}:{s.line}: service {s.name!r} depends on {dep!r}, which is not a "
                                       f"service of this file ({', '.join(services)})")
        for src, _, _, kind in s.volumes:
            if kind == "volume" and src not in volumes:
                raise ComposeFileError(f"{where}:{s.line}: service {s.name!r} uses volume {src!r}, which is not "
                                       f"declared under the top-level 'volumes:'; add '{src}:' there")
    proj.order()  # a cycle is refused now, not halfway through up
    return proj


_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, environ):
    """Compose's variable substitution in every string: ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``; ``$$`` is a literal ``$``. An unset variable without a default is an error
    (Compose warns and substitutes nothing, which hides typos)."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str) or "$" not in value:
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("plain")
        text = m.group(0)
        if environ.get(name) not in (None, "") or (environ.get(name) == "" and ":-" not in text):
            return environ[name]
        if m.group("default") is not None:
            return m.group("default")
        raise ValueError(f"variable {name!r} is not set: set it, or write ${{{name}:-default}}")

    return _VAR.sub(sub, value)


def _line(node) -> int:
    return node.start_mark.line + 1


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
    """Walks PyYAML's node tree, so that every error can name the line it comes from."""

    def __init__(self, loader, where: str, environ=None):
        self.loader, self.where = loader, where
        self.environ = os.environ if environ is None else environ

    def fail(self, node, text: str):
        raise ComposeFileError(f"{self.where}:{_line(node)}: {text}")

    def value(self, node):
        v = self.loader.construct_object(node, deep=True)
        try:
            return interpolate(v, self.environ)
        except ValueError as e:
            self.fail(node, str(e))

    def mapping(self, node, what: str) -> dict:
        """``{key: (key node, value node)}``; merge keys (``<<``) flattened as PyYAML does."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping (key: value lines)")
        self.loader.flatten_mapping(node)
        out = {}
        for k, v in node.value:
            key = self.value(k)
            if not isinstance(key, str):
                self.fail(k, f"key {key!r} in {what} must be a string")
            out[key] = (k, v)
        return out

    def named_section(self, entry, what: str, allowed) -> dict:
        if entry is None or self.value(entry[1]) is None:
            return {}
        out = {}
        for name, (knode, vnode) in self.mapping(entry[1], what).items():
            body = {} if self.value(vnode) is None else self.mapping(vnode, f"{what} {name!r}")
            for k, (kn, _) in body.items():
                if k not in allowed and not k.startswith("x-"):
                    self.fail(kn, f"key {k!r} of top-level {what} {name!r} is not supported"
                                  + (f" (supported: {', '.join(allowed)})" if allowed else " (give it no keys)"))
            out[name] = {k: self.value(v) for k, (_, v) in body.items()}
            check_name(out[name].get("name", name))
        return out

    def service(self, name: str, knode, node, environ) -> Service:
        s = Service(name=name, line=_line(knode))
        try:
            check_name(name)
        except Exception:
            self.fail(knode, f"service name {name!r} is not valid: use letters, digits, '_', '.' or '-'")
        body = {} if self.value(node) is None else self.mapping(node, f"service {name!r}")
        for key, (kn, vn) in body.items():
            if key not in SERVICE_KEYS and not (key.startswith("x-") and not key.startswith("x-kit-")):
                self.fail(kn, f"key {key!r} of service {name!r} is not supported by the kit "
                              f"(supported: {', '.join(SERVICE_KEYS)})")
            try:
                self._field(s, key, kn, vn, environ)
            except (ValueError, TypeError) as e:
                self.fail(kn, f"service {name!r}, {key}: {e}")
        if not s.image and not s.packages:
            self.fail(knode, f"service {name!r} has no 'image:' (a kit image such as debian-redis) and no "
                             f"'x-kit-packages:' to build one from")
        return s

    def _field(self, s: Service, key, kn, vn, environ) -> None:
        v = self.value(vn)
        if key == "image":
            s.image = _string(v, "image")
        elif key in ("command", "entrypoint"):
            argv = shlex.split(v) if isinstance(v, str) else _strings(v, key) if v is not None else None
            setattr(s, key, argv)
        elif key == "environment":
            s.environment = _environment(v, environ)
        elif key == "ports":
            s.ports = [_port(p) for p in _list(v, "ports")]
        elif key == "expose":
            s.expose = [_int_port(str(p).split("/")[0]) for p in _list(v, "expose")]
        elif key == "volumes":
            s.volumes = [self._volume(s, item) for item in _list(v, "volumes")]
        elif key == "depends_on":
            s.depends_on = self._depends(s, vn)
        elif key == "healthcheck":
            s.healthcheck = self._health(s, vn)
        elif key == "working_dir":
            s.working_dir = _string(v, "working_dir")
        elif key == "mem_limit":
            s.memory = parse_memory(v)
        elif key == "deploy":
            s.memory = self._deploy(s, vn) or s.memory
        elif key == "x-kit-runtime":
            s.runtime = _string(v, key)
        elif key == "x-kit-packages":
            s.packages = _strings(v, key)
        elif key == "x-kit-colocate":
            s.colocate = check_name(_string(v, key))

    def _volume(self, s: Service, item) -> tuple[str, str, bool, str]:
        if isinstance(item, dict):
            unknown = set(item) - {"type", "source", "target", "read_only"}
            if unknown:
                raise ValueError(f"volume key {sorted(unknown)[0]!r} is not supported (type, source, target, read_only)")
            kind = {"bind": "bind", "volume": "volume"}.get(item.get("type", "volume"))
            if kind is None or not item.get("source") or not item.get("target"):
                raise ValueError("a long-form volume needs type (volume or bind), source and target")
            src, dest, ro = str(item["source"]), str(item["target"]), bool(item.get("read_only"))
        else:
            parts = _string(item, "volume").split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"{item!r} is not SOURCE:TARGET[:ro]; an anonymous volume is not supported")
            src, dest, ro = parts[0], parts[1], parts[2:] == ["ro"]
            kind = "bind" if src.startswith((".", "/", "~")) else "volume"
        if not dest.startswith("/"):
            raise ValueError(f"volume target {dest!r} must be an absolute path")
        if kind == "bind":
            src = str((self._dir() / os.path.expanduser(src)).resolve())
        return src, dest, ro, kind

    def _dir(self) -> Path:
        return Path(self.where).resolve().parent if self.where != "<text>" else Path.cwd()

    def _depends(self, s: Service, node) -> dict[str, str]:
        v = self.value(node)
        if isinstance(v, list):
            return {_string(d, "depends_on"): "service_started" for d in v}
        out = {}
        for dep, (kn, vn) in self.mapping(node, f"depends_on of {s.name!r}").items():
            body = self.mapping(vn, f"depends_on {dep!r}") if self.value(vn) is not None else {}
            cond = "service_started"
            for k, (kk, kv) in body.items():
                if k != "condition":
                    self.fail(kk, f"key {k!r} under depends_on {dep!r} of service {s.name!r} is not supported "
                                  f"(supported: condition)")
                cond = self.value(kv)
                if cond not in CONDITIONS:
                    self.fail(kv, f"condition {cond!r} of service {s.name!r} is not supported "
                                  f"(supported: {', '.join(CONDITIONS)})")
            out[dep] = cond
        return out

    def _health(self, s: Service, node) -> Healthcheck | None:
        body = self.mapping(node, f"healthcheck of {s.name!r}")
        for k, (kn, _) in body.items():
            if k not in HEALTH_KEYS:
                self.fail(kn, f"key {k!r} of the healthcheck of service {s.name!r} is not supported "
                              f"(supported: {', '.join(HEALTH_KEYS)})")
        vals = {k: self.value(v) for k, (_, v) in body.items()}
        if vals.get("disable"):
            return None
        test = vals.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        test = _strings(test, "healthcheck test") if test is not None else None
        if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE") or (test[0] != "NONE" and len(test) < 2):
            raise ValueError("healthcheck test must be [CMD, arg...], [CMD-SHELL, 'shell line'], [NONE] or a string")
        if test[0] == "NONE":
            return None
        argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", " ".join(test[1:])]
        retries = vals.get("retries", 3)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
            raise ValueError(f"healthcheck retries {retries!r} must be a whole number >= 1")
        return Healthcheck(argv, duration(vals.get("interval", 30), "interval"),
                           duration(vals.get("timeout", 30), "timeout"), retries)

    def _deploy(self, s: Service, node) -> int | None:
        path = ["resources", "limits", "memory"]
        cur = node
        for depth, want in enumerate(path):
            body = self.mapping(cur, "deploy." + ".".join(path[:depth]) if depth else "deploy")
            for k, (kn, _) in body.items():
                if k != want:
                    self.fail(kn, f"key {k!r} under deploy of service {s.name!r} is not supported "
                                  f"(supported: deploy.resources.limits.memory)")
            if want not in body:
                return None
            cur = body[want][1]
        return parse_memory(self.value(cur))


def _string(v, what: str) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError(f"{what} must be a string, not {v!r}")
    return str(v)


def _list(v, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what} must be a list")
    return v


def _strings(v, what: str) -> list[str]:
    return [_string(x, what) for x in _list(v, what)]


def _environment(v, environ) -> dict[str, str]:
    if v is None:
        return {}
    if isinstance(v, dict):
        items = [(str(k), val) for k, val in v.items()]
    else:
        items = [(e.split("=", 1)[0], e.split("=", 1)[1] if "=" in e else None) for e in _strings(v, "environment")]
    out = {}
    for k, val in items:
        if val is None:  # KEY alone: from the environment of whoever runs up, if set there
            if k in environ:
                out[k] = environ[k]
            continue
        out[k] = "true" if val is True else "false" if val is False else str(val)
    return out


def _int_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not a port number (1-65535)")
    return int(text)


def _port(p) -> str:
    """``HOST:CONTAINER`` or ``127.0.0.1:HOST:CONTAINER`` (``/tcp`` allowed), as the kit publishes it."""
    text = _string(p, "port").removesuffix("/tcp")
    parts = text.split(":")
    if len(parts) == 3 and parts[0] in ("127.0.0.1", "localhost"):
        parts = parts[1:]
    if len(parts) != 2:
        raise ValueError(f"port {p!r}: give HOST:CONTAINER (published on 127.0.0.1 only), e.g. 8080:80")
    return f"{_int_port(parts[0])}:{_int_port(parts[1])}"
