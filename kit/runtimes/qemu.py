"""Matching VMs: the image a container runs, booted under QEMU with the kit's own init.

A run boots the guest kernel (:mod:`kit.vm.kernel`) with the kit initramfs
(:mod:`kit.vm.initramfs`) and the image's read-only ext4 disk
(:mod:`kit.vm.disk`; tiny images ride inside the initramfs instead). The guest
init receives the run spec on the control port, runs the command with its
stdout and stderr on ports of their own (QEMU writes them to the instance's log
files), reports the exit code and powers off. The host stamps the milestones as
they arrive, into ``inst.phases``::

    launched   QEMU process started
    kernel     first byte on the guest console (the kernel's setup code); none when the kernel says
               nothing before the init (the kit's own, booted through PVH)
    init       the kit init printed its mark, its script's first statement
    spec       the init has the run spec (its virtio modules are loaded)
    command    the init is about to exec the command
    command_exited  the init reported the command's exit code (the guest's view of the exit)
    exited     the QEMU process ended (seen by a blocking waitpid): the host has the exit status
               and the VM is over, the event every runtime's 'exited' is (kit.bench.metrics)

With ``start="snapshot"`` the guest is restored from a template (:mod:`kit.vm.templates`,
built on first use and reused while its inputs match) instead of booting: ``restore``
(QEMU started with the template's state) and ``resumed`` (the state loaded, the guest
running again) replace ``kernel`` and ``init``; at ``spec`` the init then sets its clock
and reseeds its RNG from the host. ``inst.info`` has ``template`` and, when this run
built it, ``template_build_s``.

Options (``kit.run(..., runtime="qemu", **options)``): ``kernel``, ``modules``,
``machine`` (``microvm`` | ``q35``; default: microvm when the kernel finds its
virtio-mmio devices and, under TCG, the host's TSC frequency is known, else q35),
``accel`` (``kvm`` | ``tcg``; default: probed), ``boot`` (``auto`` | ``disk`` |
``initramfs``), ``disk_size`` (e.g. ``"64m"``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .._proc import Pumped, Stream, deliver, kill_group, run, wait_until
from ..errors import InvalidSpec, KitTimeout, StartFailed
from ..portfwd import setns
from ..spec import parse_expose, parse_memory, resolve_user
from ..vm import accel as accel_mod
from ..vm import disk as disk_mod
from ..vm import initramfs, machine, qemubin, qmp, templates
from ..vm import kernel as kernel_mod
from ..vm.channel import MAX_PATH, Channel, LineRecords
from .base import Availability, InstanceState, Runtime, signal_name, which

DEFAULT_MEMORY = 256 * 1024**2
MIN_MEMORY = 96 * 1024**2  # below this the cloud kernel plus initramfs cannot boot reliably
INITRAMFS_MAX_IMAGE = 32 * 1024**2  # "auto" boots images up to this size from the initramfs
OPTIONS = {"kernel", "modules", "machine", "accel", "boot", "disk_size", "expose"}
BOOT_DEADLINE = 120.0  # a detached VM must have started its command by then
CHANNEL_NAMES = {"console": "console.sock", "kit.ctl": "ctl.sock", "kit.exec": "exec.sock"}
FOLLOW_INTERVAL = 0.05  # how often a foreground run's stream gets what the command wrote
MARK = accel_mod.MARK  # what the guest init prints on the console first
RESTORE_DEADLINE = 20.0  # a restored guest must have resumed by then (here: ~0.1 s under TCG)


def _security_model() -> str:
    """9p's: as root, passthrough (the guest's owners and modes are the files' own, so a
    database's files written in a VM keep their owner for a container); otherwise none."""
    return "passthrough" if os.geteuid() == 0 else "none"


def _kvm_access() -> dict:
    """{"kvm": why this user cannot use /dev/kvm} when it exists but is closed to them."""
    why = accel_mod.kvm_reason()
    return {"kvm": why} if why else {}


@dataclass
class VMState(InstanceState):
    """A VM instance: ``vm``, everything its run holds on the host (QEMU, channels, files), while it lives.

    It lives on the instance, never on the runtime, which threads share."""

    vm: _VM | None = None


