"""Warm starts on the default session: ``start="precreated"`` containers made ahead, ``snapshot`` checkpoints.

>>> import kit
>>> kit.warm.prepare("busybox", ["echo", "hi"], "runc")   # one container made ahead
1
>>> kit.run("busybox", ["echo", "hi"], runtime="runc", start="precreated").info["pool"]
'hit'
>>> kit.warm.ls()          # what waits (a DataFrame)
>>> kit.warm.clear()       # also done when the session closes, and by kit.prune()

The policy (keys, bound, refills, what a hit and a miss mean) is :mod:`kit.pool`'s, one pool per
:class:`kit.Session` (``session.warm``); what each runtime does is its own (the optional
``create``/``start_created`` and ``checkpoint``/``restore`` of :class:`~kit.runtimes.base.Runtime`).
"""

from __future__ import annotations

from . import api


def prepare(image: str, command, runtime: str, n: int = 1, **kw) -> int:
    """Create ``n`` containers ahead of time for runs of ``command`` in ``image`` under ``runtime``
    (the same keywords as :func:`kit.run`); return how many were made."""
    return api.default_session().prewarm(image, command, runtime, n, **kw)


def ls():
    """The pre-created containers waiting in the default session's pool (a DataFrame)."""
    return api.default_session().warm.ls()


def clear() -> list[str]:
    """Remove every pre-created container and checkpoint of the default session; say what went."""
    return api.default_session().warm.clear()
