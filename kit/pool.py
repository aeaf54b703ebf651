"""Warm starts' policy: containers created ahead of time (``start="precreated"``) and services
checkpointed once and restored (``start="snapshot"``), one :class:`Warm` per :class:`kit.Session`.

A cold start pays for everything at the start request: the kit's preparation (cgroup,
overlay, bundle), the runtime's ``create`` (namespaces, mounts, cgroup placement) and its
``start``. A pre-created start pays only the last when its container was made earlier (by
:meth:`Warm.fill`, or by the refill after the previous run): ``pool: hit``. When none was
waiting at the request, the request makes its own (``pool: miss``) and pays for it: the startup
clock (``requested``, stamped by the session as for a cold start) runs through the preparation,
so a miss is never shown as a warm start (:mod:`kit.bench` keeps misses out of warm medians
unless asked). ``info["pool"]`` says which; ``info["warm"]`` also holds ``prepare_s`` (how long
creating the container took) and the pooled instance's id.

How the command gets in: the OCI process (argv, env, cwd) is fixed when the container is
created (``runc create`` hands it to the container's init, which waits on its exec FIFO), and
``docker create`` fixes it too. A waiting init that receives the command later would put its
own exec and hand-off inside the measured span and make PID 1 something other than the command
(signals, exit codes). So the pool is keyed by everything a created container has fixed --
runtime, image id, command, environment, working directory, limits, read-only, hardening and an
explicit hostname -- as a serverless platform keeps containers warm per function. Repeated runs
of one command (a study's samples) find their container waiting; the started process is exactly
the one a cold run starts. Only the default hostname differs: it is the pooled container's name.

What each runtime does is its own (the optional :class:`~kit.runtimes.base.Runtime` methods
``create``/``start_created`` and ``checkpoint``/``restore``, offered as its ``start_modes``
say); this module keeps only the policy: the keys, the bound, the refills and the waiting.

The pool is bounded (:data:`PER_KEY` waiting containers per key, :data:`LIMIT` in all; the
oldest goes first), thread-safe, refilled in the background after a foreground run exits, and a
start request first waits for refills in flight, so no preparation runs beside a start (one it
waited for did not have its container waiting: a miss). :meth:`kit.Session.wait_idle` waits for
the refills too, so a measurement starts with none in flight. Pooled containers carry the
session's ids (``kit-<owner>-<session>-warm-...``, Docker label ``kit.session``), so
:meth:`Warm.clear` (when the session closes, and in :meth:`kit.Session.prune`) and the
dead-session sweep after a SIGKILL remove them like any instance.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ._proc import Stream, last_line
from .errors import InvalidSpec, KitError, KitTimeout, StartFailed
from .runtimes.base import Context, Runtime
from .runtimes.base import InstanceState

#: Waiting containers per key, and in all.
PER_KEY = 1
LIMIT = 8
#: Seconds a ``create`` may take before the preparation is abandoned (and cleaned up).
CREATE_DEADLINE = 60.0
#: Seconds a template service runs before it is checkpointed: its own start-up, which the kit cannot
#: see (``kit.start(..., start="snapshot", settle=S)`` for a slower one).
SETTLE = 1.0


def _nothing() -> None:
    pass


@dataclass
class Entry:
    """One container created ahead of time, waiting in the pool."""

    key: tuple
    runtime: Runtime
    inst: InstanceState
    prepare_s: float
    made_at: float = field(default_factory=time.time)


def key(rt: Runtime, spec, image) -> tuple:
    """What a created container has fixed: runs that agree on it can share a pool."""
    hostname = spec.hostname if spec.hostname != spec.name[:63] else None
    return (rt.name, image.id if image is not None else None, tuple(spec.command), tuple(sorted(spec.env.items())),
            spec.workdir, spec.memory, spec.cpus, spec.read_only, spec.harden, hostname,
            tuple(sorted((k, repr(v)) for k, v in spec.options.items())))


def pooled(rt: Runtime, spec) -> bool:
    """Whether a start of ``spec`` goes through the pool: a warm mode ``rt`` offers through its optional
    methods rather than its own :meth:`~kit.runtimes.base.Runtime.start` (a VM restores its templates there)."""
    return spec.start != "cold" and spec.start not in rt.own_start_modes


def check(rt: Runtime, spec) -> None:
    """Refuse, before anything starts, a start mode ``rt`` does not offer for ``spec`` (InvalidSpec)."""
    why = rt.start_mode_refusal(spec.start)
    if not why and pooled(rt, spec) and (spec.ports or spec.volumes or spec.network):
        why = (f"a {spec.start} run takes no ports, volumes or network yet (they are bound when the container "
               "is created): use start='cold'")
    if not why and pooled(rt, spec) and spec.start == "snapshot" and not spec.detach:
        why = "a container snapshot restores a checkpointed service: start it detached (kit.start, -d)"
    if why:
        raise InvalidSpec(why)


# -- the pool --------------------------------------------------------------------
class Pool:
    """Containers created ahead of time, per :func:`key`; bounded and thread-safe.

    Args:
        ctx: the session's context (its ids and state directory).
        before_create: called before each container is made (the session starts its reaper, so a
            SIGKILLed session's pooled containers are swept like its instances).
    """

    def __init__(self, ctx: Context, per_key: int = PER_KEY, limit: int = LIMIT,
                 before_create: Callable[[], None] = _nothing):
        self.ctx, self.per_key, self.limit, self.before_create = ctx, per_key, limit, before_create
        self._cond = threading.Condition()
        self._entries: list[Entry] = []  # oldest first
        self._filling = 0

    def prepare(self, rt: Runtime, spec, image) -> Entry:
        """Create one container for ``spec`` now (not pooled); its preparation time measured."""
        if "precreated" not in rt.start_modes:
            raise InvalidSpec(rt.start_mode_refusal("precreated"))
        self.before_create()
        token = secrets.token_hex(4)
        pspec = replace(spec, name=f"warm-{token}", detach=False, timeout=None)
        if spec.hostname == spec.name[:63]:
            pspec.hostname = pspec.name
        t0 = time.perf_counter()
        inst = rt.new_instance(pspec, image, self.ctx)
        try:
            rt.create(inst)
        except BaseException:
            rt.remove(inst)
            raise
        return Entry(key(rt, spec, image), rt, inst, time.perf_counter() - t0)

    def fill(self, rt: Runtime, spec, image, n: int | None = None) -> int:
        """Create containers for ``spec`` until ``n`` (default :attr:`per_key`) wait; return how many were made."""
        want, made = self.per_key if n is None else n, 0
        k = key(rt, spec, image)
        with self._cond:
            self._filling += 1
        try:
            while self.count(k) < want:
                self._add(self.prepare(rt, spec, image))
                made += 1
        finally:
            with self._cond:
                self._filling -= 1
                self._cond.notify_all()
        return made

    def fill_soon(self, rt: Runtime, spec, image) -> threading.Thread:
        """:meth:`fill` in the background (a start request waits for it: see :meth:`take`)."""
        with self._cond:  # counted at once, so a take that follows waits for it
            self._filling += 1

        def work():
            try:
                self.fill(rt, spec, image)
            except KitError:
                pass  # the next start request prepares its own and reports why, if it fails again
            finally:
                with self._cond:
                    self._filling -= 1
                    self._cond.notify_all()

        t = threading.Thread(target=work, name="kit-warm-fill", daemon=True)
        t.start()
        return t

    def take(self, rt: Runtime, spec, image, timeout: float = CREATE_DEADLINE) -> tuple[Entry | None, bool]:
        """(a waiting container for ``spec``, removed from the pool, or None; whether one was already
        waiting when asked).

        Waits first for preparations in flight: they must not run beside the caller's start. A
        container made during that wait was not waiting at the request: the caller's start is a miss.
        """
        k = key(rt, spec, image)
        with self._cond:
            waiting = any(e.key == k for e in self._entries)
            if not self._cond.wait_for(lambda: self._filling == 0, timeout):
                raise KitTimeout(f"the warm pool's preparations did not finish within {timeout:g} s")
            for e in self._entries:
                if e.key == k:
                    self._entries.remove(e)
                    return e, waiting
        return None, False

    def wait_idle(self, timeout: float = CREATE_DEADLINE) -> bool:
        """Block until no preparation is in flight (refills included); False if one still is after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: self._filling == 0, timeout)

    def filling(self) -> int:
        """How many preparations (fills) are in flight."""
        with self._cond:
            return self._filling

    def count(self, k: tuple | None = None) -> int:
        with self._cond:
            return sum(1 for e in self._entries if k is None or e.key == k)

    def _add(self, entry: Entry) -> None:
        evicted = []
        with self._cond:
            self._entries.append(entry)
            while len(self._entries) > self.limit:
                evicted.append(self._entries.pop(0))
        for e in evicted:
            _drop(e)

    def ls(self):
        """A DataFrame of the waiting containers: runtime, image, command, id, prepare_s, age_s."""
        import pandas as pd

        with self._cond:
            rows = [{"runtime": e.runtime.name, "image": e.inst.image.name if e.inst.image else "-",
                     "command": " ".join(e.inst.spec.command), "id": e.inst.id,
                     "prepare_s": round(e.prepare_s, 4), "age_s": round(time.time() - e.made_at, 1)}
                    for e in self._entries]
        return pd.DataFrame(rows, columns=["runtime", "image", "command", "id", "prepare_s", "age_s"])

    def clear(self, timeout: float = CREATE_DEADLINE) -> list[str]:
        """Remove every waiting container (after the refills in flight); say what went."""
        with self._cond:
            self._cond.wait_for(lambda: self._filling == 0, timeout)
            gone, self._entries = self._entries, []
        for e in gone:
            _drop(e)
        return [f"warm {e.runtime.name} container {e.inst.id}" for e in gone]


