"""Named volumes, and the resolution of every ``-v SRC:DEST[:ro]`` into a host directory.

A named volume is a directory the kit keeps apart from any instance, as
``docker volume`` does::

    $KIT_HOME/volumes/NAME/data/           what instances see at DEST
    $KIT_HOME/volumes/NAME/volume.json     name and creation time
    $KIT_HOME/volumes/NAME/users/S.I       one marker per live instance I of session S using it

Every runtime mounts the same host directory (runc/crun/runsc and Docker as a bind
mount, LXC through ``lxc.mount.entry``, QEMU through its own 9p server), so data
written by one runtime is read by the next. Removing an instance never removes a
volume; :func:`rm` refuses a volume that a live instance of any session uses
(markers of sessions whose owner is gone, see :mod:`kit.lifetime`, do not count).

>>> import kit
>>> kit.volumes.create("data")
>>> kit.run("busybox", ["sh", "-c", "echo hi > /data/f"], runtime="runc", volumes=["data:/data"])
>>> kit.volumes.ls()          # name, path, size, users, created
>>> kit.volumes.rm("data")
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import config, lifetime
from .errors import InvalidSpec, VolumeInUse, VolumeNotFound
from .spec import Mount, check_name, parse_volume, show
from .usage import disk_usage


@dataclass(frozen=True)
class Resolved:
    """A mount ready for a runtime: ``host`` is the directory every runtime mounts at ``target``."""

    source: str
    target: str
    read_only: bool
    kind: str
    host: Path


def root() -> Path:
    """``$KIT_HOME/volumes``."""
    return config.home() / "volumes"


def _dir(name: str) -> Path:
    return root() / name


@contextmanager
def _locked():
    """One lock for every change to volumes and their markers, across threads and processes
    (flock locks belong to an open file, so two opens in one process exclude each other too)."""
    root().mkdir(parents=True, exist_ok=True)
    with open(root() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check(name: str) -> str:
    try:
        return check_name(str(name))
    except InvalidSpec:
        raise InvalidSpec(f"volume name {show(name)} is not valid: use 1-63 letters, digits, '_', '.' or '-', "
                          f"starting with a letter or digit (no '/' or '..')") from None


def _exists(name: str) -> bool:
    return (_dir(name) / "volume.json").is_file() and (_dir(name) / "data").is_dir()


def _create(name: str) -> Path:
    d = _dir(name)
    if not _exists(name):
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "users").mkdir(exist_ok=True)
        (d / "volume.json").write_text(json.dumps({"name": name, "created": time.time()}))
    return d / "data"


def create(name: str) -> dict:
    """Create the named volume ``name`` (an existing one is kept as it is); return :func:`inspect`."""
    _check(name)
    with _locked():
        _create(name)
    return inspect(name)


def _users(name: str, prune: bool = False) -> list[dict]:
    """Live users of ``name``: markers of this session, or of sessions whose owner is alive.

    With ``prune``, markers of dead sessions are deleted (call under the lock).
    """
    out = []
    d = _dir(name) / "users"
    try:
        markers = sorted(d.iterdir())
    except OSError:
        return out
    for m in markers:
        try:
            info = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        session = info.get("session", "")
        if session == config.SESSION_ID or lifetime.owner_alive(session):
            out.append(info)
        elif prune:
            m.unlink(missing_ok=True)
    return out


def _size(path: Path) -> int:
    """Allocated bytes under ``path`` (each inode once, not crossing mounts)."""
    return disk_usage(path).allocated


def inspect(name: str) -> dict:
    """``name``, ``path`` (the data directory), ``size`` (allocated bytes), ``users``, ``created``.

    Raises:
        VolumeNotFound: there is no such volume.
    """
    _check(name)
    if not _exists(name):
        raise VolumeNotFound(f"no volume named {show(name)}: see kit.volumes.ls(), or create it with "
                             f"kit.volumes.create({name!r})")
    meta = json.loads((_dir(name) / "volume.json").read_text())
    users = [f"{u['instance']} ({u.get('runtime', '?')}, session {u['session']})" for u in _users(name)]
    return {"name": name, "path": str(_dir(name) / "data"), "size": _size(_dir(name) / "data"),
            "users": users, "created": meta.get("created")}


def names() -> list[str]:
    try:
        return sorted(d.name for d in root().iterdir() if d.is_dir() and _exists(d.name))
    except OSError:
        return []


def ls():
    """A DataFrame of every named volume: name, path, size (allocated bytes), users, created."""
    import pandas as pd

    rows = []
    for n in names():
        try:
            v = inspect(n)
        except VolumeNotFound:  # removed meanwhile
            continue
        rows.append({**v, "users": ", ".join(v["users"]),
                     "created": pd.Timestamp(v["created"] or 0, unit="s", tz="UTC").floor("s")})
    return pd.DataFrame(rows, columns=["name", "path", "size", "users", "created"])


def rm(name: str) -> None:
    """Remove the named volume and its data.

    Raises:
        VolumeInUse: a live instance (of any session) uses it: remove that instance first.
        VolumeNotFound: there is no such volume.
    """
    from . import api

    _check(name)
    api.wait_for_teardown()  # finished foreground runs of this session release their volumes first
    with _locked():
        if not _exists(name):
            raise VolumeNotFound(f"no volume named {show(name)}: see kit.volumes.ls()")
        users = _users(name, prune=True)
        if users:
            who = ", ".join(u["instance"] for u in users[:3]) + (", ..." if len(users) > 3 else "")
            raise VolumeInUse(f"volume {name!r} is in use by {who}: remove those instances first")
        # Renamed first: a half-deleted volume is never seen as one.
        trash = root() / f".rm-{name}-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(_dir(name), trash)
    shutil.rmtree(trash, ignore_errors=True)


def _bind(m: Mount) -> Path:
    where = f"volume {show(f'{m.source}:{m.target}')}"
    host = Path(m.source)
    if not host.exists():
        raise InvalidSpec(f"{where}: the host directory {m.source} does not exist: create it first, or use a "
                          f"named volume (NAME:{m.target})")
    if not host.is_dir():
        raise InvalidSpec(f"{where}: {m.source} is not a directory: give a directory to share")
    if os.path.realpath(host) == "/":
        raise InvalidSpec(f"{where}: the host's root directory cannot be shared: give the directory to share")
    return host


def attach(name: str, mounts, runtime: str = "") -> list[Resolved]:
    """Resolve ``mounts`` (:class:`~kit.spec.Mount` s) for instance ``name`` of this session, run by ``runtime``.

    Host directories must exist; named volumes are created on first use (as Docker
    does) and get a user marker, so :func:`rm` refuses them until :func:`detach`.
    Every host directory is checked before any volume is created or marked.

    Raises:
        InvalidSpec: a missing host directory, a file, or the host's root.
    """
    mounts = [parse_volume(m) for m in mounts]
    hosts = {i: _bind(m) for i, m in enumerate(mounts) if m.kind == "bind"}
    if not any(m.kind == "volume" for m in mounts):
        return [Resolved(m.source, m.target, m.read_only, m.kind, hosts[i]) for i, m in enumerate(mounts)]
    return _attach_named(name, mounts, hosts, runtime)


def _attach_named(name, mounts, hosts, runtime) -> list[Resolved]:
    out = []
    with _locked():
        for i, m in enumerate(mounts):
            if m.kind == "volume":
                _check(m.source)
                hosts[i] = _create(m.source)
                marker = _dir(m.source) / "users" / f"{config.SESSION_ID}.{name}"
                marker.write_text(json.dumps({"session": config.SESSION_ID, "instance": name,
                                              "runtime": runtime, "pid": os.getpid(),
                                              "since": time.time()}))
            out.append(Resolved(m.source, m.target, m.read_only, m.kind, hosts[i]))
    return out


def detach(name: str, mounts) -> None:
    """Drop instance ``name``'s markers (its volumes stay, data and all)."""
    named = {m.source for m in mounts if m.kind == "volume"}
    if not named:
        return
    with _locked():
        for v in named:
            (_dir(v) / "users" / f"{config.SESSION_ID}.{name}").unlink(missing_ok=True)

