"""What isolation each runtime really gives, measured from inside: ``kit.verify()``.

Each probe runs a small /bin/sh script in the busybox image under the runtime
and compares what it sees with what the host sees. The frame has one row per
(runtime, property) with the observed value, the host's value and a verdict.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from . import api, runtimes
from .errors import KitError

NAMESPACES = ("pid", "mnt", "uts", "ipc", "net", "user", "cgroup")

PROBE = r"""
for ns in pid mnt uts ipc net user cgroup; do echo "ns_$ns=$(readlink /proc/self/ns/$ns 2>/dev/null)"; done
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "pid1=$(tr '\0' ' ' < /proc/1/cmdline 2>/dev/null | cut -c1-60)"
echo "hostname=$(hostname)"
echo "kernel=$(uname -r)"
grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status | sed 's/:[[:space:]]*/=/'
echo "uid_map=$(tr -s ' ' < /proc/self/uid_map | head -1)"
if [ -n "$KIT_PROBE_RO" ]; then
  if touch /kit-ro-probe 2>/dev/null; then rm -f /kit-ro-probe; echo rootfs_writable=yes; else echo rootfs_writable=no; fi
fi
"""

def alloc(mb: int) -> list[str]:
    """Holds ``mb`` MB in a shell variable: memory only, no file left behind if it is killed."""
    return ["sh", "-c", f"x=$(head -c {mb * 1000000} /dev/zero | tr '\\0' a); echo ${{#x}}"]


ALLOC_100M = alloc(100)
#: A VM cannot boot in 32m: its limit is the guest's memory, so it gets more, and is asked for more.
VM_MEMORY, VM_ALLOC_MB = "128m", 300


def _parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def host_view() -> dict[str, str]:
    """The same facts, seen by this (host) process."""
    view = {f"ns_{ns}": _readlink(f"/proc/self/ns/{ns}") for ns in NAMESPACES}
    view["procs"] = str(sum(1 for p in os.listdir("/proc") if p.isdigit()))
    view["hostname"] = socket.gethostname()
    view["kernel"] = platform.release()
    status = Path("/proc/self/status").read_text()
    for key in ("CapEff", "Seccomp", "NoNewPrivs"):
        view[key] = next((ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith(key + ":")), "")
    return view


def _readlink(p: str) -> str:
    try:
        return os.readlink(p)
    except OSError:
        return ""


def _caps(hexmask: str) -> int:
    try:
        return bin(int(hexmask, 16)).count("1")
    except ValueError:
        return -1


def probe(runtime: str, image: str = "busybox", memory_check: bool = True, timeout: float = 180) -> list[dict]:
    """Rows describing the isolation ``runtime`` provides here."""
    host = host_view()
    inside = _parse(api.run(image, ["sh", "-c", PROBE], runtime=runtime, timeout=timeout).stdout)
    bare = not runtimes.get(runtime).uses_image
    # The bare process shares the host's root: never write there.
    ro = {} if bare else _parse(api.run(image, ["sh", "-c", PROBE], runtime=runtime, timeout=timeout,
                                        read_only=True, env={"KIT_PROBE_RO": "1"}).stdout)
    rows = []

    def row(prop, observed, host_value, isolated, note=""):
        rows.append({"runtime": runtime, "kind": runtimes.get(runtime).kind, "property": prop,
                     "observed": observed, "host": host_value, "isolated": isolated, "note": note})

    separate_kernel = runtimes.get(runtime).kind == "vm"
    for ns in NAMESPACES:
        seen, mine = inside.get(f"ns_{ns}", ""), host[f"ns_{ns}"]
        own = separate_kernel or (bool(seen) and seen != mine)
        row(f"own {ns} namespace", seen or "(unreadable)", mine, own,
            "a separate kernel: every namespace is its own" if separate_kernel else "")
    # A guest kernel's /proc lists only the guest's own tasks (its kernel threads included,
    # so a count says nothing there); a container's lists the host's unless it has its own PID namespace.
    row("host processes invisible", inside.get("procs", "?") + " visible", host["procs"] + " on host",
        separate_kernel or (inside.get("procs", "").isdigit() and int(inside["procs"]) < int(host["procs"]) // 2),
        f"PID 1 inside: {inside.get('pid1', '?')}")
    row("hostname independent", inside.get("hostname", ""), host["hostname"],
        inside.get("hostname", "") != host["hostname"])
    row("separate kernel", inside.get("kernel", ""), host["kernel"], inside.get("kernel", "") != host["kernel"],
        "gVisor's Sentry answers system calls itself" if runtime == "runsc" else "")
    cap_in, cap_host = _caps(inside.get("CapEff", "")), _caps(host["CapEff"])
    row("capabilities reduced", f"{cap_in} effective", f"{cap_host} effective", 0 <= cap_in < cap_host)
    seccomp = {"0": "off", "1": "strict", "2": "filter"}
    row("seccomp filter", seccomp.get(inside.get("Seccomp", ""), inside.get("Seccomp", "?")),
        seccomp.get(host["Seccomp"], host["Seccomp"]), inside.get("Seccomp") == "2")
    row("root filesystem read-only when asked",
        "the host's own" if bare else ("read-only" if ro.get("rootfs_writable") == "no" else "writable"),
        "-", ro.get("rootfs_writable") == "no", "not probed: a bare process has no root of its own" if bare else "")
    if memory_check:
        limit, mb = (VM_MEMORY, VM_ALLOC_MB) if separate_kernel else ("32m", 100)
        r = api.run(image, alloc(mb), runtime=runtime, memory=limit, timeout=timeout)
        row("memory limit enforced" if separate_kernel else "memory limit enforced (32m, 100 MB asked)",
            "killed (OOM)" if r.oom_killed else f"exit {r.exit_code}", "-", r.oom_killed or r.exit_code != 0,
            f"a {limit} guest asked for {mb} MB: the guest kernel's own OOM killer answers" if separate_kernel
            else ("" if r.oom_killed else "the allocation failed or was killed without an OOM count"))
    return rows


def verify(runtime: str | list[str] | None = None, memory_check: bool = True):
    """The isolation matrix: a DataFrame of (runtime, property, observed, host, isolated).

    Args:
        runtime: a runtime name, a list, or None for every runtime available here.
    """
    import pandas as pd

    names = [runtime] if isinstance(runtime, str) else (runtime or list(
        runtimes.available().query("available").name))
    rows = []
    for name in names:
        try:
            rows += probe(name, memory_check=memory_check)
        except KitError as e:
            rows.append({"runtime": name, "kind": runtimes.get(name).kind, "property": "probe", "observed": str(e),
                         "host": "", "isolated": None, "note": "probe failed"})
    return pd.DataFrame(rows, columns=["runtime", "kind", "property", "observed", "host", "isolated", "note"])


def matrix(df):
    """``verify()``'s frame pivoted: properties down, runtimes across, ✓/✗."""
    return df.pivot_table(index="property", columns="runtime", values="isolated", aggfunc="first",
                          sort=False).replace({True: "✓", False: "✗"})
