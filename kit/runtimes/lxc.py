"""LXC application containers through ``lxc-execute``.

Each instance gets a generated config and runs as
``lxc-execute -n ID -P <kit lxcpath> -f <config> -- argv`` under
:class:`~kit._proc.Pumped`, so output streams and the exit code is the
command's. PID 1 inside is ``lxc-init``, which forwards signals and reaps.

- network: ``lxc.net.0.type = empty`` (own namespace, loopback only);
  ports are published by :class:`kit.portfwd.Forwarder`;
- root filesystem: LXC's own overlay (``overlay:IMAGE_ROOTFS:<state>/overlay/upper``),
  mounted inside the container's mount namespace, so nothing stays mounted on the host; a
  read-only run that needs no mount point made in it gets the image's rootfs itself
  (``dir:``, bound read-only before anything else), as a plain ``lxc-execute`` would, and
  loses CAP_SYS_ADMIN, without which it cannot remount the shared image writable
  (:func:`shares_image`);
- limits: ``lxc.cgroup.dir.container`` places the container below the kit-owned
  cgroup that carries the limit; the monitor goes in a sibling group so LXC's
  own process is not charged to the container;
- LXC writes its own log (level NOTICE); the line "started with pid" tells a started
  container from one that failed to start;
- the config and the log are memory files (:class:`_Memfiles`), not files in the state
  directory: creating a file there is a journaled filesystem operation on each start's path,
  where the kit's whole LXC overhead budget is a few milliseconds (benchmarks/bench_overhead.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .. import cgroups, config, userns
from .._proc import Pumped, Stream, kill_group, process_alive, run, wait_until
from ..errors import KitTimeout, StartFailed
from ..portfwd import Forwarder
from ..spec import resolve_user
from . import _rootfs, hardening
from .base import Availability, InstanceState, Runtime, exec_cli, signal_name, which

#: Capabilities LXC's own common.conf drops for application containers.
CAP_DROP = "mac_admin mac_override sys_time sys_module sys_rawio"
#: Where LXC mounts in the rootfs (proc, sys, autodev's /dev tmpfs, /dev/shm inside it).
MOUNT_POINTS = ("/proc", "/sys", "/dev")
START_DEADLINE = 15.0
_STARTED = re.compile(rb"started with pid '(\d+)'")
_INIT_SIGNALLED = re.compile(rb"Child <\d+> ended on signal \w*\((\d+)\)")


def lxcpath() -> Path:
    """The kit-owned LXC path (``-P``), apart from the host's /var/lib/lxc."""
    return (Path("/run/kit") if os.geteuid() == 0 else config.home()) / "lxc"


# -- as an ordinary user ----------------------------------------------------------------
def rootless_reason() -> str:
    """The exact piece unprivileged LXC lacks here (one line saying how to get it), or "" (it then
    runs as the user, mapped to root inside, without cgroups of its own)."""
    if not userns.subordinate_ids("uid") or not userns.subordinate_ids("gid"):
        return f"unprivileged LXC needs subordinate IDs for {userns.user()}: as root, usermod --add-subuids " \
               f"100000-165535 --add-subgids 100000-165535 {userns.user()}"
    if not (userns.system_tool("newuidmap") and userns.system_tool("newgidmap")):
        return "unprivileged LXC needs newuidmap and newgidmap: apt-get install uidmap"
    return ""


def idmap_lines() -> list[str]:
    """``lxc.idmap`` lines of an unprivileged container: :func:`kit.userns.id_mappings` in LXC's
    words (the user as root inside, its subordinate IDs above)."""
    uids, gids = userns.id_mappings()
    return [f"lxc.idmap = {k} {m['containerID']} {m['hostID']} {m['size']}"
            for k, maps in (("u", uids), ("g", gids)) for m in maps]


#: What a start would otherwise look up again every time (each costs tens of microseconds, and
#: the kit's whole LXC overhead budget is a few milliseconds): the tools' paths (whether an image
#: can be shared is cached by :func:`._rootfs.image_shareable`).
_tools: dict[str, str] = {}


