"""Which accelerator a VM gets: KVM only when a real boot proves it works, else TCG.

A /dev/kvm node is not proof: on some hosts (e.g. the ``kvm_pvm`` module of a
nested sandbox) a stock kernel hangs under it. So the first VM on a host boots
the guest kernel under KVM with a deadline and waits for the kit init's mark on
the console; the verdict is cached in ``$KIT_HOME/accel.json`` per host and kernel.

A definite verdict is kept: KVM booted to init, or QEMU itself failed under
``-accel kvm``. A boot that merely did not reach init within the deadline may
have been a busy host, so that verdict is tentative: this session keeps it (no
VM start pays for a probe twice), a later session probes again with twice the
deadline, and only a second miss makes it final.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import select
import shutil
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import config, userns
from .._proc import kill_group
from . import initramfs, machine, qemubin
from .kernel import Kernel

PROBE_DEADLINE = 15.0
MARK = b"kit:init"
#: Probes (each in its own session) that must miss the deadline before that verdict is final.
TIMEOUT_STRIKES = 2


@dataclass
class AccelVerdict:
    """The accelerator to use and why.

    ``final``: a definite verdict, cached for good. A tentative one (the probe boot did not
    reach init in time) holds for the ``session`` that probed; ``strikes`` counts such misses.
    """

    accel: str
    reason: str
    probed_at: float = 0.0
    probe_seconds: float = 0.0
    final: bool = True
    session: str = ""
    strikes: int = 0


def _cache_path() -> Path:
    return config.home() / "accel.json"


def host_key(kernel: Kernel) -> str:
    """Host identity for the cache: a kernel update or a move to another host re-probes."""
    u = platform.uname()
    kvm = _kvm_module() or "-"
    return f"{u.node}|{u.release}|{kvm}|{kernel.key}"


def _kvm_module() -> str | None:
    for name in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if Path("/sys/module", name).exists():
            return name
    return None


def _load_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def cached(kernel: Kernel) -> AccelVerdict | None:
    """The cached verdict for this host and kernel, final or tentative, or None (no probe is run)."""
    hit = _load_cache().get(host_key(kernel))
    if not hit:
        return None
    known = {k: v for k, v in hit.items() if k in AccelVerdict.__dataclass_fields__}
    # Entries written before verdicts were tentative: only a KVM success was certainly definite.
    known.setdefault("final", hit.get("accel") == "kvm")
    return AccelVerdict(**known)


def _usable(hit: AccelVerdict | None) -> bool:
    """A final verdict, or a tentative one this very session reached."""
    return hit is not None and (hit.final or hit.session == config.SESSION_ID)


def precheck() -> str | None:
    """Why KVM is certainly unusable without booting anything, or None."""
    dev = Path("/dev/kvm")
    if not dev.exists():
        return "no /dev/kvm on this host (KVM not loaded or not exposed)"
    if not os.access(dev, os.R_OK | os.W_OK):
        return kvm_reason(dev)
    return None


def kvm_reason(dev: Path = Path("/dev/kvm")) -> str:
    """Why this user cannot open ``/dev/kvm`` although it exists, or ""."""
    try:
        st = dev.stat()
    except OSError:
        return ""
    if os.access(dev, os.R_OK | os.W_OK):
        return ""
    group = userns.group_name(st.st_gid)
    if group == "root":
        how = "add yourself to the kvm group (then log in again); here the device is root-only " \
              f"({stat.filemode(st.st_mode)} root:root): as root, chgrp kvm {dev} && chmod 660 {dev}"
    else:
        how = f"add yourself to the {group} group (then log in again)"
    return f"{dev} exists but {userns.user()} cannot open it: {how}"


def host_tsc_khz() -> int | None:
    """The host's TSC frequency in kHz, when the host says it; else None.

    Under TCG the guest reads the host's TSC, so this is the guest's TSC frequency
    too (see :func:`kit.vm.machine.kernel_args`). Sources, most exact first: the
    ``tsc_freq_khz`` some kernels export; ``cpu MHz`` of /proc/cpuinfo when no cpufreq
    driver varies the clock (it is then the kernel's own TSC calibration); the
    nominal "@ 2.60GHz" of an Intel model name (Intel TSCs tick at that rate).
    """
    cpu0 = Path("/sys/devices/system/cpu/cpu0")
    try:
        return int((cpu0 / "tsc_freq_khz").read_text().strip()) or None
    except (OSError, ValueError):
        pass
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    first = info.split("\n\n", 1)[0]
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", first, re.M)
    if mhz and not (cpu0 / "cpufreq").exists():
        return round(float(mhz.group(1)) * 1000) or None
    nominal = re.search(r"^model name\s*:.*Intel.*@\s*([\d.]+)GHz", first, re.M)
    if nominal:
        return round(float(nominal.group(1)) * 1_000_000)
    return None


def guest_tsc_khz(accel: str) -> int | None:
    """The TSC frequency to tell a guest under ``accel`` (KVM guests learn it from kvmclock)."""
    return host_tsc_khz() if accel == "tcg" else None


def choose(kernel: Kernel, qemu: str = machine.QEMU, deadline: float = PROBE_DEADLINE) -> AccelVerdict:
    """KVM if a probe boot under it reaches the kit init within ``deadline``, else TCG.

    Cached per host and kernel (see the module's docstring for which verdicts are final);
    concurrent callers, in this process or another, wait for one probe.
    """
    hit = cached(kernel)
    if _usable(hit):
        return hit
    why = precheck()
    if why:
        return AccelVerdict("tcg", why)  # cheap to re-check; not cached, so a fixed host is noticed
    config.home().mkdir(parents=True, exist_ok=True)
    with open(config.home() / ".accel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        hit = cached(kernel)
        if _usable(hit):
            return hit
        strikes = hit.strikes if hit is not None else 0
        # A re-probe after a miss gets more time: a busy host must not decide it twice.
        v = probe(kernel, qemu, deadline * (1 + strikes))
        v.session = config.SESSION_ID
        if not v.final:
            v.strikes = strikes + 1
            if v.strikes >= TIMEOUT_STRIKES:
                v.final = True
                v.reason += f" (the same in {v.strikes} sessions)"
        data = _load_cache()
        data[host_key(kernel)] = asdict(v)
        tmp = _cache_path().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, _cache_path())
        return v


def probe(kernel: Kernel, qemu: str = machine.QEMU, deadline: float = PROBE_DEADLINE) -> AccelVerdict:
    """Boot ``kernel`` under KVM; never takes longer than ``deadline`` (+ a kill)."""
    image = machine.boot_image(kernel.vmlinuz, kernel.vmlinux, qemubin.version(shutil.which(qemu) or qemu))
    cfg = machine.VMConfig(kernel=image, initrd=initramfs.base(kernel), accel="kvm", acpi=kernel.acpi,
                           machine="microvm" if kernel.supports_microvm() else "q35", memory_mib=256)
    cmd = machine.argv(cfg, qemu)
    cmd += ["-serial", "stdio"]  # no console socket in cfg: the probe reads QEMU's stdout
    kmod = _kvm_module() or "unknown module"
    t0 = time.monotonic()
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    except OSError as e:
        return AccelVerdict("tcg", f"could not start {qemu} for the KVM probe: {e}", time.time(), final=False)
    seen = b""
    try:
        while time.monotonic() - t0 < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(p.stdout.fileno(), 65536)
                seen = (seen + chunk)[-4096:]
                if MARK in seen:
                    return AccelVerdict("kvm", f"probe boot under KVM ({kmod}) reached init in "
                                          f"{time.monotonic() - t0:.1f} s", time.time(), time.monotonic() - t0)
                if not chunk and p.poll() is not None:
                    break
            elif p.poll() is not None:
                break
        if p.poll() is not None:
            err = p.stderr.read().decode(errors="replace").strip().splitlines()
            tail = err[-1] if err else f"exit {p.returncode}"
            return AccelVerdict("tcg", f"KVM ({kmod}) rejected: QEMU failed under -accel kvm: {tail}",
                           time.time(), time.monotonic() - t0)
        return AccelVerdict("tcg", f"KVM ({kmod}) rejected: a probe boot did not reach init within "
                              f"{deadline:g} s (the guest kernel hangs under this KVM, or the host was busy)",
                       time.time(), time.monotonic() - t0, final=False)
    finally:
        kill_group(p)
        for f in (p.stdout, p.stderr):
            f.close()
