"""Warm starts: containers created ahead of time and started on demand (``start="precreated"``).

A cold start pays for everything at the start request: the kit's preparation (cgroup,
overlay, bundle), the runtime's ``create`` (namespaces, mounts, cgroup placement) and its
``start``. A pre-created start pays only the last when its container was made earlier (by
:func:`prepare`, or by the refill after the previous run): ``pool: hit``. When none was waiting
at the request, the request makes its own (``pool: miss``) and pays for it: the startup clock
(``requested``, stamped by :mod:`kit.api` as for a cold start) runs through the preparation, so a
miss is never shown as a warm start (:mod:`kit.bench` keeps misses out of warm medians unless
asked). ``info["pool"]`` says which; ``info["warm"]`` also holds ``prepare_s`` (how long creating
the container took) and the pooled instance's id.

How the command gets in: the OCI process (argv, env, cwd) is fixed when the container is
created (``runc create`` hands it to the container's init, which waits on its exec FIFO), and
``docker create`` fixes it too. A waiting init that receives the command later would put its
own exec and hand-off inside the measured span and make PID 1 something other than the command
(signals, exit codes). So the pool is keyed by everything a created container has fixed --
runtime, image id, command, environment, working directory, limits, read-only, hardening and an
explicit hostname -- as a serverless platform keeps containers warm per function. Repeated runs
of one command (a study's samples) find their container waiting; the started process is exactly
the one a cold run starts. Only the default hostname differs: it is the pooled container's name.

OCI runtimes (runc, crun, runsc) are created under a tiny subreaper (:data:`SHIM`, a Python
``-S`` one-liner): ``runc create`` exits once the container exists, so the container's init
would be orphaned; the shim adopts it and exits with its exit code, so the kit waits for the
shim as it waits for ``runc run`` in a cold start, and the container's stdout/stderr pipes are
the shim's (pumped to the instance's logs and stream).

The pool is bounded (:data:`PER_KEY` waiting containers per key, :data:`LIMIT` in all; the
oldest goes first), thread-safe, refilled in the background after a foreground run exits, and a
start request first waits for refills in flight, so no preparation runs beside a start (one it
waited for did not have its container waiting: a miss). :func:`kit.api.wait_until_quiet` waits
for the refills too, so a measurement starts with none in flight.
Pooled containers carry the session's id (``kit-<session>-warm-...``, Docker label
``kit.session``), so :func:`clear` (at exit and in :func:`kit.prune`) and the dead-session sweep
after a SIGKILL remove them like any instance.
"""

from __future__ import annotations

import atexit
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field, replace

from ._proc import Pumped, Stream, last_line, wait_until
from .errors import InvalidSpec, KitError, KitTimeout, StartFailed
from .runtimes.base import Instance, Runtime

#: Waiting containers per key, and in all.
PER_KEY = 1
LIMIT = 8
#: Seconds a ``create`` may take before the preparation is abandoned (and cleaned up).
CREATE_DEADLINE = 60.0

#: The OCI subreaper: ``python -S -c SHIM PIDFILE RUNTIME-ARGV...``. Runs ``runtime create``, then
#: waits for the container's init (reparented to it) and exits with its exit code (128+N on signal N).
SHIM = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
pidfile, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, st = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(st)
if code:
    os._exit(code if code > 0 else 128 - code)
with open(pidfile) as f:
    ctr = int(f.read())
while True:
    try:
        p, st = os.waitpid(-1, 0)
    except ChildProcessError:
        os._exit(255)
    if p == ctr:
        code = os.waitstatus_to_exitcode(st)
        os._exit(code if code >= 0 else 128 - code)
