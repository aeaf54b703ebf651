"""The Python API the magics, notebooks and scripts share.

>>> import kit
>>> r = kit.run("busybox", ["sh", "-c", "exit 3"], runtime="runc")
>>> r.exit_code
3
>>> kit.start("busybox", ["sleep", "300"], runtime="lxc", name="napper")
>>> kit.ps()                     # a DataFrame
>>> kit.rm("napper", force=True)
"""

from __future__ import annotations

import atexit
import os
import posixpath
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from . import images as _images
from . import lifetime
from . import networks as _networks
from . import runtimes as _runtimes
from . import volumes as _volumes
from ._proc import Stream
from .errors import (CommandNotFound, InstanceNotFound, InvalidSpec, KitError, KitTimeout,
                     NameInUse)
from .result import RunResult
from .runtimes import _rootfs
from .runtimes.base import Instance, Runtime
from .spec import RunSpec, check_argv, parse_cpus, parse_env, parse_memory, parse_port, show

#: Live instances of this session, by name.
_live: dict[str, tuple[Runtime, Instance]] = {}
_lock = threading.Lock()


def _spec(image, command, name=None, detach=False, memory=None, cpus=None, env=None, ports=None,
          workdir=None, timeout=None, hostname=None, read_only=False, harden=True, runtime=None,
          volumes=None, network=None, start="cold", **options) -> RunSpec:
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
                   network=network, start=start, options=options, **kw)


def _check_command(rt: Runtime, spec: RunSpec, image) -> None:
    """Refuse, before anything starts, a command that does not exist where it will run."""
    argv0 = spec.command[0]
    if image is None:
        import shutil

        if ("/" in argv0 and not os.access(argv0, os.X_OK)) or ("/" not in argv0 and not shutil.which(argv0)):
            raise CommandNotFound(f"command {show(argv0)} not found on this host's PATH: check its spelling or install it")
        return
    # The PATH the command will run with: the user's -e PATH, else the image's own ENV PATH (Go,
    # Node, Java images put their tools there), else the kit's default, as docker run resolves it.
    path = _rootfs.environment(spec, image).get("PATH", "")
    cwd = _rootfs.workdir(spec, image)  # a relative ./tool resolves from the image's WORKDIR too
    key = (image.id, argv0, path, cwd)
    if key in _found_commands:  # an image id names immutable content: a command found stays found
        return
    if resolve_in_rootfs(image.rootfs, argv0, path, cwd) is not None:
        _found_commands[key] = True
    else:
        raise CommandNotFound(
            f"command {show(argv0)} not found in image {image.name!r} (searched {show(path, 80)}): "
            f"install it in the image or give its full path"
        )


_found_commands: dict[tuple, bool] = {}


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


def _create(image: str | None, command, runtime: str | None, **kw) -> tuple[Runtime, Instance]:
    from_image = _image_command(command) and bool(image)
    # Bad options are reported before anything else (a placeholder stands for the image's command).
    spec = _spec(image or "-", ["-"] if from_image else command, runtime=runtime, **kw)
    rt = _runtimes.require(runtime or _runtimes.default_container_runtime())
    rt_name = rt.name
    if spec.start != "cold":  # a mode the runtime does not offer is refused before anything starts
        from . import warm

        warm.check(rt, spec)
    if rt.uses_image and not image:
        raise InvalidSpec(f"runtime {rt_name!r} needs an image: e.g. busybox")
    if spec.volumes and not rt.supports_volumes:
        raise InvalidSpec(f"runtime {rt_name!r} cannot mount volumes"
                          + (": a bare process shares the host's filesystem; use a container or VM runtime"
                             if not rt.uses_image else "; use runc, crun, runsc, lxc, docker or qemu"))
    if spec.network and not rt.supports_networks:
        raise InvalidSpec(f"runtime {rt_name!r} cannot join a kit network; use runc, crun, runsc, lxc, docker "
                          f"or qemu")
    if from_image and not rt.uses_image:
        raise InvalidSpec("no command given: put the command after the image, e.g. busybox echo hello")
    # A reference naming a registry (127.0.0.1:5000/app:1, NAME@sha256:...) is pulled on first use.
    img = _images.obtain(image) if rt.uses_image else None
    if img is not None:
        spec.command = check_argv(_images.command_for(img, None if from_image else spec.command))
    _check_command(rt, spec, img)
    _check_ports(spec)
    rt.check_limits(spec.memory, spec.cpus)
    lifetime.ensure_reaper()
    wait_for_teardown(spec.name)
    with _lock:
        if spec.name in _live:
            raise NameInUse(f"name {spec.name!r} is already in use by a {_live[spec.name][0].name} instance: "
                            f"remove it with rm {spec.name} or choose another --name")
        # Host directories checked, named volumes created and marked in use (kit.volumes).
        mounts = _volumes.attach(spec.name, spec.volumes, rt_name)
        try:
            inst = rt.new_instance(spec, img)
        except BaseException as e:
            _volumes.detach(spec.name, mounts)
            if isinstance(e, FileExistsError):
                raise NameInUse(f"name {spec.name!r} is already in use: remove it or choose another --name") from None
            raise
        inst.mounts = mounts
        _live[spec.name] = (rt, inst)
    if spec.network:
        try:  # a member before it starts: its runtime joins the network's namespace
            _networks.join(spec.network, rt, inst)
        except BaseException:
            _discard(rt, inst)
            raise
    return rt, inst


