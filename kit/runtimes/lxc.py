"""LXC application containers through ``lxc-execute``.

Each instance gets a generated config in its state directory and runs as
``lxc-execute -n ID -P <kit lxcpath> -f <config> -- argv`` under
:class:`~kit._proc.Pumped`, so output streams and the exit code is the
command's. PID 1 inside is ``lxc-init``, which forwards signals and reaps.

- network: ``lxc.net.0.type = empty`` (own namespace, loopback only);
  ports are published by :class:`kit.portfwd.Forwarder`;
- root filesystem: LXC's own overlay (``overlay:IMAGE_ROOTFS:<state>/overlay/upper``),
  mounted inside the container's mount namespace, so nothing stays mounted on the host;
- limits: ``lxc.cgroup.dir.container`` places the container below the kit-owned
  cgroup that carries the limit; the monitor goes in a sibling group so LXC's
  own process is not charged to the container;
- LXC writes its own log (level NOTICE) to ``<state>/lxc.log``; the line
  "started with pid" tells a started container from one that failed to start.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .. import cgroups, config, rootless, userns
from .._proc import Pumped, Stream, kill_group, run, wait_until
from ..errors import KitTimeout, StartFailed
from ..portfwd import Forwarder
from . import _rootfs, hardening
from .base import Availability, Instance, Runtime, exec_cli, which

#: Capabilities LXC's own common.conf drops for application containers.
CAP_DROP = "mac_admin mac_override sys_time sys_module sys_rawio"
START_DEADLINE = 15.0
_STARTED = re.compile(rb"started with pid '(\d+)'")


def lxcpath() -> Path:
    """The kit-owned LXC path (``-P``), apart from the host's /var/lib/lxc."""
    return (Path("/run/kit") if os.geteuid() == 0 else config.home()) / "lxc"


def _quote(value: str) -> str:
    if "\n" in value:
        raise StartFailed("LXC config values cannot contain newlines: remove them from the env/hostname/workdir")
    return value


def _fstab(path: str) -> str:
    # lxc.mount.entry is an fstab line: LXC reads it with getmntent, which decodes \040-style escapes.
    return _quote(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")


def build_config(inst: Instance, monitor_rel: str | None) -> str:
    """The LXC config file text for ``inst``; ``inst.spec.harden`` adds :mod:`.hardening`'s baseline."""
    spec, image = inst.spec, inst.image
    upper = inst.state_dir / "overlay" / "upper"
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
        f"lxc.rootfs.path = overlay:{image.rootfs}:{upper}",
        "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed",
        "lxc.autodev = 1",
        "lxc.mount.entry = shm dev/shm tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0",
        f"lxc.init.cwd = {_quote(_rootfs.workdir(spec, image))}",
    ]
    if spec.harden:
        # Docker's baseline: its capabilities kept, its seccomp denylist, its masked /proc paths.
        lines += hardening.lxc_config_lines(hardening.lxc_profile_file(config.home() / "profiles"))
    else:
        lines.append(f"lxc.cap.drop = {CAP_DROP}")
    if spec.read_only:
        lines.append("lxc.rootfs.options = ro")
    for m in inst.mounts:  # kit.volumes: the target is relative to the rootfs
        lines.append(f"lxc.mount.entry = {_fstab(str(m.host))} {_fstab(m.target.lstrip('/'))} none "
                     f"bind,create=dir{',ro' if m.read_only else ''} 0 0")
    lines += [f"lxc.environment = {_quote(k)}={_quote(v)}" for k, v in _rootfs.environment(spec, image).items()]
    if userns.active():  # unprivileged: the user as root inside, its subordinate IDs above
        lines += rootless.lxc_idmap_lines()
    if inst.cgroup is not None:
        lines += [f"lxc.cgroup.dir.container = {inst.cgroup.rel}/ctr",
                  f"lxc.cgroup.dir.monitor = {monitor_rel}"]
    return "\n".join(lines) + "\n"


