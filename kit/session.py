"""A kit session: what one user of the kit started, and its teardown.

The counterpart of ``httpx.Client`` or ``docker.DockerClient``: a :class:`Session` owns the live
instances it started (by name), their background teardowns, its kit networks, the volumes its
instances use, its warm pool and checkpoints, what upper layers keep per session (compose
stacks, through :meth:`Session.extension`) and its Docker client. ``kit.run``, ``kit.start``,
``kit.ps``, ... are thin calls on a default session made on first use (:mod:`kit.api`).

>>> import kit
>>> with kit.Session() as s:
...     web = s.start("busybox", ["httpd", "-f", "-p", "80"], runtime="runc", name="web")
...     s.ps()                       # only this session's instances
...     s.get("web") is web
True
>>> # closed: its instances, networks and pool are gone

Two sessions of one process do not see each other's instances, and both may have a ``web``:
runtime ids are ``kit-<owner>-<session>-<name>`` and state directories
``$KIT_HOME/run/<owner>/<session>/<name>``, where ``<owner>`` is the process's id
(:data:`kit.config.SESSION_ID`, which the reaper and the sweeps go by) and ``<session>`` the
session's own token. Every method is thread-safe.
"""

from __future__ import annotations

import collections
import os
import posixpath
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import config, faults, lifetime
from . import images as _images
from . import pool as _pool
from . import runtimes as _runtimes
from .netspace import Networks
from ._proc import Stream
from .errors import (CommandNotFound, DaemonUnavailable, InstanceNotFound, InvalidSpec, KitError, KitTimeout,
                     NameInUse)
from .images import engine
from .instance import Instance
from .result import RunResult
from .runtimes.base import Context, Runtime
from .spec import RunSpec, check_argv, parse_cpus, parse_env, parse_memory, parse_port, show
from .volumestore import Volumes

#: Every session not yet closed (weakly: a session nobody holds any more is not kept alive).
_open: "weakref.WeakSet[Session]" = weakref.WeakSet()
_open_lock = threading.Lock()


def make_spec(image, command, name=None, detach=False, memory=None, cpus=None, env=None, ports=None,
              workdir=None, timeout=None, hostname=None, read_only=False, harden=True, runtime=None,
              volumes=None, network=None, start="cold", user=None, cap_add=(), cap_drop=(), sysctls=None,
              tmpfs=(), init=False, stop_signal="SIGTERM", stop_timeout=None, labels=None, **options) -> RunSpec:
    """A :class:`~kit.spec.RunSpec` from :func:`kit.run`'s keywords, every value checked (InvalidSpec)."""
    # A lone string is one item, not a sequence of characters ("8080:80" is not 7 ports).
    env = [env] if isinstance(env, str) else env
    ports = [ports] if isinstance(ports, (str, int)) else ports
    volumes = [volumes] if isinstance(volumes, str) else list(volumes or [])
    if isinstance(env, dict):
        env_d = {str(k): str(v) for k, v in env.items()}
    else:
        env_d = dict(parse_env(e) for e in (env or []))
    port_l = [parse_port(":".join(map(str, p)) if isinstance(p, tuple) else p) for p in (ports or [])]
    kw = {} if name is None else {"name": name}
    if not isinstance(image, str):
        raise InvalidSpec(f"image must be a name such as 'busybox', not {show(image)}")
    try:
        command = [] if command is None else command if isinstance(command, str) else list(command)
    except TypeError:
        raise InvalidSpec(f"command must be a list of arguments, not {show(command)}: e.g. ['echo', 'hello']") from None
    try:
        timeout = float(timeout) if timeout is not None else None
    except (TypeError, ValueError):
        raise InvalidSpec(f"timeout {show(timeout)} is not a number of seconds: e.g. 30") from None
    floor = {}
    if runtime:
        try:  # the runtime's own floor (a VM's RAM), named as such; an unknown runtime is said later
            rt = _runtimes.get(runtime)
            floor = {"minimum": rt.min_memory, "what": rt.min_memory_what}
        except KitError:
            pass
    return RunSpec(image=image, command=command,
                   detach=detach, memory=parse_memory(memory, **floor), cpus=parse_cpus(cpus), env=env_d,
                   ports=port_l, workdir=workdir, timeout=timeout,
                   hostname=hostname, read_only=bool(read_only), harden=bool(harden), volumes=volumes,
                   network=network, start=start, options=options, user=user, cap_add=cap_add, cap_drop=cap_drop,
                   sysctls=sysctls or {}, tmpfs=[tmpfs] if isinstance(tmpfs, str) else list(tmpfs or []),
                   init=bool(init), stop_signal=stop_signal, stop_timeout=stop_timeout, labels=dict(labels or {}), **kw)