class QemuRuntime(Runtime):
    name = "qemu"
    kind = "vm"
    state_class = VMState
    image_formats = ("qemu", "kernel")  # the image's initramfs or disk, and the default guest kernel
    cgroup_accounting = False  # QEMU's own process times (its user network and 9p server included)
    supports_networks = True  # kit.networks: QEMU started inside the network's namespace
    hosts_copied = True  # the guest's /etc/hosts is its own: rewritten by exec as members change
    supports_volumes = True  # kit.volumes: QEMU's own 9p server (virtio-9p), mounted by the guest init
    min_memory = MIN_MEMORY  # the guest's RAM: the kernel and initramfs must fit
    min_memory_what = "a VM"
    start_modes = ("cold", "snapshot")
    #: the guest's root has every capability of its own kernel (cap_add is moot) and its init is PID 1 (init)
    cannot = {"cap_drop": "the guest's root keeps every capability of its own kernel (the VM is the boundary)",
              "stop_signal": "the kit's guest init ends the command with SIGTERM"}
    #: snapshot: start() restores a VM template (kit.vm.templates), a cache of its own kept host-wide
    #: and keyed by the machine, not a checkpoint of a service of the spec (the spec is sent after)
    own_start_modes = ("cold", "snapshot")

    def __init__(self, qemu: str = machine.QEMU):
        super().__init__()
        self.qemu = qemu

    # -- discovery ---------------------------------------------------------
    def probe(self) -> Availability:
        binary = which(self.qemu)
        if not binary:
            return Availability(self.name, self.kind, False,
                                reason=f"{self.qemu} not found: install qemu-system-x86 (or run 'make setup')")
        p = run([binary, "-version"], timeout=10, check=False)
        m = re.search(r"version (\S+)", p.stdout.decode(errors="replace"))
        version = f"QEMU {m.group(1) if m else '?'}"
        for tool, pkg in (("mkfs.ext4", "e2fsprogs"),):
            if not which(tool):
                return Availability(self.name, self.kind, False, version,
                                    reason=f"{tool} not found: install {pkg} (or run 'make setup')")
        k = kernel_mod.cached()
        if k is None:
            if not which("apt-get"):
                # Not "pass kernel=": an unavailable runtime refuses every run, options or not.
                return Availability(self.name, self.kind, False, version,
                                    reason="no guest kernel cached and no apt-get to fetch one: put a bzImage at "
                                           f"{kernel_mod.kernels_dir()}/<version>/vmlinuz, or run "
                                           "'python -m kit.vm.kernel fetch' on a host with apt")
            return Availability(self.name, self.kind, True, version,
                                info={"kernel": "fetched on first run", "accel": "probed on first run",
                                      "kernel_reason": kernel_mod.kit_kernel()[1], **_kvm_access()})
        v = accel_mod.choose(k, binary)  # bounded (PROBE_DEADLINE), then cached
        why = "the kit's own kernel (the default)" if k.kind == "kit" else \
            f"the distribution's kernel, because {kernel_mod.kit_kernel()[1]}"
        return Availability(self.name, self.kind, True, f"{version}, accel {v.accel}",
                            info={**_kvm_access(), "accel": v.accel, "accel_reason": v.reason, "kernel": k.version,
                                  "kernel_reason": why,
                                  "machine": _default_machine(k, v.accel, accel_mod.guest_tsc_khz(v.accel))})

    # -- lifecycle ---------------------------------------------------------
    def start(self, inst: VMState, stream: Stream | None = None) -> None:
        vm = _VM(self, inst, stream)
        inst.vm = vm
        try:
            vm.launch()
            if vm.template is not None:
                vm.wait_resumed(RESTORE_DEADLINE)
            if inst.spec.detach:
                vm.wait_for_command(min(inst.spec.timeout or BOOT_DEADLINE, BOOT_DEADLINE))
        except BaseException:
            vm.forget_unproven_kernel()
            self.cleanup(inst)
            raise

    def wait(self, inst: InstanceState, timeout: float | None = None) -> int:
        vm = self.vm(inst)
        # Pumped.wait wakes on a pidfd, not Popen's 50 ms polling, so the exit is seen when it
        # happens. TimeoutExpired goes to the caller, nothing killed.
        inst.proc.wait(timeout)
        vm.exited.wait(5)  # its watcher stamps 'exited' as it reaps QEMU
        # QEMU's own CPU time, from its reap (wait4): not this process's RUSAGE_CHILDREN, which
        # counts any other child reaped meanwhile
        inst.info["qemu_cpu_s"] = inst.proc.cpu_seconds
        try:
            inst.exit_code = vm.outcome()
        except StartFailed:
            vm.forget_unproven_kernel()
            raise
        return inst.exit_code

    def running(self, inst: InstanceState) -> bool:
        return inst.proc is not None and inst.proc.proc.poll() is None

    def stop(self, inst: InstanceState, timeout: float = 10.0) -> None:
        """Ask the guest to SIGTERM the command; after ``timeout``, QMP quit; then kill."""
        vm = _vm_of(inst)
        if vm is None or not self.running(inst):
            return
        if timeout > 0 and vm.ctl is not None and vm.ctl.send(b"term\n"):
            try:
                inst.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        vm.killed = True
        if qmp.quit(vm.qmp_path, timeout=2.0):
            try:
                inst.proc.wait(3)
                return
            except subprocess.TimeoutExpired:
                pass
        kill_group(inst.proc.proc)

    def kill(self, inst: InstanceState) -> None:
        vm = _vm_of(inst)
        if vm is not None:
            vm.killed = True
        if inst.proc is not None:
            kill_group(inst.proc.proc)

    def cleanup(self, inst: VMState) -> None:
        with _HANDLES:  # two threads removing the same VM: one tears it down
            vm, inst.vm = inst.vm, None
        if vm is not None:
            vm.teardown()

    def exec(self, inst: InstanceState, argv: list[str], stream: Stream | None = None,
             timeout: float | None = None) -> tuple[int, bytes, bytes]:
        code, out, err = self.vm(inst).agent.call(argv, timeout or 60)
        if stream:
            stream("stdout", out)
            stream("stderr", err)
        return code, out, err

    def oom_killed(self, inst: InstanceState) -> bool:
        # The guest kernel's OOM killer is inside the VM: the init reports the guest's oom_kill
        # count (/proc/vmstat) once the command ended (_on_record). The only other guest tasks
        # are the init's small shells (PID 1 itself is never chosen), so a kill is the command's.
        return inst.info.get("guest_oom_kills", 0) > 0

    def end_reason(self, inst: InstanceState) -> str:
        """As every runtime's (QEMU killed, the guest kernel's OOM kills), and a guest kernel panic."""
        vm = _vm_of(inst)
        return (vm.panic() if vm is not None else "") or super().end_reason(inst)

    def vm(self, inst: InstanceState) -> "_VM":
        """The host-side state of a started VM (its QEMU command line is ``.argv``)."""
        vm = _vm_of(inst)
        if vm is None:
            raise StartFailed(f"VM {inst.name!r} was never started or is already removed")
        return vm


