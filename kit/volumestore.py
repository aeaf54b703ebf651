"""Named volumes' mechanism, and the resolution of every ``-v SRC:DEST[:ro]`` into a host directory.

A named volume is a directory the kit keeps apart from any instance, as
``docker volume`` does::

    $KIT_HOME/volumes/NAME/data/             what instances see at DEST
    $KIT_HOME/volumes/NAME/volume.json       name and creation time
    $KIT_HOME/volumes/NAME/users/O.S.I       one marker per live instance I of session S of process O using it

Every runtime mounts the same host directory (runc/crun/runsc and Docker as a bind
mount, LXC through ``lxc.mount.entry``, QEMU through its own 9p server), so data
written by one runtime is read by the next. Removing an instance never removes a
volume; :meth:`Volumes.rm` refuses a volume that a live instance of any session uses
(markers of processes that are gone, see :mod:`kit.lifetime`, do not count).

The store is host-wide (one directory, one lock across processes); a :class:`Volumes` is one
session's view of it, whose instances' markers it writes (``session.volumes``; the module-level
:mod:`kit.volumes` functions act on the default session's).
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
from typing import Callable

from . import config, faults
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


def names() -> list[str]:
    """Every named volume on this host (for this ``$KIT_HOME``)."""
    try:
        return sorted(d.name for d in root().iterdir() if d.is_dir() and _exists(d.name))
    except OSError:
        return []


def _bind(m: Mount) -> Path:
    where = f"volume {show(f'{m.source}:{m.target}')}"
    host = Path(m.source)
    if not host.exists():
        raise InvalidSpec(f"{where}: the host path {m.source} does not exist: create it first, or use a "
                          f"named volume (NAME:{m.target})")
    if not host.is_dir() and not host.is_file():  # a file is bound alone (a compose config, nginx.conf)
        raise InvalidSpec(f"{where}: {m.source} is neither a directory nor a file: give a directory or file to share")
    if os.path.realpath(host) == "/":
        raise InvalidSpec(f"{where}: the host's root directory cannot be shared: give the directory to share")
    return host


def _always(_owner: str) -> bool:
    return True


def _nothing() -> None:
    return None


class Volumes:
    """One session's view of the volume store: it marks the volumes its instances use.

    Args:
        owner: the process's id (markers of live processes hold a volume).
        session: the session's token (with the owner's, in its markers' names).
        alive: whether another process's id is still alive (:func:`kit.lifetime.owner_alive`).
        settle: waits for the session's background teardowns (they release their volumes), before :meth:`rm`.
    """

    def __init__(self, owner: str, session: str, alive: Callable[[str], bool] = _always,
                 settle: Callable[[], object] = _nothing):
        self.owner, self.session, self.alive, self.settle = owner, session, alive, settle

    def _marker(self, volume: str, instance: str) -> Path:
        return _dir(volume) / "users" / f"{self.owner}.{self.session}.{instance}"

    def create(self, name: str) -> dict:
        """Create the named volume ``name`` (an existing one is kept as it is); return :meth:`inspect`."""
        _check(name)
        with faults.writing(root(), f"creating volume {name!r}"), _locked():
            _create(name)
        return self.inspect(name)

    def _users(self, name: str, prune: bool = False) -> list[dict]:
        """Live users of ``name``: markers of this process, or of processes that are alive.

        With ``prune``, markers of dead processes are deleted (call under the lock).
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
            owner = info.get("session", "")
            if owner == self.owner or self.alive(owner):
                out.append(info)
            elif prune:
                m.unlink(missing_ok=True)
        return out

    def inspect(self, name: str) -> dict:
        """``name``, ``path`` (the data directory), ``size`` (allocated bytes), ``users``, ``created``.

        Raises:
            VolumeNotFound: there is no such volume.
        """
        _check(name)
        if not _exists(name):
            raise VolumeNotFound(f"no volume named {show(name)}: see kit.volumes.ls(), or create it with "
                                 f"kit.volumes.create({name!r})")
        meta = json.loads((_dir(name) / "volume.json").read_text())
        users = [f"{u['instance']} ({u.get('runtime', '?')}, session {u['session']})" for u in self._users(name)]
        return {"name": name, "path": str(_dir(name) / "data"), "size": disk_usage(_dir(name) / "data").allocated,
                "users": users, "created": meta.get("created")}

    def names(self) -> list[str]:
        return names()

    def ls(self):
        """A DataFrame of every named volume: name, path, size (allocated bytes), users, created."""
        import pandas as pd

        rows = []
        for n in names():
            try:
                v = self.inspect(n)
            except VolumeNotFound:  # removed meanwhile
                continue
            rows.append({**v, "users": ", ".join(v["users"]),
                         "created": pd.Timestamp(v["created"] or 0, unit="s", tz="UTC").floor("s")})
        return pd.DataFrame(rows, columns=["name", "path", "size", "users", "created"])

    def rm(self, name: str) -> None:
        """Remove the named volume and its data.

        Raises:
            VolumeInUse: a live instance (of any session) uses it: remove that instance first.
            VolumeNotFound: there is no such volume.
        """
        _check(name)
        self.settle()  # finished foreground runs of this session release their volumes first
        with _locked():
            if not _exists(name):
                raise VolumeNotFound(f"no volume named {show(name)}: see kit.volumes.ls()")
            users = self._users(name, prune=True)
            if users:
                who = ", ".join(u["instance"] for u in users[:3]) + (", ..." if len(users) > 3 else "")
                raise VolumeInUse(f"volume {name!r} is in use by {who}: remove those instances first")
            # Renamed first: a half-deleted volume is never seen as one.
            trash = root() / f".rm-{name}-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(_dir(name), trash)
        shutil.rmtree(trash, ignore_errors=True)

    def attach(self, name: str, mounts, runtime: str = "") -> list[Resolved]:
        """Resolve ``mounts`` (:class:`~kit.spec.Mount` s) for instance ``name`` of this session, run by ``runtime``.

        Host directories and files must exist; named volumes are created on first use (as Docker
        does) and get a user marker, so :meth:`rm` refuses them until :meth:`detach`.
        Every host directory is checked before any volume is created or marked.

        Raises:
            InvalidSpec: a missing host path, one neither a directory nor a file (a device, a socket), or
                the host's root.
        """
        mounts = [parse_volume(m) for m in mounts]
        hosts = {i: _bind(m) for i, m in enumerate(mounts) if m.kind == "bind"}
        if not any(m.kind == "volume" for m in mounts):
            return [Resolved(m.source, m.target, m.read_only, m.kind, hosts[i]) for i, m in enumerate(mounts)]
        out = []
        with faults.writing(root(), f"preparing the volumes of {name!r}"), _locked():
            for i, m in enumerate(mounts):
                if m.kind == "volume":
                    _check(m.source)
                    hosts[i] = _create(m.source)
                    self._marker(m.source, name).write_text(json.dumps({
                        "session": self.owner, "kit_session": self.session, "instance": name, "runtime": runtime,
                        "pid": os.getpid(), "since": time.time()}))
                out.append(Resolved(m.source, m.target, m.read_only, m.kind, hosts[i]))
        return out

    def detach(self, name: str, mounts) -> None:
        """Drop instance ``name``'s markers (its volumes stay, data and all)."""
        named = {m.source for m in mounts if m.kind == "volume"}
        if not named:
            return
        with _locked():
            for v in named:
                self._marker(v, name).unlink(missing_ok=True)
