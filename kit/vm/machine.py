"""The ``qemu-system-x86_64`` command line of a kit VM (pure: no side effects).

Everything the guest and host exchange goes through named host sockets:
``console`` (ttyS0) and the virtio-serial ports ``kit.ctl``, ``kit.out``,
``kit.err``, ``kit.exec``. The host listens; QEMU connects as a client at
start-up, so not a byte is lost before the host is ready. A detached VM may
instead write ``kit.out``/``kit.err`` straight to files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidSpec

QEMU = "qemu-system-x86_64"
MACHINES = ("microvm", "q35")
PORTS = ("kit.ctl", "kit.out", "kit.err", "kit.exec")
#: Guest kernel arguments: serial console, only errors on it, reboot (= QEMU exits with
#: -no-reboot) at once on panic. earlyprintk makes the kernel's first words reach the
#: console early, so the host can stamp "kernel started".
CMDLINE = "loglevel=3 console=ttyS0 earlyprintk=ttyS0 panic=-1 reboot=t tsc=reliable no_timer_check"


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
    sockets: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    qmp: Path | None = None
    append: str = ""


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
    bus = "device" if cfg.machine == "microvm" else "pci"
    a = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    if cfg.machine == "microvm":
        # ACPI announces the virtio-mmio devices to the kernel; no option ROMs, no RTC to probe.
        a += ["-M", "microvm,acpi=on,x-option-roms=off,rtc=on"]
    else:
        a += ["-M", "q35"]
    if cfg.accel == "kvm":
        a += ["-accel", "kvm", "-cpu", "host"]
    else:
        a += ["-accel", "tcg"]
    a += ["-smp", str(cfg.cpus), "-m", f"{cfg.memory_mib}M"]
    a += ["-kernel", str(cfg.kernel), "-initrd", str(cfg.initrd)]
    a += ["-append", (CMDLINE + " " + cfg.append).strip()]
    if "console" in cfg.sockets:
        a += ["-chardev", f"socket,id=console,path={_opt(cfg.sockets['console'])}", "-serial", "chardev:console"]
    a += ["-device", f"virtio-serial-{bus},max_ports={len(PORTS) + 1}"]
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
    if cfg.ports:
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{c}" for h, c in cfg.ports)
        # restrict=on: the guest reaches nothing outside; only the forwarded ports come in.
        a += ["-netdev", f"user,id=net0,restrict=on,{fwd}", "-device", f"virtio-net-{bus},netdev=net0"]
    else:
        a += ["-nic", "none"]
    if cfg.qmp is not None:
        a += ["-qmp", f"unix:{_opt(cfg.qmp)},server=on,wait=off"]
    return a