"""


class _Relay:
    """The stream of a pooled container's output: nobody's until a run takes it."""

    def __init__(self):
        self.target: Stream | None = None

    def __call__(self, label: str, data: bytes) -> None:
        if self.target is not None:
            self.target(label, data)


@dataclass
class Entry:
    """One container created ahead of time, waiting in the pool."""

    key: tuple
    runtime: Runtime
    inst: Instance
    prepare_s: float
    made_at: float = field(default_factory=time.time)
    relay: _Relay | None = None


def key(rt: Runtime, spec, image) -> tuple:
    """What a created container has fixed: runs that agree on it can share a pool."""
    hostname = spec.hostname if spec.hostname != spec.name[:63] else None
    return (rt.name, image.id if image is not None else None, tuple(spec.command), tuple(sorted(spec.env.items())),
            spec.workdir, spec.memory, spec.cpus, spec.read_only, spec.harden, hostname,
            tuple(sorted((k, repr(v)) for k, v in spec.options.items())))


def check(rt: Runtime, spec) -> None:
    """Refuse, before anything starts, a start mode ``rt`` does not offer for ``spec`` (InvalidSpec)."""
    why = rt.start_mode_refusal(spec.start)
    if not why and spec.start != "cold" and (spec.ports or spec.volumes or spec.network) and rt.kind != "vm":
        why = (f"a {spec.start} run takes no ports, volumes or network yet (they are bound when the container "
               "is created): use start='cold'")
    if not why and spec.start == "snapshot" and rt.kind != "vm" and not spec.detach:
        why = "a container snapshot restores a checkpointed service: start it detached (kit.start, -d)"
    if why:
        raise InvalidSpec(why)


# -- the runtimes' two halves ------------------------------------------------------
def _oci_create(rt, inst: Instance) -> _Relay:
    bundle = rt.prepare_bundle(inst)
    pidfile = inst.state_dir / "container.pid"
    relay = _Relay()
    _under_shim(rt, inst, ["create", "--bundle", str(bundle), "--pid-file", str(pidfile), inst.id], pidfile, relay,
                "create a container ahead of time")
    return relay


def _under_shim(rt, inst: Instance, action: list[str], pidfile, stream, what: str) -> None:
    """Run ``<runtime> ACTION`` under the subreaper (:data:`SHIM`); return once ``pidfile`` names the
    container's process (StartFailed with the runtime's reason if it ends first)."""
    argv = [sys.executable, "-S", "-c", SHIM, str(pidfile), *rt._cli_for(inst),
            "--log", str(inst.state_dir / "runtime.log"), "--log-format", "json", *action]
    inst.proc = Pumped(argv, inst.state_dir, stream=stream, preexec_fn=rt._preexec(inst))
    inst.info["runtime_root"] = str(rt.root)

    def done_or_failed():
        if inst.proc.proc.poll() is not None:
            return "failed"
        return "done" if pidfile.exists() and pidfile.stat().st_size else None

    if wait_until(done_or_failed, CREATE_DEADLINE, interval=0.005, what=f"{rt.name} {action[0]}") == "failed":
        why = rt.start_error(inst) or last_line(inst.stderr_path) or f"exit {inst.proc.proc.returncode}"
        raise StartFailed(f"{rt.name}: could not {what}: {why}")


def _oci_start(rt, inst: Instance, relay: _Relay, stream: Stream | None) -> None:
    relay.target = None if inst.spec.detach else stream
    inst.phases["launched"] = time.time()
    p = rt._ctl(inst, "start", inst.id, timeout=30)
    if p.returncode != 0:
        why = rt.start_error(inst) or p.stderr.decode(errors="replace").strip() or f"exit {p.returncode}"
        raise StartFailed(f"{rt.name}: could not start the pre-created container: {why}")
    inst.phases["started"] = time.time()


def _docker_create(rt, inst: Instance) -> None:
    rt.create(inst)


def _docker_start(rt, inst: Instance, relay, stream: Stream | None) -> None:
    inst.phases["launched"] = time.time()
    rt.start_created(inst, stream)


def _halves(rt: Runtime):
    from .runtimes.docker import DockerRuntime
    from .runtimes.oci import OCIRuntime

    if isinstance(rt, OCIRuntime):
        return _oci_create, _oci_start
    if isinstance(rt, DockerRuntime):
        return _docker_create, _docker_start
    raise InvalidSpec(rt.start_mode_refusal("precreated") or f"runtime {rt.name!r} cannot pre-create")


# -- the pool --------------------------------------------------------------------
class Pool:
    """Containers created ahead of time, per :func:`key`; bounded and thread-safe."""

    def __init__(self, per_key: int = PER_KEY, limit: int = LIMIT):
        self.per_key, self.limit = per_key, limit
        self._cond = threading.Condition()
        self._entries: list[Entry] = []  # oldest first
        self._filling = 0

    def prepare(self, rt: Runtime, spec, image) -> Entry:
        """Create one container for ``spec`` now (not pooled); its preparation time measured."""
        from . import lifetime

        create, _ = _halves(rt)
        lifetime.ensure_reaper()  # a SIGKILLed session's pooled containers are swept like its instances
        token = secrets.token_hex(4)
        pspec = replace(spec, name=f"warm-{token}", detach=False, timeout=None)
        if spec.hostname == spec.name[:63]:
            pspec.hostname = pspec.name
        t0 = time.perf_counter()
        inst = rt.new_instance(pspec, image)
        try:
            relay = create(rt, inst)
        except BaseException:
            rt.remove(inst)
            raise
        return Entry(key(rt, spec, image), rt, inst, time.perf_counter() - t0, relay=relay)

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


#: The session's pool.
POOL = Pool()


def prepare(image: str, command, runtime: str, n: int = 1, **kw) -> int:
    """Create ``n`` containers ahead of time for runs of ``command`` in ``image`` under ``runtime``
    (the same keywords as :func:`kit.run`); return how many were made."""
    from . import api, images, runtimes

    rt = runtimes.require(runtime)
    spec = api._spec(image, command, runtime=runtime, start="precreated", **kw)
    check(rt, spec)
    img = images.obtain(image)
    spec.command = list(images.command_for(img, spec.command))
    return POOL.fill(rt, spec, img, n)


def start(rt: Runtime, inst: Instance, stream: Stream | None = None) -> None:
    """Start ``inst`` (made by :func:`kit.api._create`) from a pre-created container, or (``snapshot``,
    runc where CRIU works) restore it from its service's checkpoint (:func:`restore`).

    The one waiting for its key is taken (``pool: hit``), or one is made now (``pool: miss``). The
    startup clock (``requested``, stamped by the API before this) runs on through the taking and,
    on a miss, through the preparation: a miss is measured as what it is, a start that paid for
    its container (``info["pool"]``, and ``info["warm"]`` with ``prepare_s``).
    """
    if inst.spec.start == "snapshot":
        return restore(rt, inst, stream)
    entry, hit = POOL.take(rt, inst.spec, inst.image)
    if entry is None:
        entry = POOL.prepare(rt, inst.spec, inst.image)
    _, begin = _halves(rt)
    _adopt(inst, entry)
    pool = "hit" if hit else "miss"
    inst.info["pool"] = pool
    inst.info["warm"] = {"pool": pool, "prepare_s": round(entry.prepare_s, 6), "id": entry.inst.id}
    begin(rt, inst, entry.relay, stream)  # on failure the API removes inst, now the pooled container


def _adopt(inst: Instance, entry: Entry) -> None:
    """``inst`` becomes the pooled container: its id, state directory, process and cgroup."""
    import shutil

    made = entry.inst
    shutil.rmtree(inst.state_dir, ignore_errors=True)  # the run's own, still empty
    inst.id, inst.state_dir, inst.proc, inst.cgroup = made.id, made.state_dir, made.proc, made.cgroup
    inst.netns_fd, made.netns_fd = made.netns_fd, None
    inst.info.update(made.info)


def refill(rt: Runtime, inst: Instance) -> None:
    """After a precreated run: make its key's next container in the background."""
    POOL.fill_soon(rt, inst.spec, inst.image)


