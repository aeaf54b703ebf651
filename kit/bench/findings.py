"""The reference findings, checked against a study's own numbers.

Felter, Ferreira, Rajamony and Rubio, "An Updated Performance Comparison of Virtual Machines and
Linux Containers" (IBM Research, ISPASS 2015) found that containers match native on CPU and
memory, that VMs add latency to I/O and network, that Docker's NAT costs latency, and that a
volume instead of the layered filesystem matters for MySQL (and fio). gVisor's performance guide
adds the cost of a system call (about 1.9 µs in runc against about 38 µs in runsc with ptrace).

:func:`compute` says, for each, ``reproduced``, ``not reproduced`` or ``not measured`` on this
machine, and why, from the frame (ratios to native with their bootstrap 95 % intervals) and the
environment record (the VM accelerator, the runtimes left out and why).

>>> compute(pd.DataFrame(columns=["part"]), {})["verdict"].unique().tolist()
['not measured']
"""

from __future__ import annotations

import pandas as pd

from .loadpart import LATENCY, relative
from .stats import ratio_ci, measured

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"

#: "Matches native": the median ratio to the bare process within this band (the sanity tests' band).
MATCH = (0.8, 1.25)

#: "Several times slower per system call" (the issue's sanity bound; gVisor's guide reports ~20x).
SYSCALL_FACTOR = 3.0

FINDINGS = {
    "cpu_memory": "Containers match native on CPU and memory (Felter et al. 2015)",
    "vm_latency": "VMs add latency to I/O and network (Felter et al. 2015)",
    "docker_nat": "Docker's NAT costs latency (Felter et al. 2015)",
    "volume": "A volume instead of the layered filesystem matters for MySQL and fio (Felter et al. 2015)",
    "syscall": "gVisor (runsc, ptrace) makes each system call several times slower than runc (gVisor's guide: "
               "~1.9 µs against ~38 µs)",
}


def compute(df: pd.DataFrame, environment: dict, skipped: dict | None = None) -> pd.DataFrame:
    """One row per finding: ``finding``, ``verdict`` (reproduced, not reproduced, not measured), ``why``.

    Args:
        df: a study's tidy frame (its ``load`` rows are used).
        environment: the study's environment record (``vm_accel``, ``vm_accel_reason``, ``runtimes``).
        skipped: runtimes the study left out, and why.
    """
    load = df[df["part"] == "load"] if "part" in df.columns and len(df) else pd.DataFrame()
    skipped = skipped or {}
    out = []
    for key, check in (("cpu_memory", _cpu_memory), ("vm_latency", _vm_latency), ("docker_nat", _docker_nat),
                       ("volume", _volume), ("syscall", _syscall)):
        verdict, why = check(load, environment, skipped) if len(load) else (NOT_MEASURED, "no load workload was run")
        out.append({"finding": FINDINGS[key], "key": key, "verdict": verdict, "why": why})
    return pd.DataFrame(out)


def _fmt(r) -> str:
    return f"{r.runtime} {r.ratio:.2f}× ({r.ratio_low:.2f}–{r.ratio_high:.2f})"


def _absent(what: str, runtime_kind: str, skipped: dict) -> str:
    why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return f"no {runtime_kind} runtime measured {what}" + (f" (left out: {why})" if why else "")


def _cpu_memory(load, env, skipped):
    rel = relative(load, "throughput")
    if rel.empty:
        return NOT_MEASURED, "neither cpu nor memory was run against the bare process"
    rel = rel[rel["workload"].isin(["cpu", "memory"]) & (rel["kind"] == "container")]
    if rel.empty:
        return NOT_MEASURED, _absent("cpu or memory", "container", skipped)
    off = rel[(rel["ratio"] < MATCH[0]) | (rel["ratio"] > MATCH[1])]
    listed = "; ".join(f"{w}: " + ", ".join(_fmt(r) for r in g.itertuples()) for w, g in rel.groupby("workload"))
    listed += "".join(f"; {w} not measured" for w in ("cpu", "memory") if w not in set(rel["workload"]))
    band = f"{MATCH[0]}–{MATCH[1]}× of native"
    if off.empty:
        return REPRODUCED, f"every container's throughput is within {band} (median ratio, 95 % CI): {listed}"
    return NOT_REPRODUCED, (f"{', '.join(sorted(set(off['runtime'] + ' ' + off['workload'])))} not within {band}: "
                            f"{listed}")


def _latency_rel(load, workloads):
    """Latency ratios to native of ``workloads``, the most telling percentile each has (loads measured
    directly inside the instance's network namespace, components ``direct/...``, left out)."""
    parts = []
    through = load[~load["component"].str.startswith("direct/")]  # through the published port, as a client sees it
    for w in workloads:
        for metric in LATENCY:
            rel = relative(through[through["workload"] == w], metric)
            if len(rel):
                parts.append(rel.assign(metric=metric))
                break
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _accel_note(env) -> str:
    accel = env.get("vm_accel") or "unknown"
    if accel == "kvm":
        return "VMs ran with KVM"
    reason = (env.get("vm_accel_reason") or "").split(": ")[0][:80]
    return (f"VMs ran under {accel.upper()} (software emulation{': ' + reason if reason else ''}), which "
            f"inflates every VM figure far beyond what KVM adds")


