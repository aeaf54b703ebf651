"""The reference findings, checked against a study's own numbers.

The findings are claims from elsewhere, each shown with its source (:data:`SOURCES`): Felter,
Ferreira, Rajamony and Rubio, "An Updated Performance Comparison of Virtual Machines and Linux
Containers" (IBM Research Report RC25482, 2014; ISPASS 2015) found that containers match native
on CPU and memory, that VMs add latency to I/O and network, that Docker's NAT costs latency, and
that a volume instead of the layered filesystem matters for MySQL (and fio). gVisor's
performance guide gives the cost of a system call in runc and in runsc with ptrace (its figures
are a reference, :data:`REFERENCE_SYSCALL_NS`, never a measurement of this machine).

:func:`compute` says, for each, ``reproduced``, ``not reproduced``, ``not enough runs`` or ``not
measured`` here, and why. Every sentence of ``why`` is made from the study's frame and its
environment record: each comparison with native (or with the layered filesystem, or with runc)
is decided by :func:`kit.bench.compare.difference`, the rule :func:`kit.bench.compare.compare`
uses too (a bootstrap interval of the ratio of medians and a rank test that must agree), so a
load run for 3 rounds against 3 says ``not enough runs`` instead of a verdict the noise could
have given.

>>> compute(pd.DataFrame(columns=["part"]), {})["verdict"].unique().tolist()
['not measured']
"""

from __future__ import annotations

import pandas as pd

from .compare import NOT_ENOUGH, difference, runs_needed
from .loadpart import LATENCY
from .stats import measured

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"

#: "Matches native": the median ratio to the bare process within this band (the sanity tests' band).
MATCH = (0.8, 1.25)

#: "Several times slower per system call": the bound this study applies to runsc / runc.
SYSCALL_FACTOR = 3.0

#: Where each reference claim comes from.
SOURCES = {
    "felter": "Felter et al., An Updated Performance Comparison of Virtual Machines and Linux Containers, IBM "
              "Research Report RC25482 (2014), https://dominoweb.draco.res.ibm.com/reports/rc25482.pdf",
    "gvisor": "gVisor's performance guide, https://gvisor.dev/docs/architecture_guide/performance/ (data: "
              "https://github.com/google/gvisor/blob/ff463a60a9260efe23fe31757251be115ddaacb3/website/"
              "performance/syscall.csv)",
}

#: gVisor's published time of one system call (ns), by runtime: a reference, not measured here.
REFERENCE_SYSCALL_NS = {"runc": 1939.0, "runsc (ptrace)": 38219.0}

FINDINGS = {
    "cpu_memory": ("Containers match native on CPU and memory (Felter et al. 2015)", "felter"),
    "vm_latency": ("VMs add latency to I/O and network (Felter et al. 2015)", "felter"),
    "docker_nat": ("Docker's NAT costs latency (Felter et al. 2015)", "felter"),
    "volume": ("A volume instead of the layered filesystem matters for MySQL and fio (Felter et al. 2015)", "felter"),
    "syscall": ("gVisor (runsc, ptrace) makes each system call several times slower than runc (gVisor's "
                "performance guide, a reference: {runc:.1f} µs against {runsc:.1f} µs)"
                .format(runc=REFERENCE_SYSCALL_NS["runc"] / 1e3, runsc=REFERENCE_SYSCALL_NS["runsc (ptrace)"] / 1e3),
                "gvisor"),
}