def resolve_in_rootfs(rootfs: Path, argv0: str, path: str, cwd: str = "/") -> str | None:
    """Where ``argv0`` resolves inside ``rootfs`` (following its symlinks inside it), or None."""
    candidates = [posixpath.join(cwd, argv0)] if "/" in argv0 else [posixpath.join(d, argv0) for d in path.split(":") if d]
    for cand in candidates:
        try:
            real = _follow(rootfs, cand)
            if real is not None and real.is_file() and os.access(real, os.X_OK):
                return cand
        except OSError:  # e.g. a name too long for the filesystem: no such command there
            continue
    return None


def _follow(rootfs: Path, inner: str, depth: int = 0) -> Path | None:
    if depth > 40:
        return None
    parts = [p for p in inner.split("/") if p and p != "."]
    cur = "/"
    for part in parts:
        if part == "..":
            cur = posixpath.dirname(cur) or "/"
            continue
        nxt = posixpath.join(cur, part)
        host = rootfs / nxt.lstrip("/")
        if host.is_symlink():
            target = os.readlink(host)
            target = target if target.startswith("/") else posixpath.join(cur, target)
            resolved = _follow(rootfs, posixpath.normpath(target), depth + 1)
            if resolved is None:
                return None
            rel = resolved.relative_to(rootfs).as_posix()
            cur = "/" if rel == "." else "/" + rel
        elif host.exists():
            cur = nxt
        else:
            return None
    return rootfs / cur.lstrip("/")


def _check_ports(spec: RunSpec) -> None:
    for host, _ in spec.ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", host))
            except OSError:
                raise InvalidSpec(f"port {host} on 127.0.0.1 is already in use: choose another host port") from None


def _image_command(command) -> bool:
    """No command given: the image's (Entrypoint + Cmd) runs, as with docker run."""
    return command is None or (isinstance(command, (list, tuple)) and not command)


class _Teardown:
    """The background removal of one finished foreground instance, run by a :class:`_Removers` thread;
    ``ended_at`` (epoch seconds) says when everything it left was gone, so that a measurement can time
    the removal itself. ``join`` and ``is_alive`` as a thread's."""

    def __init__(self, session: "Session", inst: Instance):
        self.session, self.inst = session, inst
        self.ended_at: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            self.session._discard(self.inst)
        finally:
            self.ended_at = time.time()
            self._done.set()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        return not self._done.is_set()