def _drop(e: Entry) -> None:
    try:
        e.runtime.remove(e.inst)
    except KitError:
        pass


# -- snapshot: a service checkpointed once per key, restored per run -----------------------
class Checkpoints:
    """One checkpoint per :func:`key`: a template of the service started cold, left to settle for
    :data:`SETTLE` seconds, checkpointed by its runtime (which ends it). Kept in the session's state
    directory: cleared with the pool, swept with it."""

    def __init__(self, ctx: Context, before_create: Callable[[], None] = _nothing):
        self.ctx, self.before_create = ctx, before_create
        self._lock = threading.Lock()
        self._dirs: dict[tuple, tuple] = {}

    def get(self, rt: Runtime, spec, image) -> tuple[Path, float, str]:
        """(checkpoint directory, seconds it took to make, ``hit`` or ``miss``)."""
        k = key(rt, spec, image)
        with self._lock:  # one template per key at a time; restores of a made one do not wait
            if k in self._dirs and self._dirs[k][0].is_dir():
                return (*self._dirs[k], "hit")
            self._dirs[k] = self._make(rt, spec, image)
            return (*self._dirs[k], "miss")

    def _make(self, rt: Runtime, spec, image) -> tuple[Path, float]:
        self.before_create()
        token = secrets.token_hex(4)
        t0 = time.perf_counter()
        d = self.ctx.state_root / f"checkpoint-{token}"  # apart from the template, which goes
        tinst = rt.new_instance(replace(spec, name=f"ckpt-{token}", detach=True, start="cold"), image, self.ctx)
        try:
            rt.start(tinst)
            threading.Event().wait(float(spec.options.get("settle", SETTLE)))  # the service's own start-up
            if not rt.running(tinst):
                raise StartFailed(f"{rt.name}: the service to checkpoint exited within its settle time: "
                                  f"{last_line(tinst.stderr_path) or 'no output'}")
            rt.checkpoint(tinst, d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            rt.remove(tinst)
        return d, time.perf_counter() - t0

    def clear(self) -> list[str]:
        with self._lock:
            gone, self._dirs = list(self._dirs.values()), {}
        for d, _ in gone:
            shutil.rmtree(d, ignore_errors=True)
        return [f"checkpoint {d.name}" for d, _ in gone]


# -- the session's warm starts ---------------------------------------------------------
class Warm:
    """A session's pool of pre-created containers and its checkpoints, and the start of a warm run."""

    def __init__(self, ctx: Context, before_create: Callable[[], None] = _nothing):
        self.pool = Pool(ctx, before_create=before_create)
        self.checkpoints = Checkpoints(ctx, before_create)

    def start(self, rt: Runtime, inst: InstanceState, stream: Stream | None = None) -> None:
        """Start ``inst`` (made by the session; ``requested`` already stamped) from a pre-created
        container, or (``snapshot``) restore it from its service's checkpoint.

        The one waiting for its key is taken (``pool: hit``), or one is made now (``pool: miss``). The
        startup clock runs on through the taking and, on a miss, through the preparation: a miss is
        measured as what it is, a start that paid for its container (``info["pool"]``, and
        ``info["warm"]`` with ``prepare_s``).
        """
        if inst.spec.start == "snapshot":
            return self._restore(rt, inst, stream)
        entry, hit = self.pool.take(rt, inst.spec, inst.image)
        if entry is None:
            entry = self.pool.prepare(rt, inst.spec, inst.image)
        inst.adopt(entry.inst)
        pool = "hit" if hit else "miss"
        inst.info["pool"] = pool
        inst.info["warm"] = {"pool": pool, "prepare_s": round(entry.prepare_s, 6), "id": entry.inst.id}
        inst.phases["launched"] = time.time()
        rt.start_created(inst, stream)  # on failure the session removes inst, now the pooled container

    def _restore(self, rt: Runtime, inst: InstanceState, stream: Stream | None) -> None:
        """A ``snapshot`` start: its key's checkpoint (made first when there is none: ``pool: miss``,
        inside the startup clock, as a VM template is) restored by the runtime."""
        d, made_s, hit = self.checkpoints.get(rt, inst.spec, inst.image)
        inst.info["pool"] = hit
        inst.info["snapshot"] = {"checkpoint": hit, "checkpoint_s": round(made_s, 6), "dir": str(d)}
        rt.restore(inst, d, stream)

    def after_run(self, rt: Runtime, inst: InstanceState) -> None:
        """After a foreground precreated run: make its key's next container in the background."""
        if inst.spec.start == "precreated" and pooled(rt, inst.spec):
            self.pool.fill_soon(rt, inst.spec, inst.image)

    def fill(self, rt: Runtime, spec, image, n: int = 1) -> int:
        """Create containers for ``spec`` until ``n`` wait; how many were made (:meth:`Pool.fill`)."""
        return self.pool.fill(rt, spec, image, n)

    def wait_idle(self, timeout: float = CREATE_DEADLINE) -> bool:
        return self.pool.wait_idle(timeout)

    def filling(self) -> int:
        return self.pool.filling()

    def ls(self):
        """The pre-created containers waiting (a DataFrame)."""
        return self.pool.ls()

    def clear(self) -> list[str]:
        """Remove every pre-created container and checkpoint; say what went."""
        return self.pool.clear() + self.checkpoints.clear()
