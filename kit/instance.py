"""The handle of one live instance: what :func:`kit.start` returns (docker-py's ``Container`` model).

>>> import kit
>>> with kit.start("busybox", ["sleep", "300"], runtime="runc") as napper:
...     napper.exec(["echo", "hi"]).stdout
...     napper.pids(), napper.memory()["pss"]
'hi\\n'
>>> # removed on leaving the block, as napper.rm(force=True) would

An :class:`Instance` belongs to the :class:`kit.Session` that started it; its name-based
counterparts (``kit.logs(name)``, ``kit.rm(name)``, ...) find it there by name. Underneath it is
the runtime's record of the instance (:attr:`Instance.state`, a
:class:`~kit.runtimes.base.InstanceState`) and the runtime that drives it (:attr:`Instance.backend`),
the low layer that measurement reads, as docker-py's models sit on its ``APIClient``.
"""

from __future__ import annotations

import html
import subprocess
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

from . import usage
from ._proc import Stream, wait_until
from .errors import InstanceNotFound, InvalidSpec, KitError, KitTimeout, StartFailed
from .result import RunResult
from .runtimes.base import InstanceState
from .runtimes.base import Runtime
from .spec import check_argv


class Owner(Protocol):
    """What a handle needs of the session that owns it (:class:`kit.Session`)."""

    def rm(self, instance: "str | Instance", force: bool = False) -> None: ...


def result_of(rt: Runtime, state: InstanceState, out: bytes = b"", err: bytes = b"") -> RunResult:
    """The :class:`~kit.result.RunResult` of ``state`` as it stands, with the output given."""
    phases = dict(state.phases)
    return RunResult(
        runtime=rt.name, image=state.image.name if state.image else None, name=state.name,
        command=list(state.spec.command), exit_code=state.exit_code, stdout_bytes=out, stderr_bytes=err,
        started_at=phases.get("launched", state.created_at), ended_at=phases.get("exited"),
        oom_killed=state.oom_killed, timed_out=state.timed_out, detached=state.spec.detach,
        phases=phases, info=dict(state.info),
    )