def _forget(inst: Instance) -> None:
    with _lock:
        if _live.get(inst.name, (None, None))[1] is inst:  # never a newer instance of the same name
            del _live[inst.name]


def _discard(rt: Runtime, inst: Instance) -> None:
    try:
        rt.remove(inst)
    finally:
        try:
            _networks.leave(inst)  # after the member is gone: an auto network may go with it
        finally:
            try:
                _volumes.detach(inst.name, inst.mounts)  # the volumes stay, no longer in use by it
            finally:
                _forget(inst)


#: Foreground instances whose teardown (unmount, state, cgroup) runs off the caller's path.
_pending: dict[str, "_Teardown"] = {}


class _Teardown(threading.Thread):
    """The background removal of one finished foreground instance; ``ended_at`` (epoch seconds)
    says when everything it left was gone, so that a measurement can time the removal itself."""

    def __init__(self, rt: Runtime, inst: Instance):
        super().__init__(name=f"kit-rm-{inst.name}", daemon=True)
        self.rt, self.inst = rt, inst
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            _discard(self.rt, self.inst)
        finally:
            self.ended_at = time.time()


def _discard_soon(rt: Runtime, inst: Instance) -> None:
    """Tear a finished instance down in the background: the result is already complete.

    The instance leaves :func:`ps` at once (its run is over and its result returned), but its
    name stays taken until the teardown is done; :func:`_create`, :func:`prune` and exit wait for it.
    """
    t = _Teardown(rt, inst)
    with _lock:
        _pending[inst.name] = t
    _forget(inst)
    t.start()


def wait_for_teardown(name: str | None = None, timeout: float = 30) -> float | None:
    """Wait until the background teardown of ``name`` (or of every instance) is done.

    Returns:
        When the teardown of ``name`` finished (epoch seconds, the host clock of the phases), or
        None when ``name`` had none pending (or ``name`` is None). A teardown still running after
        ``timeout`` stays pending (and None is returned for it).
    """
    with _lock:
        pending = list(_pending.items())
    deadline = time.monotonic() + timeout
    ended = None
    for n, t in pending:
        if name is None or n == name:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                continue
            with _lock:
                if _pending.get(n) is t:
                    del _pending[n]
            if n == name:
                ended = t.ended_at
    return ended