def _vm_latency(load, env, skipped):
    groups = {"I/O": ["fileio", "fileio-volume"], "network": ["network", "redis", "mariadb"]}
    seen, higher, lines = [], [], []
    for label, ws in groups.items():
        rel = _latency_rel(load, ws)
        rel = rel[rel["kind"] == "vm"] if len(rel) else rel
        if rel.empty:
            continue
        seen.append(label)
        up = (rel["ratio_low"] > 1).all()
        higher.append(up)
        lines.append(f"{label}: " + ", ".join(f"{r.workload}/{r.component} {r.metric} " + _fmt(r)
                                              for r in rel.itertuples()))
    if not seen:
        return NOT_MEASURED, _absent("I/O or network latency", "VM", skipped) + "; " + _accel_note(env)
    missing = [g for g in groups if g not in seen]
    text = "; ".join(lines) + f"; {_accel_note(env)}"
    if missing:
        text += f"; {' and '.join(missing)} not measured in a VM"
    return (REPRODUCED if all(higher) else NOT_REPRODUCED), "VM latency ÷ native: " + text


def _docker_nat(load, env, skipped):
    rel = _latency_rel(load, ["network", "redis", "mariadb"])
    paths = _forwarders(load)
    kit_path = ("the kit's own forwarder (runc, LXC, runsc) copies bytes in user space from 127.0.0.1 and has no "
                "NAT")
    if rel.empty or "docker" not in set(rel["runtime"]):
        return NOT_MEASURED, (_absent("a network load", "Docker", skipped) + f"; {kit_path}"
                              + (f" ({paths})" if paths else ""))
    d = rel[rel["runtime"] == "docker"]
    up = (d["ratio_low"] > 1).all()
    text = (", ".join(f"{r.workload}/{r.component} {r.metric} " + _fmt(r) for r in d.itertuples()) +
            "; Docker's port on 127.0.0.1 is reached through docker-proxy (a user-space copy; a connection from "
            f"the host's loopback is not NATed), so this is docker-proxy's cost, not NAT's; {kit_path}"
            + (f" ({paths})" if paths else ""))
    return (REPRODUCED if up else NOT_REPRODUCED), "Docker latency ÷ native: " + text


def _forwarders(load) -> str:
    """Host CPU per operation of what forwards each published port, per load and operation."""
    fwd = measured(load[(load["metric"] == "cpu_per_op") & load["component"].str.startswith("forwarder/")])
    out = []
    for (w, comp), g in fwd.groupby(["workload", "component"], sort=False):
        med = g.groupby("runtime")["value"].median()
        per = comp.split("/", 1)[1]
        out.append(f"{w}, CPU per {per}: " + ", ".join(
            f"{'docker-proxy' if rt == 'docker' else rt + ' (kit forwarder)'} {v:.1f} µs" for rt, v in med.items()))
    return "; ".join(out)


def _volume(load, env, skipped):
    # VMs apart: their volume is a 9p share through QEMU, another question than the layered filesystem's
    m = measured(load[(load["metric"] == "throughput") & (load["kind"] != "vm")])
    lines, faster, seen = [], [], False
    for layered, vol in (("fileio", "fileio-volume"), ("mariadb", "mariadb-volume")):
        for (rt, comp), g in m[m["workload"] == vol].groupby(["runtime", "component"]):
            base = m[(m["workload"] == layered) & (m["runtime"] == rt) & (m["component"] == comp)]["value"]
            if base.empty:
                continue
            seen = True
            ratio = g["value"].median() / base.median()
            lo, hi = ratio_ci(g["value"].to_numpy(), base.to_numpy())
            faster.append(lo > 1)
            lines.append(f"{rt} {vol}/{comp} {ratio:.2f}× ({lo:.2f}–{hi:.2f})")
    mysql = ("MySQL: not measured, the mariadb load keeps its data on the instance's own writable layer"
             if "mariadb-volume" not in set(m["workload"]) else "")
    if not seen:
        return NOT_MEASURED, ("fileio was not run both on the writable layer and on a volume (workloads fileio and "
                              "fileio-volume) in the same runtime" + (f"; {mysql}" if mysql else ""))
    text = "throughput on a volume ÷ on the writable layer: " + ", ".join(lines)
    if mysql:
        text += f"; {mysql}"
    if any(faster):
        return REPRODUCED, text
    return NOT_REPRODUCED, (text + "; the kit's writable layer is an overlay on the host's own filesystem "
                                   "(no AUFS, and fio's 32 MiB file stays in the page cache), so the layer costs little")


def _syscall(load, env, skipped):
    m = measured(load[(load["workload"] == "syscall") & (load["metric"] == "op_time")])
    have = set(m["runtime"])
    if not {"runsc", "runc"} <= have:
        missing = sorted({"runsc", "runc"} - have)
        return NOT_MEASURED, f"the syscall load did not run in {' and '.join(missing)}" + (
            f" (left out: {'; '.join(f'{k}: {v}' for k, v in skipped.items() if k in missing)})"
            if any(k in missing for k in skipped) else "")
    a, b = m[m["runtime"] == "runsc"]["value"], m[m["runtime"] == "runc"]["value"]
    ratio = a.median() / b.median()
    lo, hi = ratio_ci(a.to_numpy(), b.to_numpy())
    text = (f"runsc {a.median():.0f} ns against runc {b.median():.0f} ns per system call: {ratio:.1f}× "
            f"({lo:.1f}–{hi:.1f}); reproduced means at least {SYSCALL_FACTOR:g}×")
    return (REPRODUCED if ratio >= SYSCALL_FACTOR else NOT_REPRODUCED), text