def compute(df: pd.DataFrame, environment: dict, skipped: dict | None = None, level: float = 0.95,
            seed: int = 0) -> pd.DataFrame:
    """One row per finding: ``finding`` (the reference claim), ``source``, ``key``, ``verdict``
    (reproduced, not reproduced, not enough runs, not measured) and ``why`` (from this run).

    Args:
        df: a study's tidy frame (its ``load`` rows are used).
        environment: the study's environment record (``vm_accel``, ``vm_accel_reason``).
        skipped: runtimes the study left out, and why.
        level: confidence level of every comparison (:func:`kit.bench.compare.difference`).
        seed: seeds the bootstrap.
    """
    load = df[df["part"] == "load"] if "part" in df.columns and len(df) else pd.DataFrame()
    load = measured(load) if len(load) else load  # warmups and failed runs left out
    skipped = skipped or {}
    out = []
    for key, check in (("cpu_memory", _cpu_memory), ("vm_latency", _vm_latency), ("docker_nat", _docker_nat),
                       ("volume", _volume), ("syscall", _syscall)):
        verdict, why = check(load, environment, skipped, level, seed) if len(load) else \
            (NOT_MEASURED, "no load workload was run")
        claim, source = FINDINGS[key]
        out.append({"finding": claim, "source": SOURCES[source], "key": key, "verdict": verdict, "why": why})
    return pd.DataFrame(out)


def against(load: pd.DataFrame, metric: str, workloads, kinds=None, baseline: str = "process", level=0.95,
            seed=0) -> pd.DataFrame:
    """Each runtime's ``metric`` against ``baseline``'s, per workload and component, by the shared rule
    (:func:`kit.bench.compare.difference`): one row per (workload, component, runtime) with its kind."""
    data = load[(load["metric"] == metric) & load["workload"].isin(list(workloads))]
    rows = []
    for (w, comp), g in data.groupby(["workload", "component"], sort=False):
        ref = g[g["runtime"] == baseline]["value"].to_numpy()
        if ref.size == 0:
            continue
        for rt, r in g[g["runtime"] != baseline].groupby("runtime", sort=False):
            kind = r["kind"].iloc[0]
            if kinds is None or kind in kinds:
                rows.append({"workload": w, "component": comp, "runtime": rt, "kind": kind, "metric": metric,
                             **difference(r["value"].to_numpy(), ref, level=level, seed=seed)})
    return pd.DataFrame(rows)


def _fmt(r) -> str:
    if r.verdict == NOT_ENOUGH:
        return f"{r.runtime} {r.ratio:.2f}× ({r.n} against {r.n_ref} runs)"
    return f"{r.runtime} {r.ratio:.2f}× ({r.ratio_low:.2f}–{r.ratio_high:.2f}, p {r.p_value:.2g})"


def _not_enough(rel: pd.DataFrame, level: float) -> str:
    few = rel[rel["verdict"] == NOT_ENOUGH]
    sizes = ", ".join(sorted({f"{r.n} against {r.n_ref}" for r in few.itertuples()}))
    return (f"not enough runs to tell a difference from the noise ({sizes}; at {level:.0%} the rank test needs at "
            f"least {runs_needed(level)} against {runs_needed(level)})")


def _all_higher(rel: pd.DataFrame, text: str, level: float) -> tuple[str, str]:
    """Reproduced when every comparison is higher by the rule; not reproduced as soon as one is not
    (lower or within noise); otherwise not enough runs."""
    decided = rel[rel["verdict"] != NOT_ENOUGH]
    if (decided["verdict"] != "higher").any():
        return NOT_REPRODUCED, text
    if len(decided) < len(rel):
        return NOT_ENOUGH, f"{text}; {_not_enough(rel, level)}"
    return REPRODUCED, text


def _absent(what: str, runtime_kind: str, skipped: dict) -> str:
    why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return f"no {runtime_kind} runtime measured {what}" + (f" (left out: {why})" if why else "")