def wait_until_quiet(timeout: float = 60.0) -> None:
    """Block until nothing this session runs in the background is still running: the teardowns of
    finished foreground runs, warm-pool refills (:mod:`kit.warm`) and the start-up sweep of dead
    sessions.

    A measurement that starts after this shares the machine with nothing of an earlier run (on 2
    cores, a removal or a ``runc create`` beside a start makes it measurably slower):
    :mod:`kit.bench.startup` calls it before every sample.

    Raises:
        KitTimeout: something was still running after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = max(0.0, deadline - time.monotonic())
        wait_for_teardown(timeout=left)
        _sweeper.join(max(0.0, deadline - time.monotonic()))
        warm = sys.modules.get("kit.warm")  # loaded only by a warm start, which is what refills
        if warm is not None:
            warm.POOL.wait_idle(max(0.0, deadline - time.monotonic()))
        with _lock:
            busy = [n for n, t in _pending.items() if t.is_alive()]
        busy += ["the dead-session sweep"] if _sweeper.is_alive() else []
        busy += ["warm-pool refills"] if warm is not None and warm.POOL.filling() else []
        if not busy:
            return
        if time.monotonic() >= deadline:
            raise KitTimeout(f"the kit was not quiet within {timeout:g} s: still running: {', '.join(busy)}")


def _result(rt: Runtime, inst: Instance, out: bytes = b"", err: bytes = b"") -> RunResult:
    phases = dict(inst.phases)
    return RunResult(
        runtime=rt.name, image=inst.image.name if inst.image else None, name=inst.name,
        command=list(inst.spec.command), exit_code=inst.exit_code, stdout_bytes=out, stderr_bytes=err,
        started_at=phases.get("launched", inst.created_at), ended_at=phases.get("exited"),
        oom_killed=inst.oom_killed, timed_out=inst.timed_out, detached=inst.spec.detach,
        phases=phases, info=dict(inst.info),
    )


def run(image: str | None, command: Sequence[str], runtime: str | None = None, *, detach: bool = False,
        name: str | None = None, memory=None, cpus=None, env=None, ports: Iterable = (), workdir=None,
        timeout: float | None = None, stream: Stream | None = None, check: bool = False,
        **options) -> RunResult:
    """Run ``command`` in ``image`` under ``runtime`` and return its :class:`RunResult`.

    A foreground run waits for the command, then removes the instance (as
    ``docker run --rm``; the removal finishes in the background once the result
    is complete, :func:`wait_for_teardown` waits for it); a detached one (``detach=True``) keeps running until
    :func:`stop`/:func:`rm`.

    Args:
        image: image name (``busybox``, or one made with :mod:`kit.images`); ignored by ``process``.
        command: argv list; shell metacharacters reach the command literally.
        runtime: ``process``, ``runc``, ``crun``, ``runsc``, ``lxc``, ``docker``, ``podman`` or
            ``qemu``; None picks the first available container runtime.
        memory: limit such as ``"64m"``; cpus: CPU share such as ``1.5``.
        env: ``{"K": "V"}`` or ``["K=V"]``; ports: ``["8080:80"]``, published on 127.0.0.1.
        timeout: seconds before a foreground run is killed (then ``timed_out``, exit 124).
        stream: callback(label, bytes) receiving output as it arrives.
        check: raise :class:`~kit.errors.ExitError` on a non-zero exit.
        **options: runtime-specific (e.g. ``kernel=``, ``machine=`` for qemu).

    Raises:
        KitError: bad input, unavailable runtime, unknown image, missing command...
    """
    rt, inst = _create(image, command, runtime, name=name, detach=detach, memory=memory, cpus=cpus,
                       env=env, ports=ports, workdir=workdir, timeout=timeout, **options)
    # Every runtime's startup clock starts here, after the kit's own checks (common to all):
    # what a runtime prepares before launching (overlay, bundle, cgroup, disk, image) is its
    # 'prepare' time, inside the measured span for every runtime and start mode alike (a warm
    # start that has to make its container or checkpoint pays for it here: info["pool"] = "miss").
    inst.phases["requested"] = time.time()
    try:
        if inst.spec.start == "precreated" or (inst.spec.start == "snapshot" and rt.kind != "vm"):
            # kit.warm: created ahead (or a container's checkpoint restored)
            from . import warm

            warm.start(rt, inst, stream=None if detach else stream)
        else:
            rt.start(inst, stream=None if detach else stream)
    except BaseException:
        _discard(rt, inst)
        raise
    if detach:
        return _result(rt, inst)
    try:
        try:
            rt.wait(inst, timeout=inst.spec.timeout)
        except subprocess.TimeoutExpired:
            rt.kill(inst)
            inst.timed_out = True
            inst.exit_code = 124
        inst.phases.setdefault("exited", time.time())
        inst.oom_killed = inst.oom_killed or rt.oom_killed(inst)
        out, err = rt.logs(inst)
        result = _result(rt, inst, out, err)
    except BaseException:
        _discard(rt, inst)
        raise
    _discard_soon(rt, inst)
    if inst.spec.start == "precreated":
        from . import warm

        warm.refill(rt, inst)  # the next identical run finds its container waiting
    return result.check() if check else result


def start(image: str | None, command: Sequence[str], runtime: str | None = None, **kw) -> RunResult:
    """Start a detached instance (a service); see :func:`run` for the arguments."""
    return run(image, command, runtime, detach=True, **kw)


def _find(name: str) -> tuple[Runtime, Instance]:
    try:
        return _live[name]
    except KeyError:
        have = ", ".join(sorted(_live)[:5]) + (", ..." if len(_live) > 5 else "") or "none"
        raise InstanceNotFound(f"no instance named {show(name)} (running: {have}); see ps") from None


def instance(name: str) -> tuple[Runtime, Instance]:
    """The (runtime, instance) pair of a live instance, for measurement."""
    return _find(name)


def ps(all: bool = True):  # noqa: A002
    """A DataFrame of this session's instances: name, runtime, image, command, status, ..."""
    import pandas as pd

    rows = []
    with _lock:
        live = sorted(_live.items())
    for name, (rt, inst) in live:
        alive = rt.running(inst)
        if not alive and inst.exit_code is None:
            try:
                rt.wait(inst, timeout=0.01)
            except Exception:
                pass
        status = "running" if alive else f"exited ({inst.exit_code})"
        if not all and not alive:
            continue
        rows.append({"name": name, "runtime": rt.name, "kind": rt.kind,
                     "image": inst.image.name if inst.image else "-",
                     "command": " ".join(inst.spec.command), "status": status,
                     "ports": ", ".join(f"127.0.0.1:{h}->{c}" for h, c in inst.spec.ports),
                     "network": inst.spec.network or "-",
                     "created": pd.Timestamp(inst.created_at, unit="s", tz="UTC").floor("s"),
                     "id": inst.id})
    return pd.DataFrame(rows, columns=["name", "runtime", "kind", "image", "command", "status", "ports",
                                       "network", "created", "id"])


