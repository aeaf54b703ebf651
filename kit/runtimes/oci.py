"""OCI runtimes: runc, crun and runsc (gVisor), all from one bundle builder.

Each instance's state directory is its bundle::

    <state>/config.json            built by :func:`build_config`
    <state>/rootfs/                overlay: image rootfs (lower) + <state>/upper (and <state>/work)
    <state>/runtime.log            the runtime's own log (JSON), read for start errors

(flat: each directory a start makes is a filesystem inode made and freed again in the kit's CPU
time, see :mod:`._rootfs`).

The runtime is driven with ``<binary> --root <kit root> run --bundle B ID`` under
:class:`~kit._proc.Pumped`, so the exit code is the container's and output
streams live (or goes straight to the log files when detached). ``--root``
is kit-owned (``/run/kit/<binary>``), so kit's containers are separable from
other users' and a dead session's can be swept by id prefix.

Limits: the container's cgroup is ``/kit/<session>-<name>/ctr``, *below* the
kit-owned group that carries the memory/cpu limit, so OOM kills are counted
by the kit's group and survive the runtime deleting its own.

gVisor (``runsc``) runs with ``--platform=ptrace``. Without ports it has
``--network=none``. With ports, the sandbox's own network stack cannot be
reached from the host, so kit makes a private loopback-only network
namespace, starts runsc inside it with ``--network=host`` (the Sentry then
uses that namespace's kernel loopback, not the host's network) and forwards
into it; every runsc control command for that instance runs in that
namespace too, because runsc's control socket is namespace-scoped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import cgroups, config, mounts, userns
from .._files import write_file
from .._proc import Pumped, Stream, kill_group, last_line, run, wait_until
from ..errors import KitError, KitTimeout, StartFailed
from ..portfwd import Forwarder, new_loopback_netns, setns
from ..spec import RunSpec, resolve_user
from . import _rootfs, _rootless_oci, criu, hardening
from .base import Availability, InstanceState, Runtime, exec_cli, which

#: ``runc spec``'s defaults: the capabilities, masked and read-only paths of a plain container.
CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]
#: Where the runtime mounts something in the container's root (what a shared image must have).
MOUNT_POINTS = tuple(m["destination"] for m in MOUNTS)
START_DEADLINE = 15.0  # seconds for a detached container to reach "created"


def bind_mounts(mounts) -> list[dict]:
    """OCI mounts for the instance's resolved volumes (:mod:`kit.volumes`): recursive binds,
    read-only when asked (runc and crun remount the bind ro; gVisor's gofer serves it ro)."""
    return [{"destination": m.target, "type": "bind", "source": str(m.host),
             "options": ["rbind", "ro" if m.read_only else "rw"]} for m in mounts]


def build_config(spec: RunSpec, image, rootfs: Path, cgroups_path: str | None = None,
                 network: str | None = "new") -> dict:
    """The OCI runtime config (``config.json``) for ``spec``.

    Args:
        spec: what to run.
        image: the image (its config supplies default env and workdir), or None.
        rootfs: absolute path of the bundle's root filesystem.
        cgroups_path: ``linux.cgroupsPath``, or None to let the runtime choose.
        network: ``"new"`` for an own, loopback-only network namespace; a path to
            join that namespace; None to share the runtime's (gVisor ``--network=host``).

    ``spec.harden`` adds Docker's baseline seccomp filter (:mod:`.hardening`); the capabilities
    (runc's three) and the masked and read-only /proc paths are ``runc spec``'s either way.
    """
    caps = spec.capabilities(CAPABILITIES)
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if network == "new":
        namespaces.append({"type": "network"})
    elif network:
        namespaces.append({"type": "network", "path": network})
    linux: dict = {
        "namespaces": namespaces,
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if spec.harden:
        linux["seccomp"] = hardening.oci_seccomp()
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
    cfg = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.command),
            "env": [f"{k}={v}" for k, v in spec.environment(image).items()],
            "cwd": spec.working_dir(image),
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": bool(spec.read_only)},
        "hostname": spec.hostname,
        "mounts": [dict(m) for m in MOUNTS] + extra_mounts(spec),
        "linux": linux,
    }
    if spec.user is not None:
        uid, gid, groups = resolve_user(spec.user, image.rootfs if image is not None else None)
        cfg["process"]["user"] = {"uid": uid, "gid": gid, **({"additionalGids": groups} if groups else {})}
    if spec.init:  # the init is PID 1 and runs the command (docker run --init)
        cfg["process"]["args"] = [INIT_TARGET, "--", *spec.command]
    if spec.labels:
        cfg["annotations"] = dict(spec.labels)
    return _rootless_oci.fit_config(cfg) if userns.active() else cfg