class Instance:
    """A live container, VM or process of a session.

    Attributes:
        name: its name in its session (``kit.logs(name)`` finds it by this).
        state: the runtime's record of it (:class:`~kit.runtimes.base.InstanceState`): spec,
            process, state directory; for measurement.
        backend: the :class:`~kit.runtimes.base.Runtime` that drives it.
        session: the :class:`kit.Session` it belongs to.
    """

    def __init__(self, session: Owner, backend: Runtime, state: InstanceState):
        self.session, self.backend, self.state = session, backend, state

    # -- what it is ------------------------------------------------------
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def runtime(self) -> str:
        """The runtime's name: ``process``, ``runc``, ``lxc``, ``docker``, ``qemu``..."""
        return self.backend.name

    @property
    def image(self) -> str | None:
        """The image's name (None for a bare process)."""
        return self.state.image.name if self.state.image else None

    @property
    def id(self) -> str:
        """The runtime's own id (``kit-<owner>-<session>-<name>``; a warm start's is its pooled container's)."""
        return self.state.id

    @property
    def created_at(self) -> float:
        """When the kit made its record (epoch seconds); :attr:`phases` say when it launched."""
        return self.state.created_at

    @property
    def ports(self) -> list[tuple[int, int]]:
        """The published ports, as (host port on 127.0.0.1, port inside)."""
        return list(self.state.spec.ports)

    @property
    def cgroup(self) -> Path | None:
        """The cgroup directory its memory is counted in (None where the host gives the kit none)."""
        return self.backend.cgroup_path(self.state)

    @property
    def phases(self) -> dict[str, float]:
        """Milestones of its start (epoch seconds): ``requested``, ``launched``, ``started``, ..."""
        return self.state.phases

    @property
    def info(self) -> dict:
        """What its runtime recorded (see :class:`~kit.runtimes.base.Info` for the keys)."""
        return self.state.info

    @property
    def status(self) -> str:
        """``running``, ``exited (CODE)``, ``removed``, or how it ended when its command did not simply
        exit: ``killed (SIGKILL)`` (from outside, or its runtime's own process: ``killed (SIGKILL): runc
        run, its monitor``), ``oom_killed``, ``guest panic: <last console lines>``. When its runtime
        cannot say (Docker's daemon down), what is wrong: ``docker: daemon not answering at ...``."""
        if self.state.removed:
            return "removed"
        try:
            if self.backend.running(self.state):
                return "running"
            if self.state.exit_code is None:
                try:  # it has ended: collect its exit code without blocking
                    self.backend.wait(self.state, timeout=0.01)
                except Exception:
                    pass
            self.backend.unpublish(self.state)  # ended by itself: its ports go, as at stop
            return self.backend.end_reason(self.state) or f"exited ({self.state.exit_code})"
        except KitError as e:  # one runtime's fault is its instances' status, never ps's failure
            return str(e)

    # -- what it does ----------------------------------------------------
    def logs(self) -> RunResult:
        """What it has written so far (``.stdout``, ``.stderr``), with its status, as :func:`kit.logs`."""
        out, err = self.backend.logs(self.state)
        return result_of(self.backend, self.state, out, err)

    def result(self) -> RunResult:
        """Its record as a :class:`~kit.result.RunResult` (exit code, phases, info), without its output."""
        return result_of(self.backend, self.state)

    def exec(self, command: Sequence[str], stream: Stream | None = None, timeout: float | None = 60,
             check: bool = False) -> RunResult:
        """Run ``command`` inside it (it must be running); ``check`` raises on a non-zero exit."""
        if isinstance(command, str) or not command:
            raise InvalidSpec("exec needs a command as a list of arguments, e.g. ['ps']")
        argv = check_argv([str(c) for c in command])
        if not self.backend.running(self.state):
            raise InstanceNotFound(f"instance {self.name!r} is not running, so nothing can be exec'd in it: "
                                   f"see its logs, rm it, and start a new one")
        t0 = time.time()
        code, out, err = self.backend.exec(self.state, argv, stream=stream, timeout=timeout)
        r = RunResult(runtime=self.runtime, image=self.image, name=self.name, command=argv, exit_code=code,
                      stdout_bytes=out, stderr_bytes=err, started_at=t0, ended_at=time.time())
        return r.check() if check else r

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until it exits; its result with everything it wrote.

        Raises:
            KitTimeout: it still runs after ``timeout`` seconds (nothing is killed).
        """
        try:
            self.backend.wait(self.state, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise KitTimeout(f"{self.name!r} did not exit within {timeout:g} s") from None
        self.state.phases.setdefault("exited", time.time())
        self.backend.unpublish(self.state)
        return self.logs()

    def wait_until(self, predicate: Callable[[], object], timeout: float, interval: float = 0.05,
                   what: str = "condition", ignoring: tuple[type[BaseException], ...] = ()):
        """Poll ``predicate`` until it is truthy, as :func:`kit.wait_until`, while this instance runs:
        e.g. until the service it runs answers a real client on its published port.

        >>> import redis
        >>> cache.wait_until(redis.Redis(port=port).ping, 60, what="redis to answer", ignoring=(redis.ConnectionError,))

        Returns:
            The truthy value.

        Raises:
            StartFailed: it exited first (at once, not at the deadline), with the last line it wrote.
            KitTimeout: ``predicate`` did not hold within ``timeout`` seconds (it keeps running).
        """
        def ready():
            if not self.backend.running(self.state):
                out = self.logs()
                last = ((out.stderr or out.stdout).strip().splitlines() or ["(no output)"])[-1]
                raise StartFailed(f"{self.name!r} ({self.runtime}) {self.status} before {what}: {last[:300]}")
            return predicate()

        return wait_until(ready, timeout, interval=interval, what=f"{what} ({self.name!r}, {self.runtime})",
                          ignoring=ignoring)

    def stop(self, timeout: float | None = None) -> RunResult:
        """Stop it (its stop signal, SIGTERM by default, then SIGKILL after ``timeout``, default its spec's
        ``stop_timeout`` or 10 s) and release its published ports; it stays listed until :meth:`rm`."""
        if timeout is None:
            timeout = self.state.spec.stop_timeout if self.state.spec.stop_timeout is not None else 10.0
        if self.backend.running(self.state):  # its end is this stop's (status: exited, not killed)
            self.state.info["stopped"] = True
        self.backend.stop(self.state, timeout=timeout)
        try:
            self.backend.wait(self.state, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            self.backend.kill(self.state)
            raise KitTimeout(f"{self.name!r} did not stop within {timeout + 5:g} s and was killed") from None
        finally:
            self.backend.unpublish(self.state)
        self.state.phases.setdefault("exited", time.time())
        return self.logs()

    def rm(self, force: bool = False) -> None:
        """Remove it and all it left (state, mounts, cgroup); ``force`` stops it first."""
        self.session.rm(self, force=force)

    # -- what it costs ---------------------------------------------------
    def pids(self) -> list[int]:
        """Its host PIDs: the workload and what runs it (shims, QEMU, gVisor's sentry and gofer)."""
        return self.backend.pids(self.state)

    def memory(self) -> dict[str, int | None]:
        """What it uses now, in bytes.

        Returns:
            ``pss``, ``uss``, ``rss``: its own host processes (its per-instance monitor, such as
            ``runc run`` or containerd's shim, left out); ``monitor_pss``: that monitor's;
            ``cgroup_usage`` and ``cgroup_working_set``: its memory cgroup's (None without one).

        Raises:
            PartialMemory: one of its processes exists but cannot be read (the figure would be too small).
        """
        monitors = set(self.backend.monitor_pids(self.state))
        own = usage.read(set(self.pids()) - monitors).checked()
        cg_usage, working_set = usage.cgroup_memory(self.cgroup)
        return {"pss": own.total("pss"), "uss": own.total("uss"), "rss": own.total("rss"),
                "monitor_pss": usage.read(monitors).checked().pss, "cgroup_usage": cg_usage,
                "cgroup_working_set": working_set}

    # -- a context manager that removes it -------------------------------
    def __enter__(self) -> "Instance":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.rm(force=True)
        except InstanceNotFound:  # removed inside the block already
            pass

    def __repr__(self) -> str:
        return f"<Instance {self.name} ({self.runtime}, {self.image or '-'}): {self.status}>"

    def _repr_html_(self) -> str:
        ports = ", ".join(f"127.0.0.1:{h}->{c}" for h, c in self.ports) or "-"
        cells = [("name", self.name), ("runtime", self.runtime), ("image", self.image or "-"),
                 ("status", self.status), ("ports", ports), ("id", self.id)]
        head = "".join(f"<th>{k}</th>" for k, _ in cells)
        row = "".join(f"<td>{html.escape(str(v))}</td>" for _, v in cells)
        return f"<table><tr>{head}</tr><tr>{row}</tr></table>"
