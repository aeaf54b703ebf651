"""The one interface every backend implements: :class:`Runtime`.

A runtime turns a validated :class:`~kit.spec.RunSpec` plus an
:class:`~kit.images.Image` into a live :class:`InstanceState`, and can wait for,
exec into, stop and remove it. It also hands out what measurement needs:
host PIDs, the cgroup path and the runtime's own id. Runtimes never parse
user strings and never print: they raise :mod:`kit.errors` and stream bytes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypedDict

from .. import cgroups, userns
from .._files import read_file
from .._proc import Pumped, Stream, which  # noqa: F401  (which: the runtimes' one way to find a binary)
from ..cgroups import Cgroup
from ..errors import InvalidSpec, LimitsUnavailable
from ..images import Image
from ..portfwd import Forwarder
from ..spec import MIN_MEMORY, RunSpec


@dataclass
class Availability:
    """Whether a runtime can run here; ``reason`` says why not."""

    name: str
    kind: str
    available: bool
    version: str = ""
    reason: str = ""
    info: dict = field(default_factory=dict)


def _no_docker():
    from ..errors import RuntimeUnavailable

    raise RuntimeUnavailable("this instance's session gives it no Docker client")


@dataclass(frozen=True)
class Context:
    """What a runtime is given by the session that starts an instance (it never imports upward).

    Attributes:
        owner: the process's id (:data:`kit.config.SESSION_ID`): labels, the reaper, sweeps.
        session: the :class:`kit.Session`'s own short token: with the owner's id in every runtime id
            (``kit-<owner>-<session>-<name>``), two sessions of one process can both have a ``web``.
        state_root: the session's directory, ``$KIT_HOME/run/<owner>/<session>``.
        docker: returns the session's Docker client (made on first use; the one way to the daemon).
    """

    owner: str
    session: str
    state_root: Path
    docker: Callable[[], Any] = _no_docker


class Info(TypedDict, total=False):
    """Every key a runtime or the warm pool may record in :attr:`InstanceState.info` (and so in a
    :class:`~kit.result.RunResult`'s ``info``): written down here once; nothing else is written.

    Every runtime that prepares files:
        prepare_ms: milliseconds per preparation step (``cgroup``, ``rootfs``, ``netns``, ``config``,
            ``forwarder``), timed by :func:`kit.runtimes._rootfs.step`.
        rootfs: what the root filesystem is: ``overlay``, ``image, read-only`` (the image's own tree,
            nothing mounted) or the rootless overlay's kind (OCI, LXC).
    Every instance:
        stopped: the kit stopped it (:meth:`kit.Instance.stop`): a SIGKILL after the stop timeout is the
            stop's, not a kill from outside (its status stays ``exited (137)``).
    Warm starts (:mod:`kit.pool`, and a VM's template):
        pool: ``hit`` (its container, checkpoint or template was waiting) or ``miss`` (made inside
            the startup clock).
        warm: ``precreated``: ``{"pool", "prepare_s", "id"}`` (the pooled container's id).
        snapshot: a container's ``snapshot``: ``{"checkpoint", "checkpoint_s", "dir"}``.
    OCI runtimes:
        runtime_root: the runtime's ``--root``.
        overlay_mount: a rootless overlay's mount options (mounted by the user-namespace launcher).
        launcher_netns: rootless runsc with ports: it runs in the launcher's own network namespace.
    Docker:
        docker_image: the daemon's tag of the kit image; container_id: the daemon's id;
        pid, shim_pid: the container's init and its containerd shim on the host;
        docker_cgroup: the daemon's cgroup of the container (read, never removed by the kit).
    QEMU:
        accel, accel_reason, machine, boot, kernel, memory_mib, vcpus, tsc_khz: how the VM was made;
        kernel_kind (kit, distro or user), kernel_reason (why that kernel: the default, asked for, or why
        not the kit's own), kernel_entry (pvh: the uncompressed vmlinux; bzimage);
        sock_dir: its channels' directory; template, template_build_s: a ``snapshot`` start's
        template (and how long building it took, on a miss); guest_oom_kills: the guest kernel's
        OOM kills; qemu_cpu_s: QEMU's own CPU seconds, from its reap.
    """

    prepare_ms: dict[str, float]
    stopped: bool
    rootfs: str
    pool: str
    warm: dict[str, Any]
    snapshot: dict[str, Any]
    runtime_root: str
    overlay_mount: str
    launcher_netns: bool
    docker_image: str
    container_id: str
    pid: int
    shim_pid: int
    docker_cgroup: str
    accel: str
    accel_reason: str
    machine: str
    boot: str
    kernel: str
    kernel_kind: str
    kernel_reason: str
    kernel_entry: str
    memory_mib: int
    vcpus: int
    tsc_khz: int | None
    sock_dir: str
    template: str
    template_build_s: float
    guest_oom_kills: int
    qemu_cpu_s: float | None


class NetworkView(Protocol):
    """What a runtime needs of the kit network an instance joins (:class:`kit.netspace.Network`):
    the namespace its holder keeps, and the network's hosts file."""

    holder_id: str
    pid: int
    nsfd: int
    ns_path: str
    hosts_path: Path

    def open_ns(self) -> int: ...
    def oci_mount(self) -> dict: ...
    def hosts_text(self, guest: str | None = None) -> str: ...
    def publish(self, ports) -> Forwarder: ...


class HostMount(Protocol):
    """A volume resolved for a runtime (:class:`kit.volumestore.Resolved`): the host directory every
    runtime mounts at ``target``."""

    source: str
    target: str
    read_only: bool
    kind: str
    host: Path


@dataclass
class InstanceState:
    """One started container, VM or process, as its runtime tracks it (the runtime-level record
    under a :class:`kit.Instance` handle). A runtime with state of its own subclasses it
    (:attr:`Runtime.state_class`): typed fields, never an untyped slot read with getattr.

    Attributes:
        name: the user-facing name.
        runtime: the runtime's name.
        spec, image: what was started.
        id: the runtime's own id (container id, runc id, QEMU pid file stem...).
        state_dir: the kit's files for it (logs, bundle, overlay, sockets).
        ctx: what the session gave (ids, state root, Docker client).
        proc: the host process the kit launched (runc, lxc-execute, qemu), if any.
        cgroup: the kit-owned cgroup holding it, if limits were asked for.
        phases: milestones (epoch seconds) recorded while starting; ``requested`` (stamped by
            the session just before ``Runtime.start``) is where every runtime's startup clock starts.
        info: what the runtime recorded (:class:`Info` lists every key).
    """

    name: str
    runtime: str
    spec: RunSpec
    image: Image | None
    id: str
    state_dir: Path
    ctx: Context
    proc: Pumped | None = None
    cgroup: Cgroup | None = None
    created_at: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)
    info: Info = field(default_factory=Info)
    #: Host-side helpers that live and die with this instance (never on the runtime
    #: singleton, which threads share): the port forwarder, a network namespace fd,
    #: helper threads.
    forwarder: Forwarder | None = None
    netns_fd: int | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    #: The spec's volumes resolved by the session before start (kit.volumestore).
    mounts: list[HostMount] = field(default_factory=list)
    #: The kit network joined (kit.netspace), or None: its namespace and hosts file.
    net: NetworkView | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    removed: bool = False

    def adopt(self, made: "InstanceState") -> None:
        """Become ``made``, an instance of this runtime created ahead of time for the same spec (a
        warm pool's container, :mod:`kit.pool`): its id, state directory, process, cgroup, namespace
        handle and info; this instance's own (still empty) state directory goes."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.id, self.state_dir, self.proc, self.cgroup = made.id, made.state_dir, made.proc, made.cgroup
        self.netns_fd, made.netns_fd = made.netns_fd, None
        self.info.update(made.info)

    @property
    def tag(self) -> str:
        """``<owner>-<session>-<name>``: unique on this host; the runtime id is ``kit-<tag>``."""
        return f"{self.ctx.owner}-{self.ctx.session}-{self.name}"

    def kit_cgroup(self) -> Cgroup:
        """The kit's cgroup of this instance, ``kit/<owner>-<session>-<name>`` (not created here)."""
        return cgroups.for_instance(self.ctx.owner, f"{self.ctx.session}-{self.name}")

    @property
    def stdout_path(self) -> Path:
        return self.state_dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.state_dir / "stderr.log"


class Runtime(ABC):
    """Base class of every backend. Subclasses set ``name`` and ``kind``.

    ``kind`` is one of ``process``, ``container``, ``sandbox``, ``vm``.
    """

    name: str = "?"
    kind: str = "container"
    #: The record of its instances: :class:`InstanceState`, or a subclass with the runtime's own typed state.
    state_class: type[InstanceState] = InstanceState
    #: Where the image's root filesystem must be (False: the runtime ignores images).
    uses_image: bool = True
    #: Whether the runtime mounts ``RunSpec.volumes`` / joins ``RunSpec.network``; the API refuses
    #: a run that asks for what its runtime cannot do, rather than ignore it.
    supports_volumes: bool = False
    supports_networks: bool = False
    #: The only kind of kit-network holder (:data:`kit.netspace.HOLDERS`) this runtime can join, or None:
    #: it joins any network's namespace by path (Docker joins nothing but another Docker container).
    network_holder: str | None = None
    #: Whether its instance keeps its own copy of a kit network's hosts file (a VM guest), rewritten by
    #: exec as members come and go; a container bind-mounts the network's file, which follows by itself.
    hosts_copied: bool = False
    #: The least memory limit an instance can start in (bytes), and how messages name the instance.
    min_memory: int = MIN_MEMORY
    min_memory_what: str = "a container"
    #: The start modes (:data:`kit.spec.START_MODES`) this runtime honours; the API refuses others
    #: before anything starts, saying why (:meth:`start_mode_refusal`).
    start_modes: tuple[str, ...] = ("cold",)
    #: The start modes :meth:`start` itself honours (a VM restores its own templates there). A mode of
    #: :attr:`start_modes` not listed here goes through the session's warm pool (:mod:`kit.pool`), which
    #: calls the optional methods the mode needs: :meth:`create` and :meth:`start_created` for
    #: ``precreated``, :meth:`checkpoint` and :meth:`restore` for ``snapshot``.
    own_start_modes: tuple[str, ...] = ("cold",)
    #: Whether a memory/CPU limit is a cgroup the kit makes (:func:`kit.cgroups.for_instance`), so an
    #: ordinary user needs one they may write (:meth:`limits_refusal`); False where the runtime's own
    #: machinery enforces it (Docker's daemon, a VM's guest size).
    limits_in_kit_cgroup: bool = False
    #: What an instance shares with the host and where its costs are counted, for measurement
    #: (kit.bench reads these: no runtime is named outside kit.runtimes). Its network is the host's
    #: own: a service's port is the host's, nothing publishes or forwards it (the bare process).
    host_network: bool = False
    #: Its files are the host's (no root of its own): a command "inside" it is a command on the host.
    shares_host_files: bool = False
    #: The stored forms of an image its instances are made from, which they all share on disk
    #: (kit.bench.disk): ``rootfs`` (the image's tree), a format under ``<image>/formats/`` (``oci``,
    #: ``lxc``, ``qemu``), ``kernel`` (the default guest kernel), or an engine's own copy
    #: (``docker``, ``podman``: there its instances' writable layers are too).
    image_formats: tuple[str, ...] = ("rootfs",)
    #: Its instances' CPU is counted by a cgroup holding their processes alone (False: by the times
    #: of their host processes, as for a bare process or QEMU).
    cgroup_accounting: bool = True
    #: The name of a process of the runtime's own that forwards a published port ("" when the kit's
    #: forwarder or the kernel does): its CPU is the forwarder's (kit.bench.loads).
    forwarder_process: str = ""
    #: Host daemons every instance relies on, whose memory is the runtime's cost per host (kit.bench.footprint).
    daemons: tuple[str, ...] = ()
    #: The run options (:data:`kit.spec.EXTRAS`) this runtime cannot honour, each with why (one clause);
    #: the session refuses a run asking for one of them rather than run it without.
    cannot: dict[str, str] = {}

    #: How long a negative verdict is believed before the next caller probes again: a probe
    #: that failed on a busy host (or before dockerd was up) must not disable a runtime for good.
    NEGATIVE_TTL = 30.0

    def __init__(self):
        self._availability: Availability | None = None
        self._probed_at = 0.0
        self._probe_lock = threading.Lock()

    # -- discovery ---------------------------------------------------------
    def availability(self, refresh: bool = False) -> Availability:
        """Whether this runtime is usable here, and if not, why.

        Probed once: concurrent callers wait for that one probe and share its verdict.
        A positive verdict is kept for the session (``refresh=True`` probes again); a
        negative one only for :attr:`NEGATIVE_TTL` seconds, then the next caller re-probes.
        """
        asked = time.monotonic()
        if not refresh and self._fresh():
            return self._availability
        with self._probe_lock:
            # A probe that ended while this caller waited for the lock is as good as a new one.
            if self._fresh() and (not refresh or self._probed_at >= asked):
                return self._availability
            try:
                a = self.probe()
            except Exception as e:  # a probe must never take the kit down
                a = Availability(self.name, self.kind, False, reason=f"probe failed: {e}")
            self._availability, self._probed_at = a, time.monotonic()
            return a

    def _fresh(self) -> bool:
        a = self._availability
        return a is not None and (a.available or time.monotonic() - self._probed_at < self.NEGATIVE_TTL)

    @abstractmethod
    def probe(self) -> Availability:
        """Check binaries, versions and kernel support; never raise."""

    def start_mode_refusal(self, mode: str) -> str:
        """Why ``mode`` cannot start an instance of this runtime (one line), or '' if it can."""
        if mode in self.start_modes:
            return ""
        why = self._no_start_mode(mode)
        return (f"start mode {mode!r} is not offered by runtime {self.name!r} (it offers "
                f"{', '.join(self.start_modes)})" + (f": {why}" if why else ""))

    def _no_start_mode(self, mode: str) -> str:
        """A runtime's reason for not offering ``mode`` (a clause), or ''."""
        return ""

    # -- limits ------------------------------------------------------------
    def limits_refusal(self) -> str:
        """Why this user's instances of this runtime cannot have a memory/CPU limit (one line), or ''."""
        return cgroups.limits_refusal() if self.limits_in_kit_cgroup else ""

    def check_limits(self, memory: int | None, cpus: float | None) -> None:
        """Refuse a limited run that this user's runtime cannot enforce, rather than run it unlimited.

        Raises:
            LimitsUnavailable: a limit is asked for and :meth:`limits_refusal` says why it cannot be.
        """
        why = self.limits_refusal() if memory or cpus else ""
        if why:
            raise LimitsUnavailable(f"{self.name}: cannot limit {'memory' if memory else 'cpu'} as "
                                    f"{userns.user()}: {why}")

    def idle_limit(self, memory: int | None) -> int | None:
        """The memory limit of a study's idle instance: ``memory``, or None where this user cannot have
        one on this runtime (the study's environment record says so: :meth:`enforced_limits`); a limit
        caps an idle instance, it does not change what it uses."""
        return None if self.limits_refusal() else memory

    def enforced_limits(self) -> str:
        """What the environment record of a study says about limits on this runtime for this user."""
        if not userns.active() or not self.limits_in_kit_cgroup:
            return "enforced"
        why = self.limits_refusal()
        return f"refused ({why})" if why else "enforced (delegated cgroup v2)"

    # -- optional start modes (declared by start_modes) ---------------------
    def _refuse(self, mode: str) -> InvalidSpec:
        return InvalidSpec(self.start_mode_refusal(mode) or f"runtime {self.name!r} does not implement {mode!r}")

    def create(self, inst: InstanceState) -> None:
        """``precreated``, first half: make the instance, its command fixed but not started (``runc
        create``, ``docker create``), ahead of the request that starts it.

        Raises:
            InvalidSpec: this runtime does not offer ``precreated`` (the default).
        """
        raise self._refuse("precreated")

    def start_created(self, inst: InstanceState, stream: Stream | None = None) -> None:
        """``precreated``, second half: start what :meth:`create` made (``inst`` has adopted it), its output
        to ``stream`` from now on; stamps ``started``."""
        raise self._refuse("precreated")

    def checkpoint(self, inst: InstanceState, directory: Path) -> None:
        """``snapshot``: save the running ``inst`` into ``directory`` (which may end it), for :meth:`restore`."""
        raise self._refuse("snapshot")

    def restore(self, inst: InstanceState, directory: Path, stream: Stream | None = None) -> None:
        """``snapshot``: start ``inst`` as the service :meth:`checkpoint` saved in ``directory``; stamps
        ``launched`` and ``started``."""
        raise self._refuse("snapshot")

    # -- lifecycle ---------------------------------------------------------
    def new_instance(self, spec: RunSpec, image: Image | None, ctx: Context) -> InstanceState:
        """The record of an instance of ``spec`` in ``ctx``'s session, its state directory made
        (FileExistsError: that session has one of this name)."""
        state = ctx.state_root / spec.name
        state.mkdir(parents=True, exist_ok=False)
        return self.state_class(name=spec.name, runtime=self.name, spec=spec, image=image,
                                id=f"kit-{ctx.owner}-{ctx.session}-{spec.name}", state_dir=state, ctx=ctx)

    @abstractmethod
    def start(self, inst: InstanceState, stream: Stream | None = None) -> None:
        """Start ``inst``; with ``spec.detach`` False, output goes to ``stream`` as it comes.

        On failure, remove whatever was created and raise a KitError.
        """

    def wait(self, inst: InstanceState, timeout: float | None = None) -> int:
        """Block until the instance exits; return its exit code.

        Raises subprocess.TimeoutExpired when ``timeout`` passes (nothing is killed).
        """
        assert inst.proc is not None
        code = inst.proc.wait(timeout)
        # 'exited': the runtime's own process (runc run, lxc-execute, the command itself) has
        # ended and handed over the exit status (see kit.bench.metrics, launch_to_exit).
        inst.phases.setdefault("exited", inst.proc.exited_at)
        inst.exit_code = _norm_code(code)
        if inst.exit_code != 0:
            self.raise_start_error(inst)
        return inst.exit_code

    def start_error(self, inst: InstanceState) -> str:
        """Why the runtime could not start the command, from its own logs; "" if it did start.

        Tells "the command exited non-zero" (a result) from "the runtime failed" (an error).
        """
        return ""

    def raise_start_error(self, inst: InstanceState) -> None:
        why = self.start_error(inst)
        if why:
            from ..errors import StartFailed

            raise StartFailed(f"{self.name}: could not start {inst.spec.command[0]!r}: {why}")

    def running(self, inst: InstanceState) -> bool:
        return inst.proc is not None and inst.proc.proc.poll() is None

    @abstractmethod
    def stop(self, inst: InstanceState, timeout: float = 10.0) -> None:
        """Ask the instance to stop (SIGTERM); kill it after ``timeout`` seconds."""

    def kill(self, inst: InstanceState) -> None:
        """Stop at once."""
        self.stop(inst, timeout=0)

    def remove(self, inst: InstanceState) -> None:
        """Delete everything the instance left: runtime state, mounts, cgroup, files."""
        if self.running(inst):
            self.kill(inst)
        if inst.proc is not None:  # output no wait collected (a failed start): a thread drains it
            inst.proc.release()
        self.cleanup(inst)
        if inst.cgroup is not None:
            inst.cgroup.destroy()
        userns.rmtree(inst.state_dir)  # shutil.rmtree, and what a user namespace made unreadable
        inst.removed = True

    def cleanup(self, inst: InstanceState) -> None:
        """Runtime-specific teardown (state, mounts); must be idempotent."""

    def unpublish(self, inst: InstanceState) -> None:
        """Release the instance's published ports: close the kit's forwarder into it. Called once it has
        stopped (its handle's stop and wait, or ps finding it exited), as ``docker stop`` releases a
        container's ports: the kit has no restart, so a stopped instance's port never serves again, and
        kept bound it would refuse the port to a replacement and accept clients with nothing behind
        them. Idempotent; a port that is the instance's own process's (QEMU's user network) goes with it."""
        fwd, inst.forwarder = inst.forwarder, None
        if fwd is not None:
            fwd.stop()

    def _unpublish_and_kill(self, inst: InstanceState) -> None:
        """Where a cleanup starts: its published ports closed, then the instance killed if it still runs."""
        self.unpublish(inst)
        if self.running(inst):
            self.kill(inst)

    def sweep(self, session: str, dry_run: bool = False) -> list[str]:
        """Remove what a (dead) kit session left in this runtime; return a line per thing removed.

        With ``dry_run``, remove nothing and list what is there (tests use it to prove
        that nothing is left).

        Host processes, mounts and cgroups below the session's directory are swept
        generically by :mod:`kit.lifetime`; a runtime adds what only it can find
        (daemon-side containers, runtime state directories).
        """
        return []

    @abstractmethod
    def exec(self, inst: InstanceState, argv: list[str], stream: Stream | None = None,
             timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run ``argv`` inside a running instance; return (exit code, stdout, stderr)."""

    def logs(self, inst: InstanceState) -> tuple[bytes, bytes]:
        return read_file(inst.stdout_path), read_file(inst.stderr_path)

    def oom_killed(self, inst: InstanceState) -> bool:
        return inst.cgroup is not None and inst.cgroup.oom_kills() > 0

    #: The runtime's own per-instance process that the kit launches and keeps (``runc run``,
    #: ``lxc-execute``), named in the status when a signal kills it; '' where the kit's process is the
    #: instance's own (a bare process, QEMU).
    monitor_name: str = ""

    def end_reason(self, inst: InstanceState) -> str:
        """How an ended instance ended when its command did not simply exit, for its status:
        ``oom_killed``, ``killed (SIGKILL)`` (exit 128+9, or the kit's process killed), ``killed (SIGKILL):
        runc run, its monitor``; '' for an ordinary exit. Runtimes add their own (a VM's guest panic)."""
        if self.oom_killed(inst):
            return "oom_killed"
        if inst.info.get("stopped"):  # its end is the kit's own stop, its SIGKILL after the timeout too
            return ""
        code = inst.proc.proc.returncode if inst.proc is not None else None
        if code is not None and code < 0 and (self.monitor_name or -code == signal.SIGKILL):
            return f"killed ({signal_name(-code)})" + (f": {self.monitor_name}, its monitor" if self.monitor_name else "")
        if inst.exit_code == 128 + signal.SIGKILL:  # as a shell and docker say a SIGKILL
            return "killed (SIGKILL)"
        return ""

    # -- what measurement needs -------------------------------------------
    def pids(self, inst: InstanceState) -> list[int]:
        """Host PIDs that belong to the instance (workload, shims, helpers)."""
        out: set[int] = set()
        if inst.proc is not None and inst.proc.proc.poll() is None:
            out.add(inst.proc.pid)
            out.update(descendants(inst.proc.pid))
        if inst.cgroup is not None:
            out.update(inst.cgroup.pids())
        return sorted(out)

    def monitor_pids(self, inst: InstanceState) -> list[int]:
        """The subset of :meth:`pids` that only supervises the instance (``runc run``, LXC's monitor,
        ``runsc run``, containerd's shim): per-instance runtime cost, reported apart from the
        instance's own memory (a user's ``runc run -d`` or containerd would not keep a ``runc run``
        process). Default: none."""
        return []

    def cgroup_path(self, inst: InstanceState) -> Path | None:
        return inst.cgroup.path if inst.cgroup is not None else None

    def __repr__(self) -> str:
        return f"<Runtime {self.name} ({self.kind})>"


def exec_cli(inst: InstanceState, cmd: list[str], argv: list[str], stream: Stream | None = None,
             timeout: float | None = None, **kw) -> tuple[int, bytes, bytes]:
    """Run a runtime's exec command line (``runc exec``, ``lxc-attach``...) to completion.

    One deadline (default 60 s; on expiry the command is killed and KitTimeout raised);
    the output goes to ``stream`` once it is complete.
    """
    from .._proc import run
    from ..errors import KitTimeout

    limit = timeout or 60
    try:
        p = run(cmd, timeout=limit, check=False, stdin=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired:
        raise KitTimeout(f"exec {argv[0]!r} in {inst.name!r} did not finish within {limit:g} s") from None
    if stream:
        stream("stdout", p.stdout)
        stream("stderr", p.stderr)
    return p.returncode, p.stdout, p.stderr


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 99`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _norm_code(code: int) -> int:
    # Popen reports death by signal N as -N; shells and docker say 128+N.
    return 128 - code if code < 0 else code


def descendants(pid: int) -> list[int]:
    """The PIDs of every process below ``pid`` (children, theirs, ...); [] when it is gone."""
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