#: Where a run with ``init`` finds its init: inside /dev (a tmpfs of the container's own), so that no
#: mount point is ever made in a shared image.
INIT_TARGET = "/dev/init"


def init_binary() -> str:
    """The host's static tini (Docker's ``docker-init``), which an ``init`` run mounts at :data:`INIT_TARGET`.

    Raises:
        StartFailed: there is none (it comes with Debian's docker.io, as ``tini-static``).
    """
    for name in ("docker-init", "tini-static"):
        path = which(name)
        if path:
            return os.path.realpath(path)
    raise StartFailed("init=True needs a static tini on the host (docker-init or tini-static): apt-get install tini")


def extra_mounts(spec: RunSpec) -> list[dict]:
    """The OCI mounts of a spec's tmpfs (Docker's options: nosuid, nodev, noexec) and of its init."""
    out = [{"destination": t.target, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", *t.options()]} for t in spec.tmpfs]
    if spec.init:
        out.append({"destination": INIT_TARGET, "type": "bind", "source": init_binary(), "options": ["bind", "ro"]})
    return out


def runtime_root(binary: str) -> Path:
    """The kit-owned ``--root`` state directory of ``binary``."""
    if os.geteuid() == 0:  # a constant: made once, not on each of a start's four uses (pathlib costs CPU)
        root = _root_roots.get(binary)
        if root is None:
            root = _root_roots[binary] = Path("/run/kit") / binary
        return root
    return userns.state_base() / "oci-state" / binary


_root_roots: dict[str, Path] = {}


#: The subreaper of a pre-created or restored container: ``python -S -c SHIM PIDFILE RUNTIME-ARGV...``
#: runs ``runtime create`` (or ``restore --detach``), which exits once the container exists and would
#: orphan its init; the shim adopts that init (PR_SET_CHILD_SUBREAPER) and exits with its exit code
#: (128+N on signal N), so the kit waits for the shim as it waits for ``runc run`` in a cold start,
#: and the container's stdout/stderr pipes are the shim's.
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
#: Seconds a ``create`` or ``restore`` may take before it is abandoned (and cleaned up).
CREATE_DEADLINE = 60.0


class Relay:
    """The stream of a pre-created container's output: nobody's until a run starts it."""

    def __init__(self):
        self.target: Stream | None = None

    def __call__(self, label: str, data: bytes) -> None:
        if self.target is not None:
            self.target(label, data)


@dataclass
class OCIState(InstanceState):
    """An OCI instance: ``relay`` carries a pre-created container's output to the run that starts it."""

    relay: Relay | None = None

    def adopt(self, made: "InstanceState") -> None:
        super().adopt(made)
        if isinstance(made, OCIState):
            self.relay, made.relay = made.relay, None


class OCIRuntime(Runtime):
    """runc or crun (same command line, same bundle).

    Args:
        binary: ``runc`` or ``crun``.
    """

    kind = "container"
    state_class = OCIState
    supports_networks = True  # kit.networks: joins the network's namespace
    supports_volumes = True  # kit.volumes: bind mounts (build_config)
    limits_in_kit_cgroup = True  # the container's cgroup below the kit's limited group (_rootfs.kit_cgroup)
    image_formats = ("rootfs", "oci")
    #: Global options put before the subcommand.
    global_args: tuple[str, ...] = ()
    #: Prove the runtime works with a tiny run in probe() (crun: cgroup hybrid mode).
    smoke_test = False
    @property
    def start_modes(self) -> tuple[str, ...]:  # type: ignore[override]
        """``precreated``: ``create`` ahead, ``start`` on demand; ``snapshot`` (runc, where CRIU works):
        ``runc restore`` of a checkpointed service (:meth:`create`, :meth:`restore`; :mod:`kit.pool`)."""
        if userns.active():
            return ("cold",)
        return ("cold", "precreated") + (("snapshot",) if self.binary == "runc" and criu.probe().works else ())

    def __init__(self, binary: str = "runc"):
        super().__init__()
        self.binary = binary
        self.name = binary
        self.smoke_test = binary != "runc"
        self.monitor_name = f"{binary} run"  # named in the status when a signal kills it
        self._path: str | None = None  # the binary, once found (_cli)
        self._root_made: Path | None = None  # the --root this process made (prepare_bundle)

    # -- discovery ---------------------------------------------------------
    def probe(self) -> Availability:
        path = which(self.binary)
        if path is None:
            return Availability(self.name, self.kind, False,
                                reason=f"{self.binary} is not installed: apt-get install {self.binary} (or run make setup)")
        try:
            p = run([path, "--version"], timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Availability(self.name, self.kind, False, reason=f"{self.binary} --version failed: {e}")
        version = _version(p.stdout.decode(errors="replace"))
        info = {"root": str(runtime_root(self.binary)), **self._probe_info()}
        if userns.active():
            info["mode"] = "rootless"
            why = userns.userns_reason() or self._rootless_reason()
            if why:
                return Availability(self.name, self.kind, False, version, reason=why, info=info)
        if self.smoke_test or userns.active():
            why = self._smoke_run(path)
            if why:
                if userns.active():
                    why = f"{self.binary} fails as {userns.user()} (rootless): {why}"
                return Availability(self.name, self.kind, False, version, reason=why, info=info)
        return Availability(self.name, self.kind, True, version, info=info)

    def _probe_info(self) -> dict:
        info = {"cgroups": cgroups.describe()}
        if self.binary == "runc":  # checkpoint/restore (a snapshot start) needs a working CRIU
            info["criu"] = criu.probe().summary
        return info

    def _no_start_mode(self, mode: str) -> str:
        if userns.active():
            return ("not yet for an ordinary user (rootless): the container is created and started through the "
                    "kit's user-namespace launcher in one step")
        if mode == "snapshot" and self.binary == "runc":
            return f"CRIU does not work here ({criu.probe().reason})"
        if mode == "snapshot":
            return f"the kit drives no checkpoint/restore of {self.binary} (only of runc, where CRIU works)"
        return ""

    def _rootless_reason(self) -> str:
        """Why this runtime cannot run for an ordinary user, before trying; "" to try (a smoke run)."""
        return ""

    def _smoke_run(self, path: str, timeout: float = 8.0) -> str:
        """Run ``true`` in busybox with a deadline; '' when it worked, else why not."""
        from .. import images

        try:
            image = images.get("busybox")
        except KitError as e:
            return f"cannot prove {self.binary} works: {e}"
        # Unique per probe (id, state root, bundle): probes of other kit processes, or of this one
        # after a negative verdict expired, never share runsc's control socket name or a state file.
        token = secrets.token_hex(4)
        tmp = Path(tempfile.mkdtemp(prefix=f"probe-{self.binary}-{token}-", dir=config.state_dir()))
        root, bundle = tmp / "state", tmp / "bundle"
        cid = f"kit-{config.SESSION_ID}-probe-{self.binary}-{token}"
        # A runtime killed mid-start (the deadline) has no state yet for delete to find, but may
        # have made its cgroup: name it, so it can be removed whatever happened.
        group = cgroups.for_instance(config.SESSION_ID, f"probe-{self.binary}-{token}")
        try:
            # Read-only on the image's own rootfs: nothing is mounted on the host, nothing to leak.
            spec = RunSpec(image="busybox", command=["true"], name=f"probe-{self.binary}-{token}", read_only=True)
            bundle.mkdir()
            cfg = build_config(spec, image, image.rootfs, f"/{group.rel}")
            write_file(bundle / "config.json", json.dumps(cfg).encode())
            argv = [*(_rootless_oci.launcher() if userns.active() else ()), path, "--root", str(root),
                    *self.global_args, "run", "--bundle", str(bundle), cid]
            p = run(argv, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
            if p.returncode == 0:
                return ""
            return _last_error(p.stderr.decode(errors="replace")) or f"{self.binary} run exited {p.returncode}"
        except subprocess.TimeoutExpired:
            return f"a tiny {self.binary} run did not finish within {timeout:g} s"
        except (KitError, OSError) as e:
            return str(e)
        finally:
            if root.exists():  # the run got as far as making state: kill and delete what it made
                run([path, "--root", str(root), *self.global_args, "delete", "--force", cid], timeout=10, check=False)
            group.destroy()
            shutil.rmtree(tmp, ignore_errors=True)

    # -- lifecycle ---------------------------------------------------------
    @property
    def root(self) -> Path:
        return runtime_root(self.binary)

    def _cli(self) -> list[str]:
        if self._path is None:  # found once: a PATH search is a dozen stat calls on every command
            self._path = which(self.binary)
        return [self._path or self.binary, "--root", str(self.root), *self.global_args]

    def _cli_for(self, inst: InstanceState) -> list[str]:
        if userns.active():  # launched in the kit's user namespace, exec'd through it (._rootless_oci)
            return [*_rootless_oci.control_prefix(self.root, inst), *self._cli()]
        return self._cli()

    def _preexec(self, inst: InstanceState):
        """What a control command for ``inst`` runs before exec (gVisor: enter its namespace)."""
        fd = inst.netns_fd
        return None if fd is None else (lambda: setns(fd))

    def _ctl(self, inst: InstanceState, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return run([*self._cli_for(inst), *args], timeout=timeout, check=False, preexec_fn=self._preexec(inst))

    def _network(self, inst: InstanceState) -> str | None:
        # A kit network member joins the network's namespace (kit.networks) by path.
        return inst.net.ns_path if inst.net is not None else "new"

    def start(self, inst: InstanceState, stream: Stream | None = None) -> None:
        spec = inst.spec
        try:
            bundle = self.prepare_bundle(inst)
            argv = [*self._cli_for(inst), "--log", str(inst.state_dir / "runtime.log"), "--log-format", "json",
                    "run", "--bundle", str(bundle), inst.id]
            # Its own process group, not session: a session per start is a scheduler group per start
            # (kit._proc.group_of_its_own); the runtime opens no terminal (process.terminal is false).
            inst.proc = Pumped(argv, inst.state_dir, stream=stream, detach=spec.detach,
                               preexec_fn=self._preexec(inst), new_session=False)
            inst.phases["launched"] = inst.proc.launched_at
            inst.info["runtime_root"] = str(self.root)
            if spec.detach or spec.ports:
                self._await_started(inst)
            if spec.ports:
                with _rootfs.step(inst, "forwarder"):
                    self._publish(inst)
        except BaseException:
            self.remove(inst)
            raise

    def prepare_bundle(self, inst: InstanceState) -> Path:
        """The kit's part of a start before the runtime runs (cgroup, rootfs, network, config.json),
        each step timed; returns the bundle. Shared by cold starts, :meth:`create` and :meth:`restore`."""
        spec = inst.spec
        with _rootfs.step(inst, "cgroup"):
            inst.cgroup = _rootfs.kit_cgroup(inst)
        bundle = inst.state_dir  # made by new_instance: config.json and the rootfs go in it
        with _rootfs.step(inst, "rootfs"):
            rootfs = self._rootfs(inst, bundle / "rootfs")
        with _rootfs.step(inst, "netns"):
            network = self._network(inst)
        with _rootfs.step(inst, "config"):
            cfg = build_config(spec, inst.image, rootfs, _rootfs.container_cgroup(inst), network)
            cfg["mounts"] += bind_mounts(inst.mounts)
            if inst.net is not None:  # the network's names, at /etc/hosts (read-only)
                cfg["mounts"].append(inst.net.oci_mount())
            write_file(bundle / "config.json", json.dumps(cfg).encode())
            if self._root_made != self.root:  # once per root: the kit's sweep looks in it (runc makes one too)
                self.root.mkdir(parents=True, exist_ok=True)
                self._root_made = self.root
        return bundle

    # -- start modes: precreated (create, start_created), snapshot (checkpoint, restore) ----------
    def create(self, inst: OCIState) -> None:
        """``runc create`` under the subreaper (:data:`SHIM`); its output held by a :class:`Relay` until
        :meth:`start_created`."""
        bundle = self.prepare_bundle(inst)
        pidfile = inst.state_dir / "container.pid"
        inst.relay = Relay()
        self._under_shim(inst, ["create", "--bundle", str(bundle), "--pid-file", str(pidfile), inst.id], pidfile,
                         inst.relay, "create a container ahead of time")

    def start_created(self, inst: OCIState, stream: Stream | None = None) -> None:
        """``runc start`` of the container :meth:`create` made; its output to ``stream`` from now on."""
        if inst.relay is not None:
            inst.relay.target = None if inst.spec.detach else stream
        p = self._ctl(inst, "start", inst.id, timeout=30)
        if p.returncode != 0:
            why = self.start_error(inst) or p.stderr.decode(errors="replace").strip() or f"exit {p.returncode}"
            raise StartFailed(f"{self.name}: could not start the pre-created container: {why}")
        inst.phases["started"] = time.time()

    def checkpoint(self, inst: InstanceState, directory: Path) -> None:
        """``runc checkpoint`` (CRIU) of the running service into ``directory/images``, which ends it; what
        it wrote in its writable layer is kept at ``directory/upper``, so its restores find it again."""
        criu.checkpoint(self._cli_for(inst), inst.id, directory / "images")
        upper = _rootfs.upper_dir(inst.state_dir)
        if upper.is_dir():
            shutil.copytree(upper, directory / "upper", symlinks=True)

    def restore(self, inst: InstanceState, directory: Path, stream: Stream | None = None) -> None:
        """``runc restore --detach`` of :meth:`checkpoint`'s dump on a fresh bundle (the same files at the
        same paths, its writable layer as saved), under the subreaper."""
        bundle = self.prepare_bundle(inst)
        if (directory / "upper").is_dir() and inst.info.get("rootfs") == "overlay":
            shutil.copytree(directory / "upper", bundle / "rootfs", symlinks=True, dirs_exist_ok=True)
        pidfile = inst.state_dir / "container.pid"
        inst.phases["launched"] = time.time()
        argv = criu.restore_argv([], inst.id, directory / "images", bundle, pidfile, inst.state_dir / "criu")
        self._under_shim(inst, argv, pidfile, None if inst.spec.detach else stream, "restore the checkpoint")
        inst.phases["started"] = time.time()

    def _under_shim(self, inst: InstanceState, action: list[str], pidfile: Path, stream: Stream | None, what: str) -> None:
        """Run ``<runtime> ACTION`` under :data:`SHIM`; return once ``pidfile`` names the container's
        process (StartFailed with the runtime's reason if it ends first)."""
        argv = [sys.executable, "-S", "-c", SHIM, str(pidfile), *self._cli_for(inst),
                "--log", str(inst.state_dir / "runtime.log"), "--log-format", "json", *action]
        # A thread pumps: the runtime's errors must reach stderr.log before anyone waits for the shim.
        inst.proc = Pumped(argv, inst.state_dir, stream=stream, preexec_fn=self._preexec(inst), pump_thread=True)
        inst.info["runtime_root"] = str(self.root)

        def done_or_failed():
            if inst.proc.proc.poll() is not None:
                return "failed"
            return "done" if pidfile.exists() and pidfile.stat().st_size else None

        if wait_until(done_or_failed, CREATE_DEADLINE, interval=0.005, what=f"{self.name} {action[0]}") == "failed":
            why = self.start_error(inst) or last_line(inst.stderr_path) or f"exit {inst.proc.proc.returncode}"
            raise StartFailed(f"{self.name}: could not {what}: {why}")

    def _rootfs(self, inst: InstanceState, target: Path) -> Path:
        """The container's root: the image's own rootfs when the run is read-only and the runtime
        need not create anything in it (no overlay to mount or remove), else a private overlay."""
        spec, image = inst.spec, inst.image
        # A network member's /etc/hosts or a volume's mount point may have to be created: never
        # in the shared image.
        makes_mount_points = inst.net is not None or bool(inst.mounts) or bool(spec.tmpfs)
        if spec.read_only and not makes_mount_points and _rootfs.image_shareable(
                image, MOUNT_POINTS, spec.working_dir(image)):
            inst.info["rootfs"] = "image, read-only"
            return image.rootfs
        if userns.active():  # mounted in the kit's user namespace when the runtime is launched
            inst.info["rootfs"] = _rootless_oci.ROOTFS_KIND
            inst.info["overlay_mount"] = _rootless_oci.overlay(image.rootfs, inst.state_dir, target)
            return target
        inst.info["rootfs"] = "overlay"
        return _rootfs.mount_overlay(image.rootfs, inst.state_dir, target)

    def _publish(self, inst: InstanceState) -> None:
        try:
            inst.forwarder = Forwarder(self._netns_path(inst), inst.spec.ports).start()
        except StartFailed:
            if self._state(inst).get("status") == "running":
                raise
            # The command already finished (a quick foreground run): nothing is left to
            # publish, and its exit code and output stand as the result.

    def _await_started(self, inst: InstanceState) -> None:
        """Block until the command runs (or already exited); StartFailed with the runtime's reason."""

        def started_or_exited():
            if inst.proc.proc.poll() is not None:
                return "exited"
            return "started" if self._started(inst) else None

        try:
            what = wait_until(started_or_exited, START_DEADLINE, interval=0.005, what=f"{self.name} container start")
        except KitTimeout:
            raise StartFailed(f"{self.name}: {inst.name!r} did not start within {START_DEADLINE:g} s; "
                              f"see {inst.state_dir / 'runtime.log'}") from None
        if what == "exited":
            inst.proc.wait(5)  # exited: its output (gVisor's errors) collected into the logs
            self.raise_start_error(inst)
        else:
            inst.phases["started"] = time.time()

    def _started(self, inst: InstanceState) -> bool:
        """Past "created": the container's process is running the command."""
        if self.binary == "runc":
            # Fast path, no fork: runc removes exec.fifo once the command is exec'd.
            d = self.root / inst.id
            return (d / "state.json").exists() and not (d / "exec.fifo").exists()
        return self._state(inst).get("status") in ("running", "stopped")

    def _state(self, inst: InstanceState) -> dict:
        """``<runtime> state ID`` (the OCI state: status, pid, bundle), or {}."""
        if not self._has_state(inst):
            return {}
        try:
            return json.loads(self._ctl(inst, "state", inst.id).stdout)
        except (ValueError, subprocess.TimeoutExpired):
            return {}

    def _has_state(self, inst: InstanceState) -> bool:
        return (self.root / inst.id).is_dir()

    def _netns_path(self, inst: InstanceState) -> str:
        pid = int(self._state(inst).get("pid") or 0)
        if pid <= 0:
            raise StartFailed(f"{self.name}: {inst.name!r} exited before its ports could be published")
        return f"/proc/{pid}/ns/net"

    def start_error(self, inst: InstanceState) -> str:
        """The runtime's own error for a failed start (from its JSON log), or ''."""
        try:
            lines = (inst.state_dir / "runtime.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") in ("error", "fatal"):
                return str(rec.get("msg", "")).strip()
        return ""

    def monitor_pids(self, inst: InstanceState) -> list[int]:
        """``runc run`` (or ``runsc run``): the CLI process the kit keeps as the container's parent
        to hold its stdio and exit code; a user's ``runc run -d`` would not keep it."""
        return _rootfs.monitor_pids(inst)

    def _signal(self, inst: InstanceState, sig: str) -> None:
        self._ctl(inst, "kill", inst.id, sig, timeout=10)

    def stop(self, inst: InstanceState, timeout: float = 10.0) -> None:
        if inst.proc is None or inst.proc.proc.poll() is not None:
            return
        if timeout > 0:
            self._signal(inst, inst.spec.stop_signal.removeprefix("SIG"))
            try:
                inst.proc.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        self._signal(inst, "KILL")
        try:
            inst.proc.proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_group(inst.proc.proc)  # the runtime itself is stuck: end it

    def cleanup(self, inst: InstanceState) -> None:
        self._unpublish_and_kill(inst)
        if self._has_state(inst):
            self._ctl(inst, "delete", "--force", inst.id, timeout=15)
            self._forget_state(inst.id)
        if inst.info.get("rootfs") == "overlay":  # mounted here by the kit (else nothing to look for)
            mounts.unmount(inst.state_dir / "rootfs")
        fd, inst.netns_fd = inst.netns_fd, None
        if fd is not None:
            os.close(fd)

    def exec(self, inst, argv, stream=None, timeout=None):
        return exec_cli(inst, [*self._cli_for(inst), "exec", inst.id, *argv], argv, stream, timeout,
                        preexec_fn=self._preexec(inst))

    def sweep(self, session: str, dry_run: bool = False) -> list[str]:
        prefix = f"kit-{session}-"
        if not self.root.is_dir() or which(self.binary) is None:
            return []
        out = []
        for cid in sorted({_container_id(p.name) for p in self.root.iterdir()}):
            if not cid.startswith(prefix):
                continue
            if not dry_run:
                run([*self._cli(), "delete", "--force", cid], timeout=15, check=False)
                self._forget_state(cid)
            out.append(f"{self.name} container {cid}")
        return out

    def _forget_state(self, cid: str) -> None:
        """Remove what ``delete`` may leave of ``cid`` in the state root (nothing for runc)."""


class GVisorRuntime(OCIRuntime):
    """gVisor's runsc on the ptrace platform (works without KVM or nested virtualisation)."""

    kind = "sandbox"
    cannot = {"sysctls": "gVisor's own kernel (the Sentry) ignores an OCI config's sysctls"}

    def __init__(self, platform: str = "ptrace"):
        super().__init__("runsc")
        self.platform = platform
        self.smoke_test = True

    @property
    def global_args(self) -> tuple[str, ...]:  # type: ignore[override]
        own = ("--rootless", "--ignore-cgroups") if userns.active() else ()
        return (f"--platform={self.platform}", "--network=none", *own)

    def _cli_for(self, inst: InstanceState) -> list[str]:
        cli = super()._cli_for(inst)
        if inst.netns_fd is not None or inst.info.get("launcher_netns"):
            cli[cli.index("--network=none")] = "--network=host"
        return cli

    def _probe_info(self) -> dict:
        return {**super()._probe_info(), "platform": self.platform}

    def _network(self, inst: InstanceState) -> str | None:
        if inst.net is not None:  # a kit network member: started inside its namespace (--network=host)
            inst.netns_fd = inst.net.open_ns()
            return None
        if not inst.spec.ports:
            return "new"
        if userns.active():  # the launcher's own network namespace (._rootless_oci), as --network=host
            inst.info["launcher_netns"] = True
            return None
        # Ports: a private loopback-only namespace that runsc joins with --network=host.
        inst.netns_fd = new_loopback_netns()
        return None

    def _has_state(self, inst: InstanceState) -> bool:
        try:
            return any(_container_id(p.name) == inst.id for p in self.root.iterdir())
        except OSError:
            return False

    def _netns_path(self, inst: InstanceState) -> str:
        if inst.info.get("launcher_netns"):  # rootless: the namespace runsc was launched in
            return f"/proc/{inst.proc.pid}/ns/net"
        return f"/proc/{os.getpid()}/fd/{inst.netns_fd}"

    def _forget_state(self, cid: str) -> None:
        # When the sandbox died abruptly (e.g. OOM-killed under a small memory limit),
        # "runsc delete" removes the .state file but leaves the .lock file behind.
        try:
            entries = [p for p in self.root.iterdir() if _container_id(p.name) == cid]
        except OSError:
            return
        if not any(p.name.endswith(".state") for p in entries):  # deleted: the lock guards nothing
            for p in entries:
                p.unlink(missing_ok=True)

    def start_error(self, inst: InstanceState) -> str:
        err = super().start_error(inst)
        if err:
            return err
        # runsc reports a failed start on stderr ("running container: ...").
        try:
            text = inst.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return _last_error(text) if re.search(r"^(running container|creating container|error)", text, re.M) else ""


def _container_id(entry: str) -> str:
    # runc/crun: <root>/<id>/; runsc: <root>/<id>_sandbox:<id>.state and .lock
    return entry.split("_sandbox:", 1)[0]


def _version(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    m = re.search(r"version\s+(\S+)", first)
    return m.group(1) if m else first


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