def _cpu_memory(load, env, skipped, level, seed):
    rel = against(load, "throughput", ["cpu", "memory"], kinds=["container"], level=level, seed=seed)
    if rel.empty:
        if not len(against(load, "throughput", ["cpu", "memory"], level=level, seed=seed)):
            return NOT_MEASURED, "neither cpu nor memory was run against the bare process"
        return NOT_MEASURED, _absent("cpu or memory", "container", skipped)
    listed = "; ".join(f"{w}: " + ", ".join(_fmt(r) for r in g.itertuples()) for w, g in rel.groupby("workload"))
    listed += "".join(f"; {w} not measured" for w in ("cpu", "memory") if w not in set(rel["workload"]))
    band = f"{MATCH[0]}–{MATCH[1]}× of native"
    outside = (rel["ratio"] < MATCH[0]) | (rel["ratio"] > MATCH[1])
    off = rel[outside & rel["verdict"].isin(["higher", "lower"])]
    if len(off):
        return NOT_REPRODUCED, (f"{', '.join(sorted(set(off['runtime'] + ' ' + off['workload'])))} not within "
                                f"{band}, beyond the noise: {listed}")
    if (rel["verdict"] == NOT_ENOUGH).any():
        return NOT_ENOUGH, f"{listed}; {_not_enough(rel, level)}"
    return REPRODUCED, (f"every container's throughput is within {band}, or not told apart from native beyond the "
                        f"noise (median ratio, {level:.0%} interval, rank test): {listed}")


def _latency(load, workloads, kinds, level, seed):
    """Latency ratios to native of ``workloads``, the most telling percentile each has (loads measured
    directly inside the instance's network namespace, components ``direct/...``, left out)."""
    through = load[~load["component"].str.startswith("direct/")]  # through the published port, as a client sees it
    parts = []
    for w in workloads:
        for metric in LATENCY:
            rel = against(through, metric, [w], level=level, seed=seed)
            if len(rel):
                parts.append(rel[rel["kind"].isin(kinds)] if kinds else rel)
                break
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _accel_note(env) -> str:
    accel = env.get("vm_accel") or "unrecorded"
    reason = (env.get("vm_accel_reason") or "").split(": ")[0][:80]
    return f"VMs ran with accelerator {accel}" + (f" ({reason})" if reason else "")


def _vm_latency(load, env, skipped, level, seed):
    groups = {"I/O": ["fileio", "fileio-volume"], "network": ["network", "redis", "mariadb"]}
    seen, rels, lines = [], [], []
    for label, ws in groups.items():
        rel = _latency(load, ws, ["vm"], level, seed)
        if rel.empty:
            continue
        seen.append(label)
        rels.append(rel)
        lines.append(f"{label}: " + ", ".join(f"{r.workload}/{r.component} {r.metric} " + _fmt(r)
                                              for r in rel.itertuples()))
    if not seen:
        return NOT_MEASURED, _absent("I/O or network latency", "VM", skipped) + "; " + _accel_note(env)
    text = "VM latency ÷ native: " + "; ".join(lines) + f"; {_accel_note(env)}"
    missing = [g for g in groups if g not in seen]
    if missing:
        text += f"; {' and '.join(missing)} not measured in a VM"
    return _all_higher(pd.concat(rels, ignore_index=True), text, level)


def _docker_nat(load, env, skipped, level, seed):
    rel = _latency(load, ["network", "redis", "mariadb"], None, level, seed)
    paths = _forwarders(load)
    if rel.empty or "docker" not in set(rel["runtime"]):
        return NOT_MEASURED, _absent("a network load", "Docker", skipped) + (f"; {paths}" if paths else "")
    d = rel[rel["runtime"] == "docker"]
    text = "Docker latency ÷ native: " + ", ".join(f"{r.workload}/{r.component} {r.metric} " + _fmt(r)
                                                   for r in d.itertuples())
    if paths:
        text += f"; {paths}"
    if _measured_forwarder(load, "docker"):
        # A forwarding process's CPU was measured for Docker's published port during these loads: the
        # connections went through that process, so no NAT was on the measured path.
        return NOT_MEASURED, ("NAT was not on the measured path: a forwarding process carried the connections to "
                              "Docker's published port (its CPU was measured); " + text)
    return _all_higher(d, text, level)


