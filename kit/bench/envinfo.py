"""The environment a result was measured in, saved with every result set."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psutil

from .. import cgroups, runtimes, userns
from ..version import __version__


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def git_commit() -> str:
    """The kit checkout's commit (with ``-dirty`` when it has local changes), or '' outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def runtimes_table() -> list[dict]:
    """kit.runtimes.available() as records (name, kind, available, version, reason, details)."""
    return runtimes.available().fillna("").to_dict("records")


def vm_accel() -> tuple[str, str]:
    """The VM accelerator and why, as the VM runtime reports it ('' and why not when none is usable)."""
    for name in runtimes.names():
        rt = runtimes.get(name)
        if rt.kind == "vm":
            a = rt.availability()
            if a.available:
                return str(a.info.get("accel", "")), str(a.info.get("accel_reason", ""))
            return "", a.reason
    return "", "no VM runtime"


def collect() -> dict:
    """Host, kernel, CPU, memory, cgroups, runtimes and their versions, VM accelerator, kit version, date."""
    rts = runtimes_table()
    accel, why = vm_accel()
    import numpy
    import pandas

    return {
        "host": platform.node(),
        "os": os_name(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_total": psutil.virtual_memory().total,
        "cgroup": cgroups.describe(),
        # "rootless" when an ordinary user measured, and per runtime whether limits were enforced.
        "privileges": userns.mode(),
        "user": userns.user(),
        "limits": {r["name"]: runtimes.get(r["name"]).enforced_limits() for r in rts if r["available"]},
        "virtualised": _read("/sys/class/dmi/id/sys_vendor").strip() or _hypervisor_flag(),
        "runtimes": rts,
        "vm_accel": accel,
        "vm_accel_reason": why,
        "kit_version": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "libraries": {"pandas": pandas.__version__, "numpy": numpy.__version__, "psutil": psutil.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _hypervisor_flag() -> str:
    return "hypervisor (cpuinfo flag)" if " hypervisor" in _read("/proc/cpuinfo") else ""
