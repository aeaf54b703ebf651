"""The ``qemu-system-x86_64`` command line of a kit VM (pure: no side effects).

The guest and host talk through ``console`` (ttyS0) and the virtio-serial
ports ``kit.ctl``, ``kit.out``, ``kit.err``, ``kit.exec``. Each is a named host
socket (the host listens; QEMU connects as a client at start-up, so not a byte is
lost before the host is ready) or, for ``kit.out``/``kit.err``, a file QEMU
appends to (the runtime uses files: QEMU never holds back data for a file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidSpec

QEMU = "qemu-system-x86_64"
MACHINES = ("microvm", "q35")
#: -M values. microvm: no option ROMs; an RTC so the guest's wall clock starts right; ACPI
#: announces the virtio-mmio devices to a kernel that reads it (see :func:`machine_arg`).
MACHINE_ARGS = {"microvm": "microvm,acpi=on,x-option-roms=off,rtc=on", "q35": "q35"}
#: The first QEMU release that boots an ELF kernel through its PVH entry point (x86 pc/q35; microvm
#: came later, with it).
PVH_SINCE = (4, 0)
#: Each machine's virtio transport: the init's module group, and the suffix of QEMU's device names.
VIRTIO_BUS = {"microvm": "mmio", "q35": "pci"}
DEVICE_SUFFIX = {"microvm": "device", "q35": "pci"}
PORTS = ("kit.ctl", "kit.out", "kit.err", "kit.exec")
#: Guest kernel arguments: serial console, only errors on it, reboot (= QEMU exits with
#: -no-reboot) at once on panic. earlyprintk makes the kernel's first words reach the
#: console early, so the host can stamp "kernel started". noreplace-smp: a kernel built for
#: SMP that finds one CPU rewrites every lock prefix in its text, one text_poke (a page-table
#: switch) each, ~0.4 s of a boot under TCG here (benchmarks/bench_kernel.py measures each word);
#: with more CPUs it rewrites nothing anyway, and a lock prefix left costs a one-CPU guest next to nothing.
CMDLINE = "loglevel=3 console=ttyS0 earlyprintk=ttyS0 panic=-1 reboot=t tsc=reliable no_timer_check noreplace-smp"
#: Under TCG, for a kernel that reads no ACPI (the kit's own): with no ACPI PM timer to check it
#: against, the kernel calibrates its local APIC timer against the TSC for ~0.1 s, then verifies it
#: against the PIT's jiffies for another ~0.1 s, and under TCG the verification fails ("APIC timer
#: disabled due to verification failure"): ~0.27 s of every boot spent to end with no APIC timer
#: (initcall_debug here). noapictimer goes straight to that end (the PIT, or q35's HPET, drives the
#: tick). A kernel that reads ACPI checks against the PM timer and keeps a working APIC timer (Debian's
#: hangs after its init with noapictimer on microvm); under KVM the APIC timer works: both keep it.
TCG_CMDLINE = "noapictimer"


@dataclass
class VMConfig:
    """What one VM is made of (paths are host paths).

    Attributes:
        sockets: channel name (``console`` or a port name) -> host unix socket path.
        files: port name -> a host file QEMU appends to instead of a socket.
    """

    kernel: Path
    initrd: Path
    disk: Path | None = None
    accel: str = "tcg"
    machine: str = "microvm"
    cpus: int = 1
    memory_mib: int = 256
    ports: list[tuple[int, int]] = field(default_factory=list)
    #: Member of a kit network (QEMU runs inside its namespace): user networking even with no
    #: port, unrestricted, so the guest reaches the namespace's loopback at 10.0.2.2.
    in_netns: bool = False
    sockets: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    #: Volumes, through QEMU's own 9p server: (mount tag, host directory, read-only, security model).
    shares: list[tuple[str, Path, bool, str]] = field(default_factory=list)
    qmp: Path | None = None
    append: str = ""
    tsc_khz: int | None = None
    #: A virtio-net device even without ports (a VM template: each restore adds its own forwards).
    net: bool = False
    #: Guest RAM from this file (kit.vm.templates): shared while a template is built (the file then
    #: holds the RAM), private (copy-on-write) when restored from it.
    mem_path: Path | None = None
    mem_shared: bool = False
    #: Restore: QEMU's -incoming (``defer``: the x-ignore-shared capability is set over QMP first).
    incoming: str | None = None
    #: Whether the guest kernel reads ACPI. microvm without it: QEMU names the virtio-mmio devices on
    #: the kernel command line instead (its auto-kernel-cmdline), and MP tables describe the CPUs.
    acpi: bool = True


def machine_arg(cfg: VMConfig) -> str:
    """The ``-M`` value of ``cfg``."""
    arg = MACHINE_ARGS[cfg.machine]
    if cfg.machine == "microvm" and not cfg.acpi:
        arg = arg.replace("acpi=on", "acpi=off")
    return arg + (",memory-backend=kitmem" if cfg.mem_path else "")


def boot_image(vmlinuz: Path, vmlinux: Path | None, qemu_version: tuple[int, ...] | None) -> Path:
    """The kernel file QEMU boots fastest: the uncompressed ``vmlinux`` through its PVH entry point
    (no decompression, no real-mode setup code) when there is one and this QEMU supports it, else
    the bzImage. An unknown QEMU version is taken as too old."""
    if vmlinux is not None and qemu_version is not None and tuple(qemu_version[:2]) >= PVH_SINCE:
        return vmlinux
    return vmlinuz


def kernel_args(cfg: VMConfig) -> str:
    """The guest kernel's command line for ``cfg``.

    ``kit_bus`` tells the kit init which virtio transport to load (microvm has no
    PCI). Under TCG the guest's TSC is the host's own counter, so its frequency is
    known: ``tsc_early_khz`` hands it over instead of letting the kernel calibrate it
    against emulated timers. That calibration is slow, and on microvm (PIT only, no
    HPET or ACPI PM timer) it fails when the host is busy; the kernel then marks the
    TSC unstable and hangs (here: 3 boots in 5). Under KVM, kvmclock tells the guest.
    Under TCG a kernel without ACPI also leaves out its APIC timer (:data:`TCG_CMDLINE`).
    """
    words = [CMDLINE, f"kit_bus={VIRTIO_BUS[cfg.machine]}"]
    if cfg.accel == "tcg" and not cfg.acpi:
        words.append(TCG_CMDLINE)
    if cfg.accel == "tcg" and cfg.tsc_khz:
        words.append(f"tsc_early_khz={int(cfg.tsc_khz)}")
    if cfg.append:
        words.append(cfg.append)
    return " ".join(words)


def vcpus(cpus: float | None) -> int:
    """A CPU share becomes whole vCPUs, rounded up (1.5 -> 2)."""
    return max(1, math.ceil(cpus)) if cpus else 1


def _opt(value) -> str:
    # QEMU option values escape commas by doubling them.
    return str(value).replace(",", ",,")


def argv(cfg: VMConfig, qemu: str = QEMU) -> list[str]:
    """The full command line for ``cfg``."""
    if cfg.machine not in MACHINES:
        raise InvalidSpec(f"machine {cfg.machine!r} is not supported: use one of {', '.join(MACHINES)}")
    if cfg.accel not in ("kvm", "tcg"):
        raise InvalidSpec(f"accelerator {cfg.accel!r} is not supported: use kvm or tcg")
    bus = DEVICE_SUFFIX[cfg.machine]
    a = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    a += ["-M", machine_arg(cfg)]
    if cfg.accel == "kvm":
        a += ["-accel", "kvm", "-cpu", "host"]
    else:
        a += ["-accel", "tcg"]
    a += ["-smp", str(cfg.cpus), "-m", f"{cfg.memory_mib}M"]
    if cfg.mem_path is not None:
        a += ["-object", f"memory-backend-file,id=kitmem,size={cfg.memory_mib}M,mem-path={_opt(cfg.mem_path)},"
                         f"share={'on' if cfg.mem_shared else 'off'}"]
    a += ["-kernel", str(cfg.kernel), "-initrd", str(cfg.initrd)]
    a += ["-append", kernel_args(cfg)]
    if "console" in cfg.sockets:
        a += ["-chardev", f"socket,id=console,path={_opt(cfg.sockets['console'])}", "-serial", "chardev:console"]
    serial = f"virtio-serial-{bus},max_ports={len(PORTS) + 1}"
    if bus == "pci" and cfg.accel == "tcg":
        # One legacy interrupt instead of an MSI-X vector per queue (12 here): the guest's
        # driver sets up in ~5 ms less, and under TCG interrupts cost the same either way.
        serial += ",vectors=0"
    a += ["-device", serial]
    for i, name in enumerate(PORTS):
        cid = f"p{i}"
        if name in cfg.files:
            a += ["-chardev", f"file,id={cid},path={_opt(cfg.files[name])},append=on"]
        elif name in cfg.sockets:
            a += ["-chardev", f"socket,id={cid},path={_opt(cfg.sockets[name])}"]
        else:
            continue
        a += ["-device", f"virtserialport,chardev={cid},name={name}"]
    if cfg.disk is not None:
        a += ["-drive", f"file={_opt(cfg.disk)},format=raw,if=none,id=root,readonly=on",
              "-device", f"virtio-blk-{bus},drive=root"]
    if cfg.ports or cfg.in_netns or cfg.net:
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{c}" for h, c in cfg.ports)
        # restrict=on: the guest reaches nothing outside; only the forwarded ports come in. In a kit
        # network's namespace "outside" is that namespace's loopback alone (no other device): open.
        a += ["-netdev", f"user,id=net0,restrict={'off' if cfg.in_netns else 'on'}{fwd}",
              "-device", f"virtio-net-{bus},netdev=net0"]
    else:
        a += ["-nic", "none"]
    for i, (tag, path, read_only, model) in enumerate(cfg.shares):
        # -fsdev + a device of the machine's bus (virtio-9p-device on microvm, -pci on q35); -virtfs
        # would always add a PCI device. readonly=on: QEMU itself refuses writes (EROFS).
        a += ["-fsdev", f"local,id=fs{i},path={_opt(path)},security_model={model}"
                        + (",readonly=on" if read_only else ""),
              "-device", f"virtio-9p-{bus},fsdev=fs{i},mount_tag={_opt(tag)}"]
    if cfg.qmp is not None:
        a += ["-qmp", f"unix:{_opt(cfg.qmp)},server=on,wait=off"]
    if cfg.incoming is not None:
        a += ["-incoming", cfg.incoming]
    return a