# -- snapshot: runc checkpoint/restore (CRIU) ------------------------------------------
#: Seconds a template service runs before it is checkpointed: its own start-up, which the kit cannot
#: see (``kit.start(..., start="snapshot", settle=S)`` for a slower one).
SETTLE = 1.0


class Checkpoints:
    """One CRIU dump per :func:`key`: a template of the service started cold, left to settle for
    :data:`SETTLE` seconds, checkpointed (``runc checkpoint``, which ends it), its writable layer
    kept beside the dump. Kept in the session's state directory: cleared with the pool, swept with it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._dirs: dict[tuple, tuple] = {}

    def get(self, rt: Runtime, spec, image) -> tuple:
        """(checkpoint directory, seconds it took to make, ``hit`` or ``miss``)."""
        k = key(rt, spec, image)
        with self._lock:  # one template per key at a time; restores of a made one do not wait
            if k in self._dirs and (self._dirs[k][0] / "images").is_dir():
                return (*self._dirs[k], "hit")
            self._dirs[k] = self._make(rt, spec, image)
            return (*self._dirs[k], "miss")

    def _make(self, rt: Runtime, spec, image) -> tuple:
        import shutil

        from . import config, criu, lifetime

        lifetime.ensure_reaper()
        token = secrets.token_hex(4)
        t0 = time.perf_counter()
        d = config.state_dir() / f"checkpoint-{token}"  # apart from the template, which goes
        tinst = rt.new_instance(replace(spec, name=f"ckpt-{token}", detach=True, start="cold"), image)
        try:
            rt.start(tinst)
            threading.Event().wait(float(spec.options.get("settle", SETTLE)))  # the service's own start-up
            if not rt.running(tinst):
                raise StartFailed(f"{rt.name}: the service to checkpoint exited within its settle time: "
                                  f"{last_line(tinst.stderr_path) or 'no output'}")
            criu.checkpoint(rt._cli_for(tinst), tinst.id, d / "images")
            upper = tinst.state_dir / "overlay" / "upper"
            if upper.is_dir():  # what the service wrote before the dump: its restores find it again
                shutil.copytree(upper, d / "upper", symlinks=True)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            rt.remove(tinst)
        return d, time.perf_counter() - t0

    def clear(self) -> list[str]:
        import shutil

        with self._lock:
            gone, self._dirs = list(self._dirs.values()), {}
        for d, _ in gone:
            shutil.rmtree(d, ignore_errors=True)
        return [f"checkpoint {d.name}" for d, _ in gone]


CHECKPOINTS = Checkpoints()


def restore(rt: Runtime, inst: Instance, stream: Stream | None = None) -> None:
    """A ``snapshot`` start of a runc service: ``runc restore --detach`` of its key's checkpoint (made
    first when there is none: ``pool: miss``, inside the startup clock, as a VM template is) on a
    fresh bundle, under the subreaper."""
    import shutil

    from . import criu

    d, made_s, hit = CHECKPOINTS.get(rt, inst.spec, inst.image)  # a miss makes it inside the clock
    inst.info["pool"] = hit
    inst.info["snapshot"] = {"checkpoint": hit, "checkpoint_s": round(made_s, 6), "dir": str(d)}
    bundle = rt.prepare_bundle(inst)
    if (d / "upper").is_dir() and inst.info.get("rootfs") == "overlay":
        shutil.copytree(d / "upper", bundle / "rootfs", symlinks=True, dirs_exist_ok=True)
    pidfile = inst.state_dir / "container.pid"
    inst.phases["launched"] = time.time()
    _under_shim(rt, inst, criu.restore_argv([], inst.id, d / "images", bundle, pidfile, inst.state_dir / "criu"),
                pidfile, None if inst.spec.detach else stream, "restore the checkpoint")
    inst.phases["started"] = time.time()


def clear() -> list[str]:
    """Remove every pre-created container and checkpoint of this session (also done at exit and by prune)."""
    return POOL.clear() + CHECKPOINTS.clear()


def ls():
    """The pre-created containers waiting in this session's pool (a DataFrame)."""
    return POOL.ls()


atexit.register(clear)