def _measured_forwarder(load, runtime: str) -> bool:
    fwd = load[(load["metric"] == "cpu_per_op") & load["component"].str.startswith("forwarder/")
               & (load["runtime"] == runtime)]
    return bool(len(fwd)) and bool((fwd["value"] > 0).any())


def _forwarders(load) -> str:
    """Host CPU per operation of what forwards each published port, per load and operation."""
    fwd = load[(load["metric"] == "cpu_per_op") & load["component"].str.startswith("forwarder/")]
    out = []
    for (w, comp), g in fwd.groupby(["workload", "component"], sort=False):
        med = g.groupby("runtime")["value"].median()
        per = comp.split("/", 1)[1]
        out.append(f"{w}, CPU per {per} of the forwarder of each runtime's published port: " + ", ".join(
            f"{rt} {v:.1f} µs" for rt, v in med.items()))
    return "; ".join(out)


def _volume(load, env, skipped, level, seed):
    # VMs apart: their volume is a 9p share through QEMU, another question than the layered filesystem's
    m = load[(load["metric"] == "throughput") & (load["kind"] != "vm")]
    rows = []
    for layered, vol in (("fileio", "fileio-volume"), ("mariadb", "mariadb-volume")):
        for (rt, comp), g in m[m["workload"] == vol].groupby(["runtime", "component"]):
            base = m[(m["workload"] == layered) & (m["runtime"] == rt) & (m["component"] == comp)]["value"]
            if len(base):
                rows.append({"runtime": rt, "workload": vol, "component": comp,
                             **difference(g["value"].to_numpy(), base.to_numpy(), level=level, seed=seed)})
    mysql = "MySQL: not measured (no mariadb-volume load in this run)" if "mariadb-volume" not in set(m["workload"]) \
        else ""
    if not rows:
        return NOT_MEASURED, ("fileio was not run both on the writable layer and on a volume (workloads fileio and "
                              "fileio-volume) in the same runtime" + (f"; {mysql}" if mysql else ""))
    rel = pd.DataFrame(rows)
    text = "throughput on a volume ÷ on the writable layer: " + ", ".join(
        f"{r.runtime} {r.workload}/{r.component} " + _fmt(r).split(" ", 1)[1] for r in rel.itertuples())
    if mysql:
        text += f"; {mysql}"
    if (rel["verdict"] == "higher").any():
        return REPRODUCED, text
    if (rel["verdict"] == NOT_ENOUGH).any():
        return NOT_ENOUGH, f"{text}; {_not_enough(rel, level)}"
    return NOT_REPRODUCED, text


def _syscall(load, env, skipped, level, seed):
    m = load[(load["workload"] == "syscall") & (load["metric"] == "op_time")]
    have = set(m["runtime"])
    if not {"runsc", "runc"} <= have:
        missing = sorted({"runsc", "runc"} - have)
        return NOT_MEASURED, f"the syscall load did not run in {' and '.join(missing)}" + (
            f" (left out: {'; '.join(f'{k}: {v}' for k, v in skipped.items() if k in missing)})"
            if any(k in missing for k in skipped) else "")
    d = difference(m[m["runtime"] == "runsc"]["value"].to_numpy(), m[m["runtime"] == "runc"]["value"].to_numpy(),
                   level=level, seed=seed)
    r = pd.Series({"runtime": "runsc", **d})
    text = (f"runsc {d['median']:.0f} ns against runc {d['median_ref']:.0f} ns per system call measured here: "
            + _fmt(r).split(" ", 1)[1] + f"; reproduced means at least {SYSCALL_FACTOR:g}× and beyond the noise")
    if d["verdict"] == NOT_ENOUGH:
        return NOT_ENOUGH, f"{text}; {_not_enough(pd.DataFrame([d]), level)}"
    return (REPRODUCED if d["verdict"] == "higher" and d["ratio"] >= SYSCALL_FACTOR else NOT_REPRODUCED), text