_HANDLES = threading.Lock()


def _real_setpriv(path: Path) -> bool:
    """Whether ``path`` (in an image) is util-linux's setpriv: busybox's applet of that name cannot change the user."""
    return path.is_file() and not (path.is_symlink() and "busybox" in os.readlink(path))


def _vm_of(inst: VMState) -> "_VM | None":
    return inst.vm


def _default_machine(k: kernel_mod.Kernel, accel: str, tsc_khz: int | None = None) -> str:
    # microvm (no PCI, no firmware to speak of) boots faster than q35, but needs a kernel
    # that finds virtio-mmio devices. Under TCG it also needs the host's TSC frequency
    # (kernel_args passes it): calibrating the TSC against microvm's PIT alone fails on a
    # busy host and the boot hangs (measured here: 3 boots in 5), while q35 has an HPET.
    if not k.supports_microvm():
        return "q35"
    return "microvm" if accel == "kvm" or tsc_khz else "q35"


class _VM:
    """Everything one VM run holds on the host: QEMU, its channels, its files."""

    def __init__(self, rt: QemuRuntime, inst: InstanceState, stream: Stream | None):
        self.rt, self.inst, self.stream = rt, inst, stream
        self.spec = inst.spec
        self.channels: dict[str, Channel] = {}
        self.ctl: Channel | None = None
        self.agent = _Agent(self)
        self.proc: subprocess.Popen | None = None
        self.sock_dir: Path | None = None
        self.own_sock_dir = False
        self.killed = False
        self.reported: int | None = None
        self.guest_error: str | None = None
        self.console_tail = b""
        self.console_log = None
        self.follower: threading.Thread | None = None
        self.exited = threading.Event()  # QEMU has ended
        self.unproven_kernel_dir: Path | None = None
        self.command_started = threading.Event()
        self.template: templates.Template | None = None  # start="snapshot": restored from it
        self.template_hold: templates.InUse | None = None

    # -- assembling ---------------------------------------------------------
    def _options(self) -> dict:
        opts = dict(self.spec.options)
        unknown = set(opts) - OPTIONS
        if unknown:
            raise InvalidSpec(f"unknown qemu option(s) {', '.join(sorted(unknown))}: "
                              f"use {', '.join(sorted(OPTIONS))}")
        return opts

    def config(self) -> machine.VMConfig:
        """Resolve kernel, accelerator, machine, boot mode and sizes (may build cached files)."""
        opts = self._options()
        inst, spec, image = self.inst, self.spec, self.inst.image
        k, why = kernel_mod.select(opts.get("kernel"), opts.get("modules"))
        if inst.mounts and not kernel_mod.has_9p(k):  # volumes: the guest mounts QEMU's 9p exports
            k = kernel_mod.with_9p(k, kernel_mod.module_names())
            why += "; for volumes (9p), the distribution's generic kernel of that release"
        cache = kernel_mod.kernels_dir() / k.version
        if k.version.startswith("user-") and not cache.exists():
            self.unproven_kernel_dir = cache  # built for this run: removed if the kernel never boots
        forced = opts.get("accel")
        if forced is not None:
            if forced not in ("kvm", "tcg"):
                raise InvalidSpec(f"accel {forced!r} is not supported: use kvm or tcg (or leave it out to probe)")
            verdict = accel_mod.AccelVerdict(forced, "asked for by the caller")
        else:
            verdict = accel_mod.choose(k, which(self.rt.qemu) or self.rt.qemu)
        tsc_khz = accel_mod.guest_tsc_khz(verdict.accel)
        mach = opts.get("machine") or _default_machine(k, verdict.accel, tsc_khz)
        if mach not in machine.MACHINES:
            raise InvalidSpec(f"machine {mach!r} is not supported: use one of {', '.join(machine.MACHINES)}")
        if spec.start == "snapshot" and (inst.mounts or inst.net is not None):
            raise InvalidSpec("start='snapshot' restores a VM without volumes or a kit network: "
                              "use start='cold' for those")
        if mach == "microvm" and not k.supports_microvm():
            raise InvalidSpec(f"kernel {k.version} cannot find microvm's virtio-mmio devices: use machine='q35'")
        memory = spec.memory or DEFAULT_MEMORY
        if memory < MIN_MEMORY:
            raise InvalidSpec(f"memory {memory // 1024**2} MiB is too small to boot a VM: give at least "
                              f"{MIN_MEMORY // 1024**2}m (default {DEFAULT_MEMORY // 1024**2}m)")
        boot = opts.get("boot") or "auto"
        if boot not in ("auto", "disk", "initramfs"):
            raise InvalidSpec(f"boot {boot!r} is not supported: use auto, disk or initramfs")
        if boot == "auto":
            boot = "initramfs" if image.size <= INITRAMFS_MAX_IMAGE else "disk"
        disk = None
        if boot == "initramfs":
            # The unpacked image lives in guest RAM next to the kernel: keep half of memory free.
            if image.size * 2 + 64 * 1024**2 > memory:
                raise InvalidSpec(
                    f"image {image.name!r} ({image.size // 1024**2} MiB) does not fit in {memory // 1024**2} MiB "
                    f"of guest memory when booted from the initramfs: give more memory or boot='disk'")
            initrd = initramfs.with_image(k, image)
        else:
            initrd = initramfs.base(k)
            disk = disk_mod.base_disk(image, parse_memory(opts["disk_size"]) if opts.get("disk_size") else None)
        image_file = machine.boot_image(k.vmlinuz, k.vmlinux, qemubin.version(which(self.rt.qemu) or self.rt.qemu))
        inst.info.update({"accel": verdict.accel, "accel_reason": verdict.reason, "machine": mach,
                          "boot": boot, "kernel": k.version, "kernel_kind": k.kind, "kernel_reason": why,
                          "kernel_entry": "pvh" if image_file == k.vmlinux else "bzimage",
                          "memory_mib": memory // 1024**2, "vcpus": machine.vcpus(spec.cpus), "tsc_khz": tsc_khz})
        self.boot = boot
        return machine.VMConfig(kernel=image_file, initrd=initrd, disk=disk, accel=verdict.accel, acpi=k.acpi,
                                machine=mach, cpus=machine.vcpus(spec.cpus), memory_mib=memory // 1024**2,
                                ports=self._guest_ports(opts), in_netns=inst.net is not None, tsc_khz=tsc_khz,
                                shares=[(f"kit{i}", self._share(i, m), m.read_only, _security_model())
                                        for i, m in enumerate(inst.mounts)])

    def _guest_ports(self, opts: dict) -> list[tuple[int, int]]:
        """QEMU's forwards: the published ports on the host; in a kit network, each exposed port and
        each published container port P as 127.0.0.1:P of the network's namespace (the kit's
        forwarder publishes those on the host)."""
        expose = parse_expose(opts.get("expose"))
        if self.inst.net is None:
            if expose:
                raise InvalidSpec("expose is for a VM on a kit network (network=NAME): without one, publish "
                                  "ports with -p HOST:PORT")
            return list(self.spec.ports)
        return [(p, p) for p in dict.fromkeys(expose + [c for _, c in self.spec.ports])]

    def spec_script(self) -> bytes:
        """What the guest init sources: settings, the environment and the command, shell-quoted.

        Sent on the control port followed by a NUL byte, which ends it: no shell word can
        hold a NUL, and the guest reads up to it with a builtin (no fork).
        """
        spec, q = self.spec, shlex.quote
        net = self.inst.net  # a kit network's names
        image_workdir = (self.inst.image.config or {}).get("workdir") if self.inst.image else None
        environ = spec.environment(self.inst.image)
        env = " ".join(q(f"{k}={v}") for k, v in environ.items())
        lines = [
            f"KIT_MODE={q(self.boot)}",
            f"KIT_HOSTNAME={q(spec.hostname or spec.name)}",
            f"KIT_WORKDIR={q(spec.workdir or image_workdir or '/')}",
            f"KIT_NET={'1' if spec.ports or net else ''}",
            f"KIT_HOSTS={q(net.hosts_text(guest=spec.name) if net else '')}",
            f"KIT_RO={'1' if spec.read_only else ''}",
            f"KIT_RESTORED={'1' if spec.start == 'snapshot' else ''}",
            # the command found on the instance's PATH, not the init's (kit_which: init.sh)
            f"kit_env() {{ kit_which \"$1\" {q(environ.get('PATH', ''))}; shift; exec env -i {env} "
            f"{self._user_switch()}\"$kit_found\" \"$@\"; }}",
            f"kit_cmd() {{ {self._prologue()}kit_env {' '.join(q(a) for a in spec.command)}; }}",
            # Volumes: the init defines kit_mount TAG TARGET [ro] per stage (see init.sh).
            f"KIT_9P={'1' if self.inst.mounts else ''}",
            # (kit_file, a file mount's bind: init.sh)
            "kit_volumes() { :; " + "".join(self._mount_line(i, m) for i, m in enumerate(self.inst.mounts)) + "}",
        ]
        return ("\n".join(lines) + "\n").encode()

    def _share(self, i: int, m) -> Path:
        """The directory QEMU's 9p serves for mount ``i``: the volume's, or for a file a private directory of
        the instance holding only a hard link to it (a copy for a read-only mount across filesystems)."""
        if not m.host.is_file():
            return m.host
        d = self.inst.state_dir / "files" / str(i)
        d.mkdir(parents=True, exist_ok=True)
        try:
            os.link(m.host, d / m.host.name)
        except OSError:
            if not m.read_only:
                raise InvalidSpec(f"a VM mounts file {m.host} through a hard link, which this host refuses "
                                  f"(another filesystem, or a file you do not own): mount its directory, or mount it read-only") from None
            shutil.copy2(m.host, d / m.host.name)
        return d

    def _mount_line(self, i: int, m) -> str:
        """``kit_volumes``' line of mount ``i``: a 9p mount, and for a file its bind (``kit_file``)."""
        q, ro = shlex.quote, " ro" if m.read_only else ""
        if not m.host.is_file():
            return f"kit_mount kit{i} {q(m.target)}{ro}; "
        return f"kit_mount kit{i} /.kit/files/{i}{ro}; kit_file {q(f'/.kit/files/{i}/{m.host.name}')} {q(m.target)}; "

    def _prologue(self) -> str:
        """What the guest does as root before the command: the spec's sysctls (the guest's own kernel)
        and tmpfs mounts; a failure ends the run with the reason on its stderr."""
        q, spec, out = shlex.quote, self.spec, ""
        for key, value in spec.sysctls.items():
            out += f"sysctl -w {q(f'{key}={value}')} >/dev/null || {{ echo {q(f'kit: sysctl {key} refused')} >&2; exit 125; }}; "
        for t in spec.tmpfs:
            opts = ",".join(["nosuid", "nodev", "noexec", *t.options()])
            out += (f"mkdir -p {q(t.target)} 2>/dev/null; mount -t tmpfs -o {opts} tmpfs {q(t.target)} || "
                    f"{{ echo {q(f'kit: could not mount a tmpfs at {t.target}')} >&2; exit 125; }}; ")
        return out

    def _user_switch(self) -> str:
        """``user``: the image's own setpriv (util-linux) drops to it; the kit's busybox has no such applet."""
        spec, image = self.spec, self.inst.image
        if spec.user is None:
            return ""
        uid, gid, groups = resolve_user(spec.user, image.rootfs)
        setpriv = next((f"/{d}/setpriv" for d in ("usr/bin", "bin") if _real_setpriv(image.rootfs / d / "setpriv")),
                       None)
        if setpriv is None:
            raise InvalidSpec(f"user={spec.user!r} in a VM needs setpriv in the image (Debian's util-linux): image "
                              f"{image.name!r} has none")
        grp = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
        return f"{setpriv} --reuid={uid} --regid={gid} {grp} -- "

    def _socket_dir(self) -> Path:
        d = self.inst.state_dir
        longest = max(len(n) for n in list(CHANNEL_NAMES.values()) + ["qmp.sock"])
        if len(os.fsencode(d)) + 1 + longest <= MAX_PATH:
            return d
        # A deep $KIT_HOME would overflow sun_path: use a short private directory instead.
        self.own_sock_dir = True
        return Path(tempfile.mkdtemp(prefix="kit-vm-"))

    # -- running ------------------------------------------------------------
    def launch(self) -> None:
        inst, spec = self.inst, self.spec
        cfg = self.config()
        self.sock_dir = self._socket_dir()
        inst.info["sock_dir"] = str(self.sock_dir)
        self.qmp_path = self.sock_dir / "qmp.sock"
        cfg.qmp = self.qmp_path
        self.console_log = open(inst.state_dir / "console.log", "ab")
        handlers = {"console": self._on_console, "kit.ctl": LineRecords(self._on_record),
                    "kit.exec": self.agent.feed}
        # The command's output goes straight to its log files. QEMU writes a file at once,
        # whereas with a socket whose reader lags it leaves the rest in the guest's queue, and
        # the power-off after the command lost it (seen: half of a 1 MB stderr). A
        # foreground run's stream follows the files (_follow).
        cfg.files = {"kit.out": inst.stdout_path, "kit.err": inst.stderr_path}
        for p in cfg.files.values():
            p.touch()
        for name, handler in handlers.items():
            self.channels[name] = Channel(self.sock_dir / CHANNEL_NAMES[name], handler)
            cfg.sockets[name] = self.channels[name].path
        self.ctl = self.channels["kit.ctl"]
        state = self._restore_from(cfg) if spec.start == "snapshot" else subprocess.DEVNULL
        argv = machine.argv(cfg, which(self.rt.qemu) or self.rt.qemu)
        self.argv = argv
        qlog = inst.state_dir / "qemu"
        qlog.mkdir(exist_ok=True)
        try:
            # A kit network member: QEMU (and so its user network) lives in the network's namespace.
            enter = None if inst.net is None else (lambda fd=inst.net.nsfd: setns(fd))
            inst.proc = Pumped(argv, qlog, detach=True, preexec_fn=enter, stdin=state)
        except OSError as e:
            raise StartFailed(f"qemu: could not start {argv[0]}: {e}") from None
        finally:
            if state is not subprocess.DEVNULL:
                state.close()
        self.proc = inst.proc.proc
        inst.phases["launched"] = inst.proc.launched_at
        if self.template is not None:
            inst.phases["restore"] = inst.proc.launched_at
        threading.Thread(target=self._watch_exit, daemon=True, name=f"kit-vm-exit-{inst.name}").start()
        if not spec.detach and self.stream is not None:
            self.follower = threading.Thread(target=self._follow, daemon=True, name=f"kit-vm-out-{inst.name}")
            self.follower.start()
        alive = lambda: self.proc.poll() is None  # noqa: E731
        for ch in self.channels.values():
            ch.start(alive, accept_timeout=30)
        try:
            wait_until(lambda: self.ctl.connected.is_set() or self.proc.poll() is not None, 30,
                       what="QEMU connecting to the control socket")
        except KitTimeout:
            raise StartFailed(f"qemu: QEMU did not open its channels within 30 s: {self.qemu_error()}") from None
        if not self.ctl.connected.is_set():
            self.proc.wait(5)
            raise StartFailed(f"qemu: QEMU exited at once ({self.proc.returncode}): {self.qemu_error()}")
        self.ctl.send(self.spec_script() + b"\0")
        if inst.net is not None and spec.ports:  # -p of a member: host 127.0.0.1:H -> namespace :P -> guest
            inst.forwarder = inst.net.publish(spec.ports)

    def _restore_from(self, cfg: machine.VMConfig):
        """Find (or build) the template of ``cfg`` and point ``cfg`` at it; the open state file."""
        # Held (prune leaves it alone) until the restored guest runs.
        tpl, built_s, self.template_hold = templates.checkout(cfg, which(self.rt.qemu) or self.rt.qemu)
        self.inst.info["template"] = tpl.key
        # A template built for this run is a snapshot miss, paid inside the startup clock.
        self.inst.info["pool"] = "hit" if built_s is None else "miss"
        if built_s is not None:
            self.inst.info["template_build_s"] = round(built_s, 3)
        try:
            state = tpl.open_state()
        except templates.TemplateCorrupt as e:
            self._release_template()
            templates.discard(tpl.key)
            raise StartFailed(f"qemu: {e}; it was removed and the next run rebuilds it") from None
        self.template = tpl
        cfg.net, cfg.mem_path, cfg.mem_shared, cfg.incoming = bool(cfg.ports), tpl.memory, False, "defer"
        return state

    def _release_template(self) -> None:
        hold, self.template_hold = self.template_hold, None
        if hold is not None:
            hold.release()

    def wait_resumed(self, deadline: float) -> None:
        """A restore: load the template's state and resume the guest, else kill QEMU, drop the
        template (a state QEMU cannot load is rebuilt on the next run) and raise one line why."""
        try:
            why = templates.incoming(self.qmp_path, lambda: self.proc.poll() is None, deadline)
            if why is None:
                self.inst.phases["resumed"] = time.time()
                # The guest's clock stopped with its template, and it shares its RNG state with
                # every sibling: after its spec it reads the host's time and a fresh seed. Sent now,
                # as it runs again, so that the time is at most the init's next steps old.
                self.ctl.send(f"clock {round(time.time())} {os.urandom(32).hex()}\n".encode())
                return
            kill_group(self.proc)
            self.proc.wait()
            err = self.qemu_error()
            if err != "no message":
                why = err
            self._release_template()
            templates.discard(self.template.key)
            raise StartFailed(f"qemu: restoring VM template {self.template.key} failed: {why}; it was "
                              f"removed and the next run rebuilds it")
        finally:
            self._release_template()

    def wait_for_command(self, deadline: float) -> None:
        """Block until the guest runs the command (a service is then up), or raise why not."""
        t0 = time.monotonic()
        while not self.command_started.wait(0.05):
            if self.proc.poll() is not None:
                self.proc.wait()
                self.outcome()  # raises with the reason
                return
            if time.monotonic() - t0 > deadline:
                raise KitTimeout(f"qemu: the VM did not start its command within {deadline:g} s "
                                 f"(console: {self.console_text()[-200:]!r})")

    def _watch_exit(self) -> None:
        self.proc.wait()  # blocking waitpid: the exit is stamped when it happens
        self.inst.phases.setdefault("exited", time.time())
        self.exited.set()

    def _follow(self) -> None:
        """Hand what QEMU appends to the log files to the stream, until QEMU has ended."""
        files = [("stdout", open(self.inst.stdout_path, "rb")), ("stderr", open(self.inst.stderr_path, "rb"))]
        try:
            while self.stream is not None:
                done = self.exited.wait(FOLLOW_INTERVAL)
                for label, f in files:
                    chunk = f.read()
                    if chunk:
                        self.stream = deliver(self.stream, label, chunk)
                if done:
                    return
        finally:
            for _, f in files:
                f.close()

    def _on_console(self, chunk: bytes) -> None:
        now = time.time()
        seen = self.console_tail + chunk
        if not MARK.startswith(seen[:len(MARK)]):
            # The kernel's first word. A kernel silent until the init (the kit's own, booted through
            # PVH: no decompressor, and loglevel=3) shows no sign of life before it: no 'kernel' phase.
            self.inst.phases.setdefault("kernel", now)
        self.console_log.write(chunk)
        self.console_log.flush()
        # Keep enough to find the init mark across chunk borders and to explain a failure.
        self.console_tail = (self.console_tail + chunk)[-8192:]
        if "init" not in self.inst.phases and MARK in self.console_tail:
            self.inst.phases["init"] = now

    def _on_record(self, line: str, t: float) -> None:
        word, _, arg = line.partition(" ")
        if word == "command":
            self.inst.phases.setdefault("command", t)
            self.command_started.set()
        elif word == "exited" and arg.strip().lstrip("-").isdigit():
            self.reported = int(arg)
            self.inst.phases.setdefault("command_exited", t)
        elif word == "oom" and arg.strip().isdigit():
            self.inst.info["guest_oom_kills"] = int(arg)
        elif word == "error":
            self.guest_error = arg
        elif word == "spec":
            self.inst.phases.setdefault("spec", t)

    def console_text(self) -> str:
        return self.console_tail.decode("utf-8", "replace")

    def qemu_error(self) -> str:
        try:
            text = (self.inst.state_dir / "qemu" / "stderr.log").read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text.splitlines()[-1] if text else "no message"

    def panic(self) -> str:
        """``guest panic: <the panic line> | <the console's last lines>`` once the guest kernel panicked, or ''."""
        console = self.console_text()
        m = re.search(r"Kernel panic - not syncing: ([^\r\n]*)", console)
        if not m:
            return ""
        last = [ln.strip() for ln in console[m.end():].splitlines() if ln.strip()][-2:]
        return " | ".join([f"guest panic: {m.group(1).strip()}", *last])[:400]

    def outcome(self) -> int:
        """The command's exit code once QEMU has exited; raise StartFailed if the guest never said."""
        for ch in self.channels.values():
            ch.join(5)
        if self.follower is not None:
            self.follower.join(5)
        if self.reported is not None:
            return self.reported
        if self.killed:
            return 137
        console = self.console_text()
        panic = re.search(r"Kernel panic - not syncing: ([^\r\n]*)", console)
        if self.guest_error:
            why = f"the guest init failed: {self.guest_error}"
        elif panic:
            why = f"the guest kernel panicked: {panic.group(1).strip()}"
        elif self.proc.returncode < 0:
            why = f"QEMU was killed ({signal_name(-self.proc.returncode)}) before the command finished"
        elif self.proc.returncode:
            why = f"QEMU failed ({self.proc.returncode}): {self.qemu_error()}"
        else:
            tail = console.strip().splitlines()[-1:] or ["(nothing on the console)"]
            why = f"the VM powered off before the command finished; console: {tail[0][:200]}"
        raise StartFailed(f"qemu: {why}")

    def forget_unproven_kernel(self) -> None:
        """Remove what this run cached for a user's kernel that never reached the kit's init:
        nothing is kept for a kernel that failed to boot."""
        if self.unproven_kernel_dir is not None and "init" not in self.inst.phases:
            shutil.rmtree(self.unproven_kernel_dir, ignore_errors=True)

    def teardown(self) -> None:
        """Kill QEMU if alive; close channels and files; remove sockets (idempotent)."""
        fwd, self.inst.forwarder = self.inst.forwarder, None
        if fwd is not None:
            fwd.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.killed = True
            kill_group(self.proc)
        self._release_template()
        for ch in self.channels.values():
            ch.close()
        for ch in self.channels.values():
            ch.join(2)
        if self.console_log is not None:
            try:
                self.console_log.close()
            except OSError:
                pass
        if self.sock_dir is not None:
            try:
                (self.sock_dir / "qmp.sock").unlink()
            except OSError:
                pass
            if self.own_sock_dir:
                shutil.rmtree(self.sock_dir, ignore_errors=True)


class _Agent:
    """Host end of the guest's exec agent (port ``kit.exec``): one request at a time.

    Request: ``<length>\\n<shell script>``. Reply: ``out N\\n<N bytes>err N\\n<N bytes>exit C\\n``;
    lengths frame the bytes, so nothing the command prints can fake a reply.
    """

    def __init__(self, vm: _VM):
        self.vm = vm
        self.buf = b""
        self.cond = threading.Condition()
        self.lock = threading.Lock()
        self.broken = False

    def feed(self, chunk: bytes) -> None:
        with self.cond:
            self.buf += chunk
            self.cond.notify_all()

    def _parse(self):
        b = self.buf
        parts = []
        for tag in (b"out", b"err"):
            head, nl, rest = b.partition(b"\n")
            if not nl:
                return None
            t, _, n = head.partition(b" ")
            if t != tag or not n.isdigit():
                raise StartFailed(f"qemu: the exec agent sent a malformed reply ({head[:40]!r})")
            if len(rest) < int(n):
                return None
            parts.append(rest[:int(n)])
            b = rest[int(n):]
        head, nl, rest = b.partition(b"\n")
        if not nl:
            return None
        t, _, c = head.partition(b" ")
        if t != b"exit" or not c.isdigit():
            raise StartFailed(f"qemu: the exec agent sent a malformed reply ({head[:40]!r})")
        self.buf = rest
        return int(c), parts[0], parts[1]

    def call(self, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        ch = self.vm.channels.get("kit.exec")
        if self.broken or ch is None or not ch.connected.is_set():
            raise StartFailed(f"qemu: exec is not available in VM {self.vm.inst.name!r} "
                              f"(its agent is not connected or an earlier exec timed out)")
        q = shlex.quote
        script = f"cd \"$KIT_WORKDIR\"; kit_env {' '.join(q(a) for a in argv)}\n".encode()
        deadline = time.monotonic() + timeout
        with self.lock:
            with self.cond:
                self.buf = b""
            ch.send(str(len(script)).encode() + b"\n" + script)
            with self.cond:
                while True:
                    got = self._parse()
                    if got is not None:
                        return got
                    left = deadline - time.monotonic()
                    if left <= 0 or self.vm.proc.poll() is not None:
                        # The agent may still answer later: its replies can no longer be matched.
                        self.broken = True
                        raise KitTimeout(f"exec {argv[0]!r} in VM {self.vm.inst.name!r} did not finish "
                                         f"within {timeout:g} s; exec is disabled for this VM now")
                    self.cond.wait(min(left, 0.1))
