"""What isolation each runtime really gives, measured from inside: ``kit.verify()``.

Each probe runs a small /bin/sh script in the busybox image under the runtime
and compares what it sees with what the host sees. The frame has one row per
(runtime, property) with the observed value, the host's value and a verdict:
``isolated`` is True, False, or None when it could not be observed from inside
(the note says why); :func:`matrix` shows ✓, ✗ and ?.

The module itself is callable: ``kit.verify()`` is :func:`verify`.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import types
from pathlib import Path

from . import api, runtimes
from .errors import KitError, LimitsUnavailable

NAMESPACES = ("pid", "mnt", "uts", "ipc", "net", "user", "cgroup")

PROBE = r"""
for ns in pid mnt uts ipc net user cgroup; do echo "ns_$ns=$(readlink /proc/self/ns/$ns 2>/dev/null)"; done
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "pid1=$(tr '\0' ' ' < /proc/1/cmdline 2>/dev/null | cut -c1-60)"
echo "hostname=$(hostname)"
echo "kernel=$(uname -r)"
grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status | sed 's/:[[:space:]]*/=/'
echo "uid_map=$(tr -s ' ' < /proc/self/uid_map | head -1)"
echo "root_mount=$(grep ' / / ' /proc/self/mountinfo | head -1 | sed 's/.* - //' | cut -d' ' -f1,2)"
echo "netdevs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')"
if [ -n "$KIT_PROBE_RO" ]; then
  if touch /kit-ro-probe 2>/dev/null; then rm -f /kit-ro-probe; echo rootfs_writable=yes; else echo rootfs_writable=no; fi