class LXCRuntime(Runtime):
    """LXC application containers (``lxc-execute``), one generated config per instance."""

    name = "lxc"
    kind = "container"
    supports_networks = True  # kit.networks: joins the network's namespace
    supports_volumes = True  # kit.volumes: lxc.mount.entry binds

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
        if userns.active() and rootless.lxc_reason():
            return Availability(self.name, self.kind, False, version, reason=rootless.lxc_reason())
        return Availability(self.name, self.kind, True, version,
                            info={"lxcpath": str(lxcpath()), "cgroups": cgroups.describe()})

    def _base(self, tool: str, inst: Instance) -> list[str]:
        return [which(tool) or tool, "-n", inst.id, "-P", str(lxcpath())]

    @staticmethod
    def _monitor_rel(inst: Instance) -> str | None:
        return f"{inst.cgroup.rel}-lxcmon" if inst.cgroup is not None else None

    def start(self, inst: Instance, stream: Stream | None = None) -> None:
        spec = inst.spec
        try:
            with _rootfs.step(inst, "cgroup"):
                inst.cgroup = _rootfs.kit_cgroup(inst)
            with _rootfs.step(inst, "config"):
                (inst.state_dir / "overlay" / "upper").mkdir(parents=True, exist_ok=True)
                conf = inst.state_dir / "lxc.conf"
                conf.write_text(build_config(inst, self._monitor_rel(inst)))
                lxcpath().mkdir(parents=True, exist_ok=True)
            argv = [*self._base("lxc-execute", inst), "-f", str(conf),
                    "-o", str(inst.state_dir / "lxc.log"), "-l", "NOTICE", "--", *spec.command]
            inst.proc = Pumped(argv, inst.state_dir, stream=stream, detach=spec.detach)
            inst.phases["launched"] = inst.proc.launched_at
            if spec.detach or spec.ports:
                pid = self._await_started(inst)
                if spec.ports and pid is not None:
                    try:
                        with _rootfs.step(inst, "forwarder"):
                            inst.forwarder = Forwarder(f"/proc/{pid}/ns/net", spec.ports).start()
                    except StartFailed:
                        if _running(pid):
                            raise
                        # The command already finished (gone, or a zombie whose namespaces are
                        # gone already): nothing is left to publish, its result stands.
        except BaseException:
            self.remove(inst)
            raise

    def _log(self, inst: Instance) -> bytes:
        try:
            return (inst.state_dir / "lxc.log").read_bytes()
        except OSError:
            return b""

    def _await_started(self, inst: Instance) -> int | None:
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
                              f"see {inst.state_dir / 'lxc.log'}") from None
        if pid == -1:
            self.raise_start_error(inst)
            return None
        inst.phases["started"] = time.time()
        return pid

    def start_error(self, inst: Instance) -> str:
        log = self._log(inst)
        if _STARTED.search(log):
            return ""
        errors = [ln for ln in log.decode(errors="replace").splitlines() if " ERROR " in ln]
        # The first ERROR is the cause (e.g. "Could not change directory"); the later ones only
        # say that the start failed ("Failed run an application inside container").
        return errors[0].split(" - ", 2)[-1].strip() if errors else "see " + str(inst.state_dir / "lxc.log")

    def stop(self, inst: Instance, timeout: float = 10.0) -> None:
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

    def cleanup(self, inst: Instance) -> None:
        self._unpublish_and_kill(inst)
        shutil.rmtree(lxcpath() / inst.id, ignore_errors=True)
        if inst.cgroup is not None:
            cgroups.Cgroup(self._monitor_rel(inst)).destroy()

    def monitor_pids(self, inst: Instance) -> list[int]:
        """``lxc-execute`` itself: LXC's monitor, in its own ``-lxcmon`` cgroup; ``lxc-init`` and
        the command are the container."""
        return _rootfs.monitor_pids(inst)

    def logs(self, inst: Instance) -> tuple[bytes, bytes]:
        out, err = super().logs(inst)
        # The monitor shares the command's stderr; drop its own complaints
        # (e.g. about config keys lxc-attach asks for).
        noise = f"lxc-execute: {inst.id}: ".encode()
        if noise in err:
            err = b"".join(ln for ln in err.splitlines(keepends=True) if not ln.startswith(noise))
        return out, err

    def exec(self, inst, argv, stream=None, timeout=None):
        env = _rootfs.environment(inst.spec, inst.image)
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


def _running(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