def logs(name: str) -> RunResult:
    """What the instance has written so far, as a RunResult."""
    rt, inst = _find(name)
    out, err = rt.logs(inst)
    return _result(rt, inst, out, err)


def exec_(name: str, command: Sequence[str], stream: Stream | None = None, timeout: float | None = 60,
          check: bool = False) -> RunResult:
    """Run ``command`` inside the running instance ``name``."""
    rt, inst = _find(name)
    if isinstance(command, str) or not command:
        raise InvalidSpec("exec needs a command as a list of arguments, e.g. ['ps']")
    check_argv([str(c) for c in command])
    if not rt.running(inst):
        raise InstanceNotFound(f"instance {name!r} is not running, so nothing can be exec'd in it: "
                               f"see its logs, rm it, and start a new one")
    t0 = time.time()
    code, out, err = rt.exec(inst, [str(c) for c in command], stream=stream, timeout=timeout)
    r = RunResult(runtime=rt.name, image=inst.image.name if inst.image else None, name=name,
                  command=[str(c) for c in command], exit_code=code, stdout_bytes=out, stderr_bytes=err,
                  started_at=t0, ended_at=time.time())
    return r.check() if check else r


def stop(name: str, timeout: float = 10.0) -> RunResult:
    """Stop ``name`` (SIGTERM, then SIGKILL after ``timeout``); it stays listed until :func:`rm`."""
    rt, inst = _find(name)
    rt.stop(inst, timeout=timeout)
    try:
        rt.wait(inst, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        rt.kill(inst)
        raise KitTimeout(f"{name!r} did not stop within {timeout + 5:g} s and was killed") from None
    inst.phases.setdefault("exited", time.time())
    return logs(name)


def rm(name: str, force: bool = False) -> None:
    """Remove ``name`` and all it left (state, mounts, cgroup); ``force`` stops it first."""
    rt, inst = _find(name)
    if rt.running(inst):
        if not force:
            raise KitError(f"instance {name!r} is running: stop it first, or use rm -f / force=True")
        rt.kill(inst)
    _discard(rt, inst)


def prune(dead_sessions: bool = True, templates: bool = False) -> list[str]:
    """Remove every instance of this session, and what dead sessions left; say what went.

    ``templates``: also the stored VM templates (``start="snapshot"``; shared by every session)
    that no run is restoring from right now, as ``template KEY``; the next snapshot run of each
    rebuilds it (``%container prune --templates``).
    """
    with _lock:
        names = list(_live)
    for n in names:
        try:
            rm(n, force=True)
        except KitError:
            pass
    wait_for_teardown()
    _networks.remove_all()
    if "kit.warm" in sys.modules:  # the pre-created containers waiting in the pool
        names += sys.modules["kit.warm"].clear()
    if templates:
        from .vm import templates as _templates

        names += [f"template {k}" for k in _templates.prune()]
    return names + (lifetime.sweep_dead_sessions() if dead_sessions else [])


atexit.register(prune, dead_sessions=False)
#: What dead sessions left, swept once per session in the background (:func:`wait_until_quiet` waits).
_sweeper = lifetime.sweep_dead_sessions_in_background()
