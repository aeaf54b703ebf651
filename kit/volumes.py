"""Named volumes (as ``docker volume``), on the default session.

>>> import kit
>>> kit.volumes.create("data")
>>> kit.run("busybox", ["sh", "-c", "echo hi > /data/f"], runtime="runc", volumes=["data:/data"])
>>> kit.volumes.ls()          # name, path, size, users, created
>>> kit.volumes.rm("data")

The store and its rules (one directory every runtime mounts, a marker per instance using a
volume, refused removal while one does) are :mod:`kit.volumestore`'s; a :class:`kit.Session`
marks what its instances use (``session.volumes``). These functions act on the default session's.
"""

from __future__ import annotations

from . import api
from .volumestore import Resolved, root  # noqa: F401  (where volumes live; a mount resolved for a runtime)


def create(name: str) -> dict:
    """Create the named volume ``name`` (an existing one is kept as it is); return :func:`inspect`."""
    return api.default_session().volumes.create(name)


def inspect(name: str) -> dict:
    """``name``, ``path`` (the data directory), ``size`` (allocated bytes), ``users``, ``created``."""
    return api.default_session().volumes.inspect(name)


def names() -> list[str]:
    return api.default_session().volumes.names()


def ls():
    """A DataFrame of every named volume: name, path, size (allocated bytes), users, created."""
    return api.default_session().volumes.ls()


def rm(name: str) -> None:
    """Remove the named volume and its data (VolumeInUse while a live instance of any session uses it)."""
    api.default_session().volumes.rm(name)
