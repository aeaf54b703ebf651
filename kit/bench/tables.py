"""A study's tables (DataFrames in human units) and all of them as one Markdown document.

Each table takes what :class:`kit.bench.view.View` offers (``df``, ``meta``, ``seed``, ``summary()``,
``relative()``): a view, or the :class:`~kit.bench.Study` that has one. Not to be confused with
:mod:`kit.report`, which turns executed notebooks into reports.
"""

from __future__ import annotations

import math

import pandas as pd

from . import loadpart, metrics, storm, stormplots
from .stats import measured

MIB = 1024 * 1024


def table(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a GitHub Markdown table (``DataFrame.to_markdown``, i.e. tabulate).

    Numbers are shown to 3 significant figures below 100 and whole from 100 up; missing values as
    blanks.
    """
    shown = df.apply(lambda col: col.map(_rounded)).astype(object)  # Series.map: any pandas >= 1.5
    return shown.where(shown.notna(), None).to_markdown(index=index, floatfmt=".15g", missingval="")


def _rounded(v):
    if isinstance(v, float) and math.isfinite(v) and v != 0:
        return round(v) * 1.0 if abs(v) >= 100 else round(v, 2 - math.floor(math.log10(abs(v))))
    return v


def startup_table(study) -> pd.DataFrame:
    """Per runtime and workload: runs, median, IQR, CI, min-max, mean ± sd (ms), outliers, x process."""
    s = study.summary("startup")
    s = s[s["metric"].isin(["launch_to_exit", "launch_to_ready"])]
    rel = study.relative().set_index(["runtime", "workload"]) if len(study.relative()) else None
    out = []
    for _, r in s.iterrows():
        ratio = rel["ratio"].get((r["runtime"], r["workload"]), math.nan) if rel is not None else math.nan
        out.append({"runtime": r["runtime"], "kind": r["kind"], "workload": r["workload"], "runs": r["runs"],
                    "median ms": r["median"] * 1e3, "IQR ms": r["iqr"] * 1e3,
                    "95% CI ms": f"{r['ci_low'] * 1e3:.3g}–{r['ci_high'] * 1e3:.3g}",
                    "min–max ms": f"{r['min'] * 1e3:.3g}–{r['max'] * 1e3:.3g}",
                    "mean ± sd ms": f"{r['mean'] * 1e3:.3g} ± {r['sd'] * 1e3:.2g}", "outliers": r["outliers"],
                    "× process": ratio})
    return pd.DataFrame(out).sort_values("median ms").reset_index(drop=True) if out else pd.DataFrame()


def teardown_table(study) -> pd.DataFrame:
    s = study.summary("startup")
    s = s[s["metric"] == "teardown"]
    return pd.DataFrame({"runtime": s["runtime"], "workload": s["workload"], "median ms": s["median"] * 1e3,
                         "IQR ms": s["iqr"] * 1e3}).sort_values("median ms").reset_index(drop=True)


def memory_table(study) -> pd.DataFrame:
    """One idle instance: PSS, its monitor's PSS, USS, cgroup working set, guest view (MiB); daemons apart."""
    m = measured(study.df[study.df["part"] == "memory"])
    if m.empty:
        return pd.DataFrame()
    wide = m[m["component"].eq("") | m["metric"].eq("daemon_pss")]
    piv = wide[wide["metric"] != "daemon_pss"].pivot_table(index="runtime", columns="metric", values="value",
                                                           aggfunc="median") / MIB
    cols = [c for c in ("pss", "uss", "rss", "cgroup_working_set", "guest_used", "guest_total") if c in piv]
    out = piv[cols].sort_values("pss")
    monitors = m[m["metric"] == "monitor_pss"].groupby(["runtime", "image"])["value"].sum()
    if len(monitors):  # apart from pss, as the daemons are (see METRICS["monitor_pss"])
        out.insert(1, "monitor_pss", monitors.groupby("runtime").median() / MIB)
    daemons = m[m["metric"] == "daemon_pss"].groupby("component")["value"].median() / MIB
    for name, v in daemons.items():
        out.loc[f"(daemon) {name}", "pss"] = v
    return out.rename(columns=lambda c: f"{c} MiB")


def disk_table(study) -> pd.DataFrame:
    """Per runtime: shared image bytes, bytes per instance, total for the most instances run (MiB)."""
    d = measured(study.df[(study.df["part"] == "disk") & (study.df["runtime"] != "-")])
    if d.empty:
        return pd.DataFrame()
    rows = []
    for rt, g in d.groupby("runtime"):
        tot = g[g["metric"] == "total_for_n"].sort_values("n")
        rows.append({"runtime": rt, "shared MiB": g[g["metric"] == "image_shared"]["value"].median() / MIB,
                     "per instance KiB": g[g["metric"] == "instance_allocated"]["value"].median() / 1024,
                     "n": int(tot["n"].iloc[-1]) if len(tot) else 0,
                     "total for n MiB": tot["value"].iloc[-1] / MIB if len(tot) else math.nan})
    return pd.DataFrame(rows).sort_values("shared MiB").reset_index(drop=True)


def image_table(study) -> pd.DataFrame:
    d = study.df[(study.df["part"] == "disk") & (study.df["runtime"] == "-")]
    if d.empty:
        return pd.DataFrame()
    piv = d.pivot_table(index=["image", "component"], columns="metric", values="value", aggfunc="first") / MIB
    return piv.rename(columns=lambda c: c.replace("image_", "") + " MiB")


def density_table(study) -> pd.DataFrame:
    d = measured(study.df[study.df["part"] == "density"])
    if d.empty:
        return pd.DataFrame()
    rows = []
    for rt, g in d.groupby("runtime"):
        tot = g[g["metric"] == "density_pss_total"].sort_values("n")
        if tot.empty:
            continue
        n = int(tot["n"].iloc[-1])
        starts = g[g["metric"] == "density_start"].sort_values("n")
        rows.append({"runtime": rt, "max n": n, "total PSS MiB": tot["value"].iloc[-1] / MIB,
                     "PSS/instance MiB": tot["value"].iloc[-1] / n / MIB,
                     "first start ms": starts["value"].iloc[0] * 1e3 if len(starts) else math.nan,
                     "last start ms": starts["value"].iloc[-1] * 1e3 if len(starts) else math.nan})
    return pd.DataFrame(rows).sort_values("PSS/instance MiB").reset_index(drop=True)


def _swept(df: pd.DataFrame) -> bool:
    """Whether a frame is of a density sweep (KSM settings or guest sizes)."""
    return any(c in df.columns for c in ("ksm", "vm_memory"))


def markdown(study, figures=True) -> str:
    """Every table of a study, with the environment and what was left out, as one Markdown document.

    ``figures``: link the figures (True: those of startup, memory, disk and density; or a list of names)."""
    env = study.meta.get("environment", {})
    p = study.meta.get("params", {})
    partial = study.meta.get("partial")
    parts = [f"# {p.get('name', 'study')}: {', '.join(p.get('images', []))} × "
             f"{', '.join(study.meta.get('runtimes', []))} × "
             f"{', '.join([w['name'] for w in p.get('workloads', [])] + list(p.get('loads') or []))}",
             f"Host {env.get('host')} ({env.get('os')}), kernel {env.get('kernel')}, {env.get('cpu_count')} × "
             f"{env.get('cpu_model')}, {env.get('memory_total', 0) / 2**30:.1f} GiB, cgroups {env.get('cgroup')}; "
             f"VM accelerator: {env.get('vm_accel') or 'none'} {('(' + env['vm_accel_reason'] + ')') if env.get('vm_accel_reason') else ''}; "
             f"kit {env.get('kit_version')} at {env.get('git_commit') or '?'}; {env.get('date')}; "
             f"study took {study.meta.get('elapsed_s')} s (repeat {p.get('repeat')}, VM repeat "
             f"{p.get('vm_repeat')}, warmup {p.get('warmup')}, seed {p.get('seed')})."]
    if partial:
        parts.append(f"**Partial study**: {partial}.")
    sections = [("Startup (launch → exit), warmups and failed runs left out", startup_table(study)),
                ("Teardown", teardown_table(study)), ("Memory of one idle instance", memory_table(study)),
                ("Image bytes per format", image_table(study)), ("Disk with sharing accounted", disk_table(study)),
                ("Density", density_table(study)),
                ("Start storms: N at once (kit.bench.storm)", storm.table(study.df)),
                ("Density sweep: memory per idle instance (PSS sum and host MemAvailable), KSM",
                 stormplots.sweep_table(study.df) if _swept(study.df) else pd.DataFrame()),
                ("Under load: throughput against the bare process (95 % CI), p99", loadpart.table(study.df, study.seed))]
    for heading, t in sections:
        if len(t):
            parts.append(f"## {heading}\n\n" + table(t, index=not isinstance(t.index, pd.RangeIndex)))
    if study.meta.get("storm_stopped"):
        parts.append("Storms stopped: " + "; ".join(f"**{k}**: {v}" for k, v in study.meta["storm_stopped"].items()))
    if study.meta.get("skipped"):
        parts.append("Not measured: " + "; ".join(f"**{k}**: {v}" for k, v in study.meta["skipped"].items()))
    if study.meta.get("dropped"):
        parts.append("Dropped after repeated failures: " + "; ".join(f"**{k}**: {v}"
                                                                     for k, v in study.meta["dropped"].items()))
    failed = study.df[study.df["status"] != "ok"]
    if len(failed):
        parts.append("Failed runs: " + "; ".join(f"{r.runtime}: {r.status}" for r in
                                                failed.drop_duplicates(["runtime", "status"]).itertuples()))
    if figures:
        names = figures if isinstance(figures, (list, tuple)) else ("startup", "phases", "memory", "disk", "density")
        parts.append(" ".join(f"![{n}]({n}.png)" for n in names))
    if len(study.df):
        parts.append("## Definitions\n\n" + metrics.markdown(set(study.df["metric"])))
    return "\n\n".join(parts) + "\n"
