"""The Python API the magics, notebooks and scripts share: thin calls on a default :class:`~kit.Session`.

>>> import kit
>>> r = kit.run("busybox", ["sh", "-c", "exit 3"], runtime="runc")
>>> r.exit_code
3
>>> napper = kit.start("busybox", ["sleep", "300"], runtime="lxc", name="napper")   # an Instance
>>> kit.ps()                     # a DataFrame
>>> napper.rm(force=True)        # or kit.rm("napper", force=True)

The default session is made on first use (:func:`default_session`); importing the kit starts
nothing. One exit hook closes every open session, then removes this process's directory.
"""

from __future__ import annotations

import atexit
import threading
from typing import Iterable, Sequence

from . import lifetime
from . import session as _session
from ._proc import Stream
from .instance import Instance
from .result import RunResult
from .session import Session

_default: Session | None = None
_default_lock = threading.Lock()


def default_session() -> Session:
    """The session :func:`kit.run`, :func:`kit.start`, :func:`kit.ps`, ... act on, made on first use
    (and again after it was closed)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Session()
        return _default


def run(image: str | None, command: Sequence[str] | None = None, runtime: str | None = None, *,
        detach: bool = False, name: str | None = None, memory=None, cpus=None, env=None, ports: Iterable = (),
        workdir=None, timeout: float | None = None, stream: Stream | None = None, check: bool = False,
        **options) -> "RunResult | Instance":
    """Run ``command`` in ``image`` under ``runtime`` on the default session: its :class:`RunResult`, or
    with ``detach=True`` the running :class:`~kit.instance.Instance`. See :meth:`kit.Session.run`."""
    return default_session().run(image, command, runtime, detach=detach, name=name, memory=memory, cpus=cpus,
                                 env=env, ports=ports, workdir=workdir, timeout=timeout, stream=stream,
                                 check=check, **options)


def start(image: str | None, command: Sequence[str] | None = None, runtime: str | None = None, **kw) -> Instance:
    """Start a detached instance (a service) on the default session; its handle. See :meth:`kit.Session.run`."""
    return default_session().start(image, command, runtime, **kw)


def get(name: str) -> Instance:
    """The default session's live instance called ``name`` (InstanceNotFound if none)."""
    return default_session().get(name)


def ps(all: bool = True):  # noqa: A002
    """A DataFrame of the default session's instances: name, runtime, image, command, status, ..."""
    return default_session().ps(all=all)


def logs(name: str) -> RunResult:
    """What the instance has written so far, as a RunResult."""
    return default_session().logs(name)


def exec_(name: str, command: Sequence[str], stream: Stream | None = None, timeout: float | None = 60,
          check: bool = False) -> RunResult:
    """Run ``command`` inside the running instance ``name``."""
    return default_session().exec(name, command, stream=stream, timeout=timeout, check=check)


def stop(name: str, timeout: float | None = None) -> RunResult:
    """Stop ``name`` (its stop signal, then SIGKILL after ``timeout``, default its stop_timeout or 10 s);
    it stays listed until :func:`rm`."""
    return default_session().stop(name, timeout=timeout)


def rm(name: str, force: bool = False) -> None:
    """Remove ``name`` and all it left (state, mounts, cgroup); ``force`` stops it first."""
    default_session().rm(name, force=force)


def prune(dead_sessions: bool = True, templates: bool = False) -> list[str]:
    """Remove every instance of the default session, and what dead sessions left; say what went
    (see :meth:`kit.Session.prune`)."""
    return default_session().prune(dead_sessions=dead_sessions, templates=templates)


def wait_for_teardown(name: str | None = None, timeout: float = 30) -> float | None:
    """Wait until the background teardown of ``name`` (or of every instance) is done; see
    :meth:`kit.Session.wait_for_teardown`."""
    return default_session().wait_for_teardown(name, timeout)


def wait_until_quiet(timeout: float = 60.0) -> None:
    """Block until nothing the default session runs in the background is still running (teardowns,
    warm-pool refills, the dead-session sweep); see :meth:`kit.Session.wait_idle`."""
    default_session().wait_idle(timeout)


def _at_exit() -> None:
    """The kit's one exit hook: every open session closed (each in its defined order), then this
    process's directory removed."""
    try:
        _session.close_all()
    finally:
        lifetime.remove_own_directory()


atexit.register(_at_exit)