class _Removers:
    """The threads that run teardowns (:class:`_Teardown`), kept while there is work: a thread started for
    each one was a thread start of the kit's CPU on every foreground run (issue 24). A new thread starts
    when more teardowns wait than threads are idle (up to :attr:`MOST`, so a burst of them, a start storm's,
    still overlaps); a thread idle for :attr:`IDLE` seconds ends."""

    MOST = 8
    IDLE = 2.0

    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child of fork has none of these threads

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: collections.deque[_Teardown] = collections.deque()
        self._idle = 0
        self._threads = 0

    def submit(self, job: _Teardown) -> None:
        with self._cond:
            self._jobs.append(job)
            if self._idle:
                self._cond.notify()
            if len(self._jobs) > self._idle and self._threads < self.MOST:
                self._threads += 1
                threading.Thread(target=self._work, name="kit-rm", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cond:
                waited = False
                while not self._jobs:
                    if waited:  # idle for IDLE seconds with nothing to do: this thread ends
                        self._threads -= 1
                        return
                    self._idle += 1
                    waited = not self._cond.wait(self.IDLE)
                    self._idle -= 1
                job = self._jobs.popleft()
            try:
                job.run()
            except BaseException:  # said as a thread's own exception would be; the thread goes on
                threading.excepthook(threading.ExceptHookArgs((*sys.exc_info(), threading.current_thread())))


_removers = _Removers()


class Session:
    """What one user of the kit started, and its teardown; a context manager (``close()`` on exit).

    Attributes:
        id: this session's short token (in its instances' ids and state directories).
        owner: the process's id, :data:`kit.config.SESSION_ID` (labels, reaper, sweeps).
        context: what its runtimes are given (:class:`~kit.runtimes.base.Context`).
        networks: its kit networks (:class:`kit.netspace.Networks`).
        volumes: its view of the volume store, marking what its instances use (:class:`kit.volumestore.Volumes`).
        warm: its warm pool and checkpoints (:class:`kit.pool.Warm`).
    """

    def __init__(self):
        self.id = secrets.token_hex(3)
        self.owner = config.SESSION_ID
        #: ``$KIT_HOME/run/<owner>/<session>``: its instances' state directories (removed when it closes).
        self.state_dir = config.home() / "run" / self.owner / self.id
        with faults.writing(self.state_dir, "making the session's state directory"):
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self.context = Context(self.owner, self.id, self.state_dir, docker=lambda: self.docker)
        self._lock = threading.RLock()
        self._live: dict[str, Instance] = {}
        self._pending: dict[str, _Teardown] = {}
        #: (image id, command, PATH, cwd) found in that image: an image id names immutable content.
        self._found_commands: set[tuple] = set()
        self._extensions: dict[str, Any] = {}
        self._docker = None
        self._closed = False
        self.networks = Networks(self.context, remove_member=lambda n: self.rm(n, force=True),
                                 settle=self.wait_for_teardown)
        self.volumes = Volumes(self.owner, self.id, alive=lifetime.owner_alive, settle=self.wait_for_teardown)
        self.warm = _pool.Warm(self.context, before_create=lifetime.ensure_reaper)
        lifetime.sweep_once_in_background()  # what dead sessions left: once per process, off this path
        with _open_lock:
            _open.add(self)

    def __repr__(self) -> str:
        with self._lock:
            names = sorted(self._live)
        return f"<Session {self.owner}-{self.id}: {len(names)} instance(s){': ' + ', '.join(names[:5]) if names else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def docker(self):
        """This session's Docker client (made on first use, closed with the session).

        Raises:
            RuntimeUnavailable: the SDK is missing or no daemon answers (with what to do).
        """
        with self._lock:
            if self._docker is None:
                self._docker = engine.connect(timeout=60)
            return self._docker

    def extension(self, key: str, factory: Callable[["Session"], Any]) -> Any:
        """What an upper layer keeps per session (compose's stacks), made by ``factory(self)`` on first
        use. When the session closes, an extension's ``close()`` runs first (before its instances go)."""
        with self._lock:
            if key not in self._extensions:
                self._extensions[key] = factory(self)
            return self._extensions[key]

    # -- starting ----------------------------------------------------------
    def spec(self, image, command, runtime=None, **kw) -> RunSpec:
        """The checked :class:`~kit.spec.RunSpec` of a run (see :meth:`run` for the keywords)."""
        return make_spec(image, command, runtime=runtime, **kw)

    def _check_command(self, spec: RunSpec, image) -> None:
        """Refuse, before anything starts, a command that does not exist where it will run."""
        argv0 = spec.command[0]
        if image is None:
            if ("/" in argv0 and not os.access(argv0, os.X_OK)) or ("/" not in argv0 and not shutil.which(argv0)):
                raise CommandNotFound(f"command {show(argv0)} not found on this host's PATH: check its spelling or "
                                      f"install it")
            return
        # The PATH the command will run with: the user's -e PATH, else the image's own ENV PATH (Go,
        # Node, Java images put their tools there), else the kit's default, as docker run resolves it.
        path = spec.environment(image).get("PATH", "")
        cwd = spec.working_dir(image)  # a relative ./tool resolves from the image's WORKDIR too
        key = (image.id, argv0, path, cwd)
        if key in self._found_commands:
            return
        if resolve_in_rootfs(image.rootfs, argv0, path, cwd) is None:
            raise CommandNotFound(
                f"command {show(argv0)} not found in image {image.name!r} (searched {show(path, 80)}): "
                f"install it in the image or give its full path")
        self._found_commands.add(key)

    def _create(self, image: str | None, command, runtime: str | None, **kw) -> Instance:
        if self._closed:
            raise KitError("this session is closed: start a new kit.Session()")
        from_image = _image_command(command) and bool(image)
        # Bad options are reported before anything else (a placeholder stands for the image's command).
        spec = make_spec(image or "-", ["-"] if from_image else command, runtime=runtime, **kw)
        rt = _runtimes.require(runtime or _runtimes.default_container_runtime())
        if spec.start != "cold":  # a mode the runtime does not offer is refused before anything starts
            _pool.check(rt, spec)
        self._check_capabilities(rt, spec, image, from_image)
        # A reference naming a registry (127.0.0.1:5000/app:1, NAME@sha256:...) is pulled on first use.
        img = _images.obtain(image) if rt.uses_image else None
        if img is not None:
            spec.command = check_argv(_images.command_for(img, None if from_image else spec.command))
        self._check_command(spec, img)
        _check_ports(spec)
        rt.check_limits(spec.memory, spec.cpus)
        lifetime.ensure_reaper()
        self.wait_for_teardown(spec.name)
        with self._lock:
            if spec.name in self._live:
                raise NameInUse(f"name {spec.name!r} is already in use by a {self._live[spec.name].runtime} instance: "
                                f"remove it with rm {spec.name} or choose another --name")
            # Host directories checked, named volumes created and marked in use (kit.volumestore).
            mounts = self.volumes.attach(spec.name, spec.volumes, rt.name)
            try:
                with faults.writing(self.state_dir, f"making the state directory of {spec.name!r}"):
                    state = rt.new_instance(spec, img, self.context)
            except BaseException as e:
                self.volumes.detach(spec.name, mounts)
                if isinstance(e, FileExistsError):
                    raise NameInUse(f"name {spec.name!r} is already in use: remove it or choose another --name") from None
                raise
            state.mounts = mounts
            inst = self._live[spec.name] = Instance(self, rt, state)
        if spec.network:
            try:  # a member before it starts: its runtime joins the network's namespace
                self.networks.join(spec.network, rt, state)
            except BaseException:
                self._discard(inst)
                raise
        return inst

    @staticmethod
    def _check_capabilities(rt: Runtime, spec: RunSpec, image, from_image: bool) -> None:
        """Refuse what ``rt`` cannot do (an image, volumes, a network, the image's command) rather than ignore it."""
        if rt.uses_image and not image:
            raise InvalidSpec(f"runtime {rt.name!r} needs an image: e.g. busybox")
        if spec.volumes and not rt.supports_volumes:
            raise InvalidSpec(f"runtime {rt.name!r} cannot mount volumes"
                              + (": a bare process shares the host's filesystem; use a container or VM runtime"
                                 if not rt.uses_image else "; use runc, crun, runsc, lxc, docker or qemu"))
        if spec.network and not rt.supports_networks:
            raise InvalidSpec(f"runtime {rt.name!r} cannot join a kit network; use runc, crun, runsc, lxc, docker "
                              f"or qemu")
        if from_image and not rt.uses_image:
            raise InvalidSpec("no command given: put the command after the image, e.g. busybox echo hello")
        for option in spec.asked():
            if option in rt.cannot:
                raise InvalidSpec(f"runtime {rt.name!r} cannot honour {option}: {rt.cannot[option]}")

    def run(self, image: str | None, command: Sequence[str] | None = None, runtime: str | None = None, *,
            detach: bool = False, name: str | None = None, memory=None, cpus=None, env=None,
            ports: Iterable = (), workdir=None, timeout: float | None = None, stream: Stream | None = None,
            check: bool = False, **options) -> "RunResult | Instance":
        """Run ``command`` in ``image`` under ``runtime``: its :class:`RunResult`, or with ``detach`` the
        running :class:`~kit.instance.Instance`.

        A foreground run waits for the command, then removes the instance (as ``docker run --rm``; the
        removal finishes in the background once the result is complete, :meth:`wait_for_teardown`
        waits for it); a detached one keeps running until :meth:`stop`/:meth:`rm`.

        Args:
            image: image name (``busybox``, or one made with :mod:`kit.images`); ignored by ``process``.
            command: argv list; shell metacharacters reach the command literally. None: the image's own.
            runtime: ``process``, ``runc``, ``crun``, ``runsc``, ``lxc``, ``docker``, ``podman`` or
                ``qemu``; None picks the first available container runtime.
            memory: limit such as ``"64m"``; cpus: CPU share such as ``1.5``.
            env: ``{"K": "V"}`` or ``["K=V"]``; ports: ``["8080:80"]``, published on 127.0.0.1.
            timeout: seconds before a foreground run is killed (then ``timed_out``, exit 124).
            stream: callback(label, bytes) receiving output as it arrives (a foreground run's in this
                thread, while it waits).
            check: raise :class:`~kit.errors.ExitError` on a non-zero exit (foreground runs).
            **options: ``volumes``, ``network``, ``hostname``, ``read_only``, ``harden``, ``start``
                (``cold``, ``precreated``, ``snapshot``), ``user``, ``cap_add``, ``cap_drop``, ``sysctls``,
                ``tmpfs``, ``init``, ``stop_signal``, ``stop_timeout``, ``labels`` (:class:`~kit.spec.RunSpec`),
                and runtime-specific ones (``kernel=`` for qemu).

        Raises:
            KitError: bad input, unavailable runtime, unknown image, missing command...
        """
        inst = self._create(image, command, runtime, name=name, detach=detach, memory=memory, cpus=cpus,
                            env=env, ports=ports, workdir=workdir, timeout=timeout, **options)
        rt, state = inst.backend, inst.state
        # Every runtime's startup clock starts here, after the kit's own checks (common to all):
        # what a runtime prepares before launching (overlay, bundle, cgroup, disk, image) is its
        # 'prepare' time, inside the measured span for every runtime and start mode alike (a warm
        # start that has to make its container or checkpoint pays for it here: info["pool"] = "miss").
        state.phases["requested"] = time.time()
        out = None if detach else stream
        try:
            with faults.writing(self.state_dir, f"starting {state.name!r} ({rt.name})"):
                if _pool.pooled(rt, state.spec):
                    self.warm.start(rt, state, stream=out)
                else:
                    rt.start(state, stream=out)
        except BaseException:
            self._discard(inst)
            raise
        if detach:
            return inst
        try:
            try:
                rt.wait(state, timeout=state.spec.timeout)
            except subprocess.TimeoutExpired:
                rt.kill(state)
                state.timed_out = True
                state.exit_code = 124
            state.phases.setdefault("exited", time.time())
            state.oom_killed = state.oom_killed or rt.oom_killed(state)
            result = inst.logs()
        except BaseException:
            self._discard(inst)
            raise
        self._discard_soon(inst)
        self.warm.after_run(rt, state)  # a precreated run's next container, made in the background
        return result.check() if check else result

    def start(self, image: str | None, command: Sequence[str] | None = None, runtime: str | None = None,
              **kw) -> Instance:
        """Start a detached instance (a service) and return its handle; see :meth:`run` for the arguments."""
        return self.run(image, command, runtime, detach=True, **kw)

    def prewarm(self, image: str, command, runtime: str, n: int = 1, **kw) -> int:
        """Create ``n`` containers ahead of time for runs of ``command`` in ``image`` under ``runtime``
        (the same keywords as :meth:`run`, ``start="precreated"``); return how many were made."""
        rt = _runtimes.require(runtime)
        spec = make_spec(image, command, runtime=runtime, start="precreated", **kw)
        _pool.check(rt, spec)
        img = _images.obtain(image)
        spec.command = list(_images.command_for(img, spec.command))
        return self.warm.fill(rt, spec, img, n)

    # -- finding -----------------------------------------------------------
    def get(self, name: str) -> Instance:
        """The live instance called ``name``.

        Raises:
            InstanceNotFound: this session has none of that name.
        """
        with self._lock:
            try:
                return self._live[name]
            except KeyError:
                have = ", ".join(sorted(self._live)[:5]) + (", ..." if len(self._live) > 5 else "") or "none"
        raise InstanceNotFound(f"no instance named {show(name)} (running: {have}); see ps")

    def _find(self, instance: "str | Instance") -> Instance:
        if isinstance(instance, Instance):
            with self._lock:
                if self._live.get(instance.name) is instance:
                    return instance
            raise InstanceNotFound(f"instance {instance.name!r} was removed already (or is not this session's)")
        return self.get(instance)

    def list(self) -> list[Instance]:
        """The live instances, by name."""
        with self._lock:
            return [self._live[n] for n in sorted(self._live)]

    def ps(self, all: bool = True):  # noqa: A002
        """A DataFrame of this session's instances: name, runtime, image, command, status, ..."""
        import pandas as pd

        rows = []
        for inst in self.list():
            state, status = inst.state, inst.status
            if not all and status != "running":
                continue
            rows.append({"name": inst.name, "runtime": inst.runtime, "kind": inst.backend.kind,
                         "image": inst.image or "-", "command": " ".join(state.spec.command), "status": status,
                         "ports": ", ".join(f"127.0.0.1:{h}->{c}" for h, c in inst.ports),
                         "network": state.spec.network or "-",
                         "created": pd.Timestamp(state.created_at, unit="s", tz="UTC").floor("s"),
                         "id": inst.id})
        return pd.DataFrame(rows, columns=["name", "runtime", "kind", "image", "command", "status", "ports",
                                           "network", "created", "id"])

    # -- by name -----------------------------------------------------------
    def logs(self, name: str) -> RunResult:
        """What ``name`` has written so far, as a RunResult."""
        return self.get(name).logs()

    def exec(self, name: str, command: Sequence[str], stream: Stream | None = None, timeout: float | None = 60,
             check: bool = False) -> RunResult:
        """Run ``command`` inside the running instance ``name``."""
        return self.get(name).exec(command, stream=stream, timeout=timeout, check=check)

    def stop(self, name: str, timeout: float | None = None) -> RunResult:
        """Stop ``name`` (its stop signal, SIGTERM by default, then SIGKILL after ``timeout``, default its
        ``stop_timeout`` or 10 s); it stays listed until :meth:`rm`."""
        return self.get(name).stop(timeout=timeout)

    def rm(self, instance: "str | Instance", force: bool = False) -> None:
        """Remove an instance (by name or handle) and all it left; ``force`` stops it first."""
        inst = self._find(instance)
        if inst.backend.running(inst.state):
            if not force:
                raise KitError(f"instance {inst.name!r} is running: stop it first, or use rm -f / force=True")
            inst.backend.kill(inst.state)
        self._discard(inst)

    # -- teardown ----------------------------------------------------------
    def _forget(self, inst: Instance) -> None:
        with self._lock:
            if self._live.get(inst.name) is inst:  # never a newer instance of the same name
                del self._live[inst.name]

    def _discard(self, inst: Instance) -> None:
        state = inst.state
        try:
            inst.backend.remove(state)
        except DaemonUnavailable:
            raise  # its container is the daemon's: it stays listed (status says why) until rm works again
        except BaseException:
            self._release(inst)
            raise
        self._release(inst)

    def _release(self, inst: Instance) -> None:
        """What a removed instance held in the session: its network membership, volume markers, name."""
        state = inst.state
        try:
            self.networks.leave(state)  # after the member is gone: an auto network may go with it
        finally:
            try:
                self.volumes.detach(state.name, state.mounts)  # the volumes stay, no longer in use by it
            finally:
                self._forget(inst)

    def _discard_soon(self, inst: Instance) -> None:
        """Tear a finished instance down in the background: the result is already complete.

        The instance leaves :meth:`ps` at once (its run is over and its result returned), but its
        name stays taken until the teardown is done; :meth:`run`, :meth:`prune` and :meth:`close`
        wait for it.
        """
        t = _Teardown(self, inst)
        with self._lock:
            self._pending[inst.name] = t
        self._forget(inst)
        _removers.submit(t)

    def wait_for_teardown(self, name: str | None = None, timeout: float = 30) -> float | None:
        """Wait until the background teardown of ``name`` (or of every instance) is done.

        Returns:
            When the teardown of ``name`` finished (epoch seconds, the host clock of the phases), or
            None when ``name`` had none pending (or ``name`` is None). A teardown still running after
            ``timeout`` stays pending (and None is returned for it).
        """
        with self._lock:  # one name: looked up, not found among every teardown the session keeps
            if name is None:
                pending = list(self._pending.items())
            else:
                pending = [(name, self._pending[name])] if name in self._pending else []
        deadline = time.monotonic() + timeout
        ended = None
        for n, t in pending:
            if name is None or n == name:
                t.join(max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    continue
                with self._lock:
                    if self._pending.get(n) is t:
                        del self._pending[n]
                if n == name:
                    ended = t.ended_at
        return ended

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until nothing this session runs in the background is still running: the teardowns of
        finished foreground runs, warm-pool refills and the process's start-up sweep of dead sessions.

        A measurement that starts after this shares the machine with nothing of an earlier run (on 2
        cores, a removal or a ``runc create`` beside a start makes it measurably slower):
        :mod:`kit.bench.startup` waits for it before every sample.

        Raises:
            KitTimeout: something was still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.wait_for_teardown(timeout=max(0.0, deadline - time.monotonic()))
            sweeper = lifetime.sweeper()
            if sweeper is not None:
                sweeper.join(max(0.0, deadline - time.monotonic()))
            self.warm.wait_idle(max(0.0, deadline - time.monotonic()))
            with self._lock:
                busy = [n for n, t in self._pending.items() if t.is_alive()]
            busy += ["the dead-session sweep"] if sweeper is not None and sweeper.is_alive() else []
            busy += ["warm-pool refills"] if self.warm.filling() else []
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise KitTimeout(f"the kit was not quiet within {timeout:g} s: still running: {', '.join(busy)}")

    def _remove_instances(self) -> list[str]:
        """Remove every instance; the names of those removed (one whose runtime cannot remove it now, as
        Docker's while its daemon is down, stays listed with its status saying why)."""
        names = []
        for n in [i.name for i in self.list()]:
            try:
                self.rm(n, force=True)
                names.append(n)
            except KitError:
                pass
        self.wait_for_teardown()
        return names

    def prune(self, dead_sessions: bool = True, templates: bool = False) -> list[str]:
        """Remove every instance of this session (and its networks and warm pool), and what dead
        sessions left; say what went.

        ``templates``: also the stored VM templates (``start="snapshot"``; shared by every session)
        that no run is restoring from right now, as ``template KEY``; the next snapshot run of each
        rebuilds it (``%container prune --templates``).
        """
        names = self._remove_instances()
        self.networks.remove_all()
        names += self.warm.clear()  # the pre-created containers waiting in the pool, the checkpoints
        if templates:
            from .vm import templates as _templates  # not at import: only a prune of templates needs kit.vm

            names += [f"template {k}" for k in _templates.prune()]
        return names + (lifetime.sweep_dead_sessions() if dead_sessions else [])

    def close(self) -> None:
        """Tear everything of this session down, in this order: what upper layers keep (compose
        stacks), its instances (waiting for their teardowns), networks, the warm pool and checkpoints,
        the Docker client. Idempotent; a closed session starts nothing more."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            extensions, self._extensions = list(self._extensions.values()), {}
        for ext in extensions:
            close = getattr(ext, "close", None)
            if close is not None:
                try:
                    close()
                except KitError:
                    pass
        self._remove_instances()
        self.networks.remove_all()
        self.warm.clear()
        with self._lock:
            client, self._docker = self._docker, None
        if client is not None:
            client.close()
        for d in (self.state_dir / ".networks", self.state_dir):
            try:
                d.rmdir()  # only when empty: anything left is the reaper's to sweep
            except OSError:
                pass
        with _open_lock:
            _open.discard(self)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def close_all() -> None:
    """Close every open session (the one exit hook, :mod:`kit.api`'s, calls it)."""
    with _open_lock:
        sessions = list(_open)
    for s in sessions:
        s.close()