def _tool(name: str) -> str:
    if name not in _tools:
        found = which(name)
        if found is None:
            return name  # not cached: an install later in this process is found then
        _tools[name] = found
    return _tools[name]


def _quote(value: str) -> str:
    if "\n" in value:
        raise StartFailed("LXC config values cannot contain newlines: remove them from the env/hostname/workdir")
    return value


def _fstab(path: str) -> str:
    # lxc.mount.entry is an fstab line: LXC reads it with getmntent, which decodes \040-style escapes.
    return _quote(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")


def shares_image(inst: InstanceState) -> bool:
    """Whether ``inst`` runs on the image's own rootfs (``dir:``) rather than an overlay over it.

    Only a read-only run where LXC creates nothing in it: no volume or network mount point, and
    every mount point and the working directory already there (:func:`_rootfs.shareable`).
    Then LXC mounts no overlay and tears none down for the root (benchmarks/bench_overhead.py
    measures what the overlay costs a start). LXC bind-mounts it read-only before anything
    else; the only write it makes is its pin (``.lxc_keep``, created and unlinked at once in the
    rootfs' top directory; never inside a user namespace).
    """
    spec, image = inst.spec, inst.image
    if not spec.read_only or inst.mounts or inst.net is not None or spec.tmpfs:
        return False
    return _rootfs.image_shareable(image, MOUNT_POINTS, spec.working_dir(image))


class _Memfiles:
    """An instance's LXC config and log as memory files (``memfd``), which ``lxc-execute`` opens
    by their ``/proc/<kit's pid>/fd/N`` path.

    Nothing is created on disk per start, and nothing is inherited: the descriptors are
    close-on-exec, so the container's processes cannot reach the log (whose "started with pid"
    line says where ports are forwarded to) nor the config. LXC opens both before the
    container exists and keeps the log open; the kit keeps its own descriptors until cleanup.
    """

    def __init__(self, config_text: str):
        self.config = os.memfd_create("lxc.conf", os.MFD_CLOEXEC)
        self.log = os.memfd_create("lxc.log", os.MFD_CLOEXEC)
        data = memoryview(config_text.encode())
        while data:
            data = data[os.write(self.config, data):]

    @staticmethod
    def path(fd: int) -> str:
        return f"/proc/{os.getpid()}/fd/{fd}"

    def read_log(self) -> bytes:
        size = os.fstat(self.log).st_size
        return os.pread(self.log, size, 0) if size else b""

    def close(self) -> None:
        # Forgotten first: a closed number is soon another file's, which a late reader must not read.
        fds, self.config, self.log = (self.config, self.log), -1, -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class LXCState(InstanceState):
    """An LXC instance: ``files``, its config and log as memory files while it lives."""

    files: _Memfiles | None = None


def build_config(inst: InstanceState, monitor_rel: str | None, shared: bool | None = None) -> str:
    """The LXC config file text for ``inst``; ``inst.spec.harden`` adds :mod:`.hardening`'s baseline.

    Args:
        shared: whether the root is the image's own rootfs (:func:`shares_image`, asked when None).
    """
    spec, image = inst.spec, inst.image
    upper = inst.state_dir / "overlay" / "upper"
    shared = shares_image(inst) if shared is None else shared
    if inst.net is not None:
        # A kit network member shares the namespace of the network's holder, and sees its names.
        net = [f"lxc.namespace.share.net = {inst.net.pid}",
               f"lxc.mount.entry = {_fstab(str(inst.net.hosts_path))} etc/hosts none bind,ro,create=file 0 0"]
    else:
        net = ["lxc.net.0.type = empty",
               "lxc.net.0.flags = up"]  # for "empty" this brings up lo, which LXC 5 otherwise leaves down
    lines = [
        f"lxc.uts.name = {_quote(spec.hostname)}",
        *net,
        # LXC puts the overlay's work dir beside upper: <state>/overlay/work.
        f"lxc.rootfs.path = dir:{image.rootfs}" if shared else f"lxc.rootfs.path = overlay:{image.rootfs}:{upper}",
        "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed",
        "lxc.autodev = 1",
        "lxc.mount.entry = shm dev/shm tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0",
        f"lxc.init.cwd = {_quote(spec.working_dir(image))}",
    ]
    if spec.harden:
        # Docker's baseline: its capabilities kept, its seccomp denylist, its masked /proc paths.
        lines += hardening.lxc_config_lines(hardening.lxc_profile_file(config.home() / "profiles"))
    else:
        # On the shared image, CAP_SYS_ADMIN could remount it writable (mount -o remount,rw /) and
        # change every later instance's files; the hardened set above has no CAP_SYS_ADMIN anyway.
        lines.append(f"lxc.cap.drop = {CAP_DROP}{' sys_admin' if shared else ''}")
    if spec.read_only:
        lines.append("lxc.rootfs.options = ro")
    for m in inst.mounts:  # kit.volumes: the target is relative to the rootfs
        lines.append(f"lxc.mount.entry = {_fstab(str(m.host))} {_fstab(m.target.lstrip('/'))} none "
                     f"bind,create={'file' if m.host.is_file() else 'dir'}{',ro' if m.read_only else ''} 0 0")
    lines = _extras(inst, lines)
    lines += [f"lxc.environment = {_quote(k)}={_quote(v)}" for k, v in spec.environment(image).items()]
    if userns.active():  # unprivileged: the user as root inside, its subordinate IDs above
        lines += idmap_lines()
    if inst.cgroup is not None:
        lines += [f"lxc.cgroup.dir.container = {inst.cgroup.rel}/ctr",
                  f"lxc.cgroup.dir.monitor = {monitor_rel}"]
    return "\n".join(lines) + "\n"


def _extras(inst: InstanceState, lines: list[str]) -> list[str]:
    """The config lines of a spec's user, capabilities, sysctls and tmpfs (its init is lxc-init already)."""
    spec = inst.spec
    if spec.user is not None:
        uid, gid, groups = resolve_user(spec.user, inst.image.rootfs)
        lines += [f"lxc.init.uid = {uid}", f"lxc.init.gid = {gid}"]
        lines += [f"lxc.init.groups = {','.join(map(str, groups))}"] if groups else []
    if spec.cap_add or spec.cap_drop:  # the kept set replaces the baseline's (Docker's, with hardening)
        base = [f"CAP_{c.upper()}" for c in hardening.DOCKER_CAPS]
        keep = [c.removeprefix("CAP_").lower() for c in spec.capabilities(base)]
        lines = [ln for ln in lines if not ln.startswith(("lxc.cap.keep", "lxc.cap.drop"))]
        lines.append(f"lxc.cap.keep = {' '.join(keep) or 'none'}")
    lines += [f"lxc.sysctl.{k} = {v}" for k, v in spec.sysctls.items()]
    lines += [f"lxc.mount.entry = tmpfs {_fstab(t.target.lstrip('/'))} tmpfs "
              f"{','.join(['nosuid', 'nodev', 'noexec', *t.options(), 'create=dir'])} 0 0" for t in spec.tmpfs]
    return lines


class LXCRuntime(Runtime):
    """LXC application containers (``lxc-execute``), one generated config per instance."""

    name = "lxc"
    kind = "container"
    state_class = LXCState
    supports_networks = True  # kit.networks: joins the network's namespace
    supports_volumes = True  # kit.volumes: lxc.mount.entry binds
    limits_in_kit_cgroup = True  # lxc.cgroup.dir.container below the kit's limited group
    image_formats = ("rootfs", "lxc")
    monitor_name = "lxc-execute"
    cannot = {"stop_signal": "lxc-stop asks lxc-init to end the command with SIGTERM"}

    def _no_start_mode(self, mode: str) -> str:
        # lxc-execute creates and starts in one step; a stopped defined container (lxc-create) still
        # pays the whole lxc-start, and lxc-checkpoint needs the CRIU that runc's row reports on.
        return ("LXC has no create-then-start split: its closest, a defined container, still pays the whole "
                "lxc-start" if mode == "precreated" else "lxc-checkpoint needs CRIU (see runc's criu verdict)")

    def probe(self) -> Availability:
        exe = which("lxc-execute")
        missing = [t for t in ("lxc-execute", "lxc-attach", "lxc-stop") if which(t) is None]
        if missing:
            return Availability(self.name, self.kind, False,
                                reason=f"{', '.join(missing)} not installed: apt-get install lxc (or run make setup)")
        try:
            version = run([exe, "--version"], timeout=5, check=False).stdout.decode().strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            return Availability(self.name, self.kind, False, reason=f"lxc-execute --version failed: {e}")
        why = rootless_reason() if userns.active() else ""
        if why:
            return Availability(self.name, self.kind, False, version, reason=why)
        return Availability(self.name, self.kind, True, version,
                            info={"lxcpath": str(lxcpath()), "cgroups": cgroups.describe()})

    def _base(self, tool: str, inst: InstanceState) -> list[str]:
        return [_tool(tool), "-n", inst.id, "-P", str(lxcpath())]

    @staticmethod
    def _monitor_rel(inst: InstanceState) -> str | None:
        return f"{inst.cgroup.rel}-lxcmon" if inst.cgroup is not None else None

    def start(self, inst: LXCState, stream: Stream | None = None) -> None:
        spec = inst.spec
        try:
            with _rootfs.step(inst, "cgroup"):
                inst.cgroup = _rootfs.kit_cgroup(inst)
            with _rootfs.step(inst, "config"):
                shared = shares_image(inst)
                inst.info["rootfs"] = "image, read-only" if shared else "overlay"
                if not shared:
                    (inst.state_dir / "overlay" / "upper").mkdir(parents=True, exist_ok=True)
                inst.files = files = _Memfiles(build_config(inst, self._monitor_rel(inst), shared))
                lxcpath().mkdir(parents=True, exist_ok=True)
            # INFO: LXC says how the container's init ended ("Child <N> ended on signal Killed(9)") only
            # at this level, the one way to tell its init killed from outside from a command's exit 1.
            argv = [*self._base("lxc-execute", inst), "-f", files.path(files.config),
                    "-o", files.path(files.log), "-l", "INFO", "--", *spec.command]
            inst.proc = Pumped(argv, inst.state_dir, stream=stream, detach=spec.detach)
            inst.phases["launched"] = inst.proc.launched_at
            if spec.detach or spec.ports:
                pid = self._await_started(inst)
                if spec.ports and pid is not None:
                    try:
                        with _rootfs.step(inst, "forwarder"):
                            inst.forwarder = Forwarder(f"/proc/{pid}/ns/net", spec.ports).start()
                    except StartFailed:
                        if process_alive(pid):
                            raise
                        # The command already finished (gone, or a zombie whose namespaces are
                        # gone already): nothing is left to publish, its result stands.
        except BaseException:
            self.remove(inst)
            raise

    def _log(self, inst: LXCState) -> bytes:
        files = inst.files
        try:
            return files.read_log() if files is not None else b""
        except OSError:  # closed by cleanup
            return b""

    def _log_tail(self, inst: InstanceState) -> str:
        """LXC's last log line, for a message that has no ERROR line to quote."""
        lines = self._log(inst).decode(errors="replace").strip().splitlines()
        return f"LXC's last log line: {lines[-1].split(' - ', 2)[-1].strip()}" if lines else "LXC logged nothing"

    def _await_started(self, inst: InstanceState) -> int | None:
        """The container's init pid once started; None if it already exited; StartFailed if it never started."""

        def started_or_exited():
            m = _STARTED.search(self._log(inst))
            if m:
                return int(m.group(1))
            return -1 if inst.proc.proc.poll() is not None else None

        try:
            pid = wait_until(started_or_exited, START_DEADLINE, interval=0.005, what="lxc container start")
        except KitTimeout:
            raise StartFailed(f"lxc: {inst.name!r} did not start within {START_DEADLINE:g} s; "
                              f"{self._log_tail(inst)}") from None
        if pid == -1:
            self.raise_start_error(inst)
            return None
        inst.phases["started"] = time.time()
        return pid

    def start_error(self, inst: InstanceState) -> str:
        log = self._log(inst)
        if _STARTED.search(log):
            return ""
        errors = [ln for ln in log.decode(errors="replace").splitlines() if " ERROR " in ln]
        # The first ERROR is the cause (e.g. "Could not change directory"); the later ones only
        # say that the start failed ("Failed run an application inside container").
        return errors[0].split(" - ", 2)[-1].strip() if errors else self._log_tail(inst)

    def end_reason(self, inst: InstanceState) -> str:
        """As every runtime's, and the container's init killed from outside (lxc-execute then exits 1)."""
        why = super().end_reason(inst)
        m = None if why else _INIT_SIGNALLED.search(self._log(inst))
        return f"killed ({signal_name(int(m.group(1)))}): the container's init" if m else why

    def stop(self, inst: InstanceState, timeout: float = 10.0) -> None:
        if inst.proc is None or inst.proc.proc.poll() is not None:
            return
        if timeout > 0:
            # lxc-init passes SIGTERM on to the command; lxc-stop -t kills after the timeout.
            argv = [*self._base("lxc-stop", inst), "-t", str(max(1, round(timeout)))]
        else:
            argv = [*self._base("lxc-stop", inst), "-k"]
        try:
            run(argv, timeout=timeout + 10, check=False)
            inst.proc.proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_group(inst.proc.proc)  # LXC itself is stuck: end it

    def cleanup(self, inst: LXCState) -> None:
        self._unpublish_and_kill(inst)
        files, inst.files = inst.files, None
        if files is not None:
            files.close()
        shutil.rmtree(lxcpath() / inst.id, ignore_errors=True)
        if inst.cgroup is not None:
            cgroups.Cgroup(self._monitor_rel(inst)).destroy()

    def monitor_pids(self, inst: InstanceState) -> list[int]:
        """``lxc-execute`` itself: LXC's monitor, in its own ``-lxcmon`` cgroup; ``lxc-init`` and
        the command are the container."""
        return _rootfs.monitor_pids(inst)

    def logs(self, inst: InstanceState) -> tuple[bytes, bytes]:
        out, err = super().logs(inst)
        # The monitor shares the command's stderr; drop its own complaints
        # (e.g. about config keys lxc-attach asks for).
        noise = f"lxc-execute: {inst.id}: ".encode()
        if noise in err:
            err = b"".join(ln for ln in err.splitlines(keepends=True) if not ln.startswith(noise))
        return out, err

    def exec(self, inst, argv, stream=None, timeout=None):
        env = inst.spec.environment(inst.image)
        cmd = [*self._base("lxc-attach", inst), "--clear-env"]
        for k, v in env.items():
            cmd += ["-v", f"{k}={v}"]
        cmd += ["--", *argv]
        return exec_cli(inst, cmd, argv, stream, timeout)

    def sweep(self, session: str, dry_run: bool = False) -> list[str]:
        base = lxcpath()
        if not base.is_dir():
            return []
        out = []
        for d in sorted(base.iterdir()):
            if d.name.startswith(f"kit-{session}-"):
                if not dry_run:
                    run([which("lxc-stop") or "lxc-stop", "-n", d.name, "-P", str(base), "-k"], timeout=15, check=False)
                    shutil.rmtree(d, ignore_errors=True)
                out.append(f"lxc container {d.name}")
        return out
