"""Kit networks on the default session: instances that reach each other by name, on loopback only.

>>> import kit
>>> kit.networks.create("backend")
>>> kit.start("debian-redis", ["redis-server", "--protected-mode", "no"], runtime="runsc",
...           name="cache", network="backend")
>>> kit.run("debian-redis", ["redis-cli", "-h", "cache", "ping"], runtime="runc", network="backend").stdout
'PONG\\n'
>>> kit.rm("cache", force=True); kit.networks.rm("backend")

What a network is (one namespace its members share, its holder, its hosts file, a VM member's
view) is :mod:`kit.netspace`'s, one collection per :class:`kit.Session` (``session.networks``);
these functions act on the default session's.
"""

from __future__ import annotations

from . import api
from .netspace import GUEST_GATEWAY, HOLDERS, Network  # noqa: F401  (what a network is, for callers)
from .spec import parse_expose  # noqa: F401  (a VM member's --expose, read as the runtimes read it)


def create(name: str, holder: str | None = None) -> Network:
    """Create the network ``name``: a loopback-only namespace and its holder (see
    :meth:`kit.netspace.Networks.create`)."""
    return api.default_session().networks.create(name, holder)


def get(name: str) -> Network:
    """The network ``name``; NetworkNotFound if there is none."""
    return api.default_session().networks.get(name)


def inspect(name: str) -> dict:
    """What the network is made of: holder, namespace, hosts file, members."""
    return api.default_session().networks.inspect(name)


def ls():
    """A DataFrame of the default session's networks: name, members, holder, created."""
    return api.default_session().networks.ls()


def names() -> list[str]:
    return api.default_session().networks.names()


def rm(name: str, force: bool = False) -> None:
    """Remove the network ``name`` and its holder; refused while it has members, unless ``force``."""
    api.default_session().networks.rm(name, force=force)


def remove_all() -> None:
    """Remove every network of the default session."""
    api.default_session().networks.remove_all()