fi
"""

def alloc(mb: int) -> list[str]:
    """Holds ``mb`` MB in a shell variable: memory only, no file left behind if it is killed."""
    return ["sh", "-c", f"x=$(head -c {mb * 1000000} /dev/zero | tr '\\0' a); echo ${{#x}}"]


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
    view["root_mount"] = next((ln.split(" - ", 1)[1].split()[:2] for ln in Path("/proc/self/mountinfo")
                               .read_text().splitlines() if ln.split()[3:5] == ["/", "/"]), [])
    view["root_mount"] = " ".join(view["root_mount"])
    view["netdevs"] = " ".join(sorted(ln.split(":", 1)[0].strip() for ln in
                                      Path("/proc/net/dev").read_text().splitlines()[2:]))
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


def own_namespace(ns: str, inside: dict, host: dict, kernel: str) -> tuple[bool | None, str]:
    """Whether the instance has its own ``ns`` namespace, and on what evidence.

    ``kernel`` is ``"host"`` (a Linux container or process: the namespace links compare with
    the host's), ``"vm"`` (a kernel of its own: every namespace is its own) or ``"sentry"``
    (gVisor: /proc/self/ns comes from the Sentry's own numbering, or is missing, so nothing
    compares with the host's links; what the instance sees instead is the evidence).
    """
    seen, mine = inside.get(f"ns_{ns}", ""), host[f"ns_{ns}"]
    if kernel == "vm":
        return True, "a separate kernel: every namespace is its own"
    if kernel == "host":
        if not seen:
            return None, f"not observable: /proc/self/ns/{ns} is not readable inside"
        return seen != mine, ""
    sentry = "the Sentry's own /proc/self/ns (its numbering, not the host's)" if seen else \
        f"no /proc/self/ns/{ns} in the Sentry's /proc"
    if ns == "pid":
        own = _procs_hidden(inside, host)
        return own, f"{sentry}; {inside.get('procs', '?')} processes visible, {host['procs']} on the host"
    if ns == "uts":
        return inside.get("hostname", "") != host["hostname"], f"{sentry}; a hostname of its own"
    if ns == "mnt":
        root = inside.get("root_mount", "")
        return (root != host["root_mount"] if root else None), f"{sentry}; root mounted from {root or '?'!s}"
    if ns == "net":
        missing = set(host["netdevs"].split()) - set(inside.get("netdevs", "").split())
        if not missing:
            return None, f"not observable: {sentry}, and every host interface is visible or the host has only lo"
        return True, f"{sentry}; interfaces {inside.get('netdevs', '').strip() or 'none'}, the host's " \
                     f"{' '.join(sorted(missing))} not among them"
    return None, f"not observable: {sentry}, and nothing else inside tells the {ns} namespace apart"


def _procs_hidden(inside: dict, host: dict) -> bool:
    procs = inside.get("procs", "")
    return procs.isdigit() and int(procs) < int(host["procs"]) // 2


def probe(runtime: str, image: str = "busybox", memory_check: bool = True, timeout: float = 180) -> list[dict]:
    """Rows describing the isolation ``runtime`` provides here."""
    rt = runtimes.get(runtime)
    host = host_view()
    inside = _parse(api.run(image, ["sh", "-c", PROBE], runtime=runtime, timeout=timeout).stdout)
    bare = not rt.uses_image
    # The bare process shares the host's root: never write there.
    ro = {} if bare else _parse(api.run(image, ["sh", "-c", PROBE], runtime=runtime, timeout=timeout,
                                        read_only=True, env={"KIT_PROBE_RO": "1"}).stdout)
    rows = []

    def row(prop, observed, host_value, isolated, note=""):
        rows.append({"runtime": runtime, "kind": rt.kind, "property": prop,
                     "observed": observed, "host": host_value, "isolated": isolated, "note": note})

    other_kernel = bool(inside.get("kernel")) and inside["kernel"] != host["kernel"]
    kernel = "vm" if rt.kind == "vm" else ("sentry" if other_kernel else "host")
    for ns in NAMESPACES:
        own, note = own_namespace(ns, inside, host, kernel)
        row(f"own {ns} namespace", inside.get(f"ns_{ns}") or "(unreadable)", host[f"ns_{ns}"], own, note)
    # A guest kernel's /proc lists only the guest's own tasks (its kernel threads included,
    # so a count says nothing there); a container's lists the host's unless it has its own PID namespace.
    row("host processes invisible", inside.get("procs", "?") + " visible", host["procs"] + " on host",
        kernel == "vm" or _procs_hidden(inside, host), f"PID 1 inside: {inside.get('pid1', '?')}")
    row("hostname independent", inside.get("hostname", ""), host["hostname"],
        inside.get("hostname", "") != host["hostname"])
    row("separate kernel", inside.get("kernel", ""), host["kernel"], other_kernel,
        "gVisor's Sentry answers system calls itself" if kernel == "sentry" else "")
    cap_in, cap_host = _caps(inside.get("CapEff", "")), _caps(host["CapEff"])
    row("capabilities reduced", f"{cap_in} effective", f"{cap_host} effective", 0 <= cap_in < cap_host)
    seccomp = {"0": "off", "1": "strict", "2": "filter"}
    row("seccomp filter", seccomp.get(inside.get("Seccomp", ""), inside.get("Seccomp", "?")),
        seccomp.get(host["Seccomp"], host["Seccomp"]), inside.get("Seccomp") == "2",
        "runsc loads the OCI filter only with --oci-seccomp; the Sentry answers every call itself"
        if kernel == "sentry" else "")
    writable = ro.get("rootfs_writable")
    row("root filesystem read-only when asked",
        "the host's own" if bare else {"no": "read-only", "yes": "writable"}.get(writable, "(no answer)"), "-",
        None if bare or writable is None else writable == "no",
        "not observable: a bare process has no root of its own" if bare else "")
    if memory_check:
        row(*_memory_row(runtime, image, timeout, kernel == "vm"))
    return rows


#: One property name for every runtime: the verdict is an OOM kill the runtime counted.
MEMORY_ROW = "memory limit enforced (OOM kill)"


def _memory_row(runtime: str, image: str, timeout: float, vm: bool) -> tuple:
    """Ask for more memory than the limit allows; only an OOM kill counts as enforcement.

    A non-zero exit alone proves nothing (the command may fail for another reason). Every
    runtime reports OOM kills its own way (the kit's cgroup, Docker's State.OOMKilled, the
    guest kernel's oom_kill counter for a VM) into ``RunResult.oom_killed``.
    """
    limit, mb = (VM_MEMORY, VM_ALLOC_MB) if vm else ("32m", 100)
    try:
        r = api.run(image, alloc(mb), runtime=runtime, memory=limit, timeout=timeout)
    except LimitsUnavailable as e:  # an ordinary user without a delegated cgroup (Runtime.check_limits)
        return MEMORY_ROW, "refused: no limit for this user here", limit, None, str(e)
    observed = "killed (OOM)" if r.oom_killed else f"exit {r.exit_code}, no OOM kill"
    note = f"{mb} MB asked under a {limit} limit"
    if vm:
        note += ": the guest's memory is the limit, and the guest kernel's OOM killer answers"
    return MEMORY_ROW, observed, limit, r.oom_killed, note


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


#: How :func:`matrix` shows a verdict: isolated, not isolated, not observable from inside.
SYMBOLS = {True: "✓", False: "✗", None: "?"}


def matrix(df):
    """``verify()``'s frame pivoted: properties down, runtimes across, ✓ / ✗ / ? (not observable).

    A property not probed for a runtime (e.g. no memory check) is an empty cell.
    """
    sym = df.assign(symbol=[SYMBOLS[None if v is None or v != v else bool(v)] for v in df.isolated])
    m = sym.pivot(index="property", columns="runtime", values="symbol")
    return m.reindex(index=list(dict.fromkeys(df.property)), columns=list(dict.fromkeys(df.runtime))).fillna("")


class _CallableModule(types.ModuleType):
    """``kit.verify`` is this module, and ``kit.verify(...)`` is :func:`verify` (as documented)."""

    def __call__(self, runtime=None, memory_check: bool = True):
        return verify(runtime, memory_check=memory_check)


sys.modules[__name__].__class__ = _CallableModule
