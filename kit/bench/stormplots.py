"""Figures of start storms and density sweeps, with the field's published figures beside them.

:func:`storm` draws starts per second and the p99 of launch_to_exit against the storm size N, one
line per runtime (a plain-CLI baseline's rows, kind ``baseline``, dashed). :func:`sweep` draws
memory per idle instance against n, one line per runtime, KSM setting and guest size, by both
methods: the PSS sum (solid) and the host's MemAvailable (gVisor's method, dotted).

References (:mod:`kit.bench.references`) are drawn grey and labelled "reference", never in a
runtime's colour, so they cannot be read as measurements; :func:`footer` lists every reference of
a figure's metrics with its source, drawn or not (a figure measured to another boundary is only
listed).
"""

from __future__ import annotations

import os

import pandas as pd

from . import references, storm as storm_
from .plots import MB, colour, title

#: The colour and line of a reference: grey, dash-dotted, apart from every runtime's.
REF_STYLE = {"color": "#7f7f7f", "linestyle": "-.", "linewidth": 1.2}


def cores(meta: dict) -> int:
    """The host's cores as the study recorded them (this machine's when it did not)."""
    return int((meta.get("environment") or {}).get("cpu_count") or os.cpu_count() or 1)


#: The kit metrics each figure of a study shows (:func:`kit.bench.plots.all_figures`, the load part's,
#: and this module's): the references of those metrics go under it.
FIGURE_METRICS = {"startup": ("launch_to_exit", "teardown", "total"), "phases": ("phase",), "memory": ("pss",),
                  "disk": ("total_for_n",), "density": ("density_pss_per_instance", "density_pss_total"),
                  "storm": ("storm_starts_per_s", "launch_to_exit"),
                  "density-sweep": ("density_pss_per_instance", "density_host_per_instance")}
#: The metrics a reference without one of its own is listed under, by its unit.
_FAMILY = {"s": ("launch_to_exit", "total"), "bytes": ("pss", "density_pss_per_instance"), "ns": ("op_time",),
           "× native": ("throughput",)}


def footer(fig, metrics, runtimes, n_cores: int, draws: bool = True) -> list[references.Reference]:
    """Write under ``fig`` every reference of ``metrics``, each with its source: with ``draws``, those
    the figure draws first (their boundary is a kit metric it shows, on a runtime measured here), then
    those only listed, each saying why (another boundary, a runtime not measured here); return the
    drawn ones."""
    metrics = set(metrics)
    drawn = references.drawn(metrics, runtimes) if draws else []
    listed = [r for r in references.TABLE.values() if r not in drawn
              and (r.metric in metrics or (not r.metric and metrics & set(_FAMILY.get(r.unit, ()))))]
    lines = [f"reference (not measured here): {r.what} = {_scaled(r, n_cores)}; {r.source_title} <{r.source_url}>"
             for r in drawn]
    lines += [f"reference, listed (not measured here; {_why(r, runtimes, draws)}): {r.what} = {references.shown(r)}; "
              f"{r.source_title} <{r.source_url}>" for r in listed]
    if lines:
        fig.text(0.01, 0.005, "\n".join(lines), fontsize=5.5, color=REF_STYLE["color"], va="bottom")
        fig.subplots_adjust(bottom=min(0.45, 0.14 + 0.03 * len(lines)))
    return drawn


def _why(r: references.Reference, runtimes, draws: bool) -> str:
    """Why a reference under a figure is listed, not drawn."""
    if not r.metric:
        return "measured to another boundary than any kit metric"
    if r.runtime and r.runtime not in set(runtimes):
        return f"{r.runtime} not measured in this study"
    return "same boundary, not drawn on this figure" if not draws else "not drawn"


def annotate(figs: dict, df: pd.DataFrame, meta: dict) -> dict:
    """Every figure of ``figs`` (name -> Figure, as :meth:`kit.bench.Study.plot` returns them) with the
    references of its metrics written under it (:func:`footer`); this module's own draw theirs too."""
    runtimes = list(df["runtime"].unique()) if len(df) else []
    for name, fig in figs.items():
        base = name.split("-")[0] if name not in FIGURE_METRICS else name
        metrics = FIGURE_METRICS.get(base) or (("op_time", "throughput") if name.startswith("load") else ())
        if metrics and name not in ("storm", "density-sweep"):
            footer(fig, metrics, runtimes, cores(meta), draws=False)
    return figs


def _scaled(r: references.Reference, n_cores: int) -> str:
    if r.per_core:
        return f"{r.value:g}/s per core × {n_cores} cores = {r.scaled(n_cores):g}/s"
    return references.shown(r)


def storm(df: pd.DataFrame, meta: dict, with_references: bool = True):
    """Starts per second (median of the rounds, their range as a bar) and p99 of launch_to_exit
    against N per runtime; Firecracker's rate scaled to this host's cores as a reference line."""
    import matplotlib.pyplot as plt

    t = storm_.table(df)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.8))
    for rt, g in t.groupby("runtime", sort=False):
        g = g.sort_values("N")
        kind = g["kind"].iloc[0]
        style = {"color": colour(rt.split(":")[-1], kind), "marker": "o",
                 "linestyle": "--" if kind == "baseline" else "-", "label": rt}
        a.errorbar(g["N"], g["starts/s"], yerr=[g["starts/s"] - g["starts/s min"], g["starts/s max"] - g["starts/s"]],
                   capsize=3, **style)
        b.plot(g["N"], g["p99 ms"], **style)
    n_cores = cores(meta)
    drawn = footer(fig, ["storm_starts_per_s", "launch_to_exit"], list(t["runtime"]), n_cores) \
        if with_references else []
    for r in drawn:
        if r.metric == "storm_starts_per_s":
            a.axhline(r.scaled(n_cores), **REF_STYLE, label=f"reference: {r.what} × {n_cores} cores")
    for ax, label in ((a, "starts per second (median of rounds; bar: range)"), (b, "p99 launch → exit (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("instances started at once (N)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=7)
    fig.suptitle(title("Start storms: N at once, released by a barrier", df, meta), fontsize=10)
    return fig


def sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    """Memory per idle instance by runtime, KSM setting, guest size and n: the PSS sum's and the
    host's (MemAvailable) figure, and KSM's pages_sharing where it was on (medians of the rows)."""
    d = df[(df["part"] == "density") & (df["status"] == "ok")]
    keys = ["runtime", "kind"] + [c for c in ("ksm", "vm_memory") if c in d.columns] + ["n"]
    want = {"density_pss_per_instance": "PSS MiB/instance", "density_host_per_instance": "host MiB/instance",
            "ksm_pages_sharing": "pages_sharing", "ksm_pages_shared": "pages_shared"}
    d = d[d["metric"].isin(want)]
    if not len(d):
        return pd.DataFrame(columns=keys + list(want.values()))
    t = d.pivot_table(index=keys, columns="metric", values="value", aggfunc="median").reset_index()
    for m in ("density_pss_per_instance", "density_host_per_instance"):
        if m in t.columns:
            t[m] = t[m] / MB
    return t.rename(columns=want)


def sweep(df: pd.DataFrame, meta: dict, with_references: bool = True):
    """Memory per idle instance against n: one line per runtime (and KSM setting, guest size), the PSS
    sum solid, the host's MemAvailable method dotted; gVisor's published idle figures as marks."""
    import matplotlib.pyplot as plt

    t = sweep_table(df)
    fig, ax = plt.subplots(figsize=(8, 5))
    groups = [c for c in ("runtime", "ksm", "vm_memory") if c in t.columns]
    for key, g in t.groupby(groups, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rt = key[0]
        label = " ".join([rt] + [f"KSM {k}" if c == "ksm" else f"{k} MiB" for c, k in zip(groups[1:], key[1:]) if k])
        c = colour(rt, g["kind"].iloc[0])
        hollow = "ksm" in groups and key[groups.index("ksm")] == "on"
        g = g.sort_values("n")
        for col, ls in (("PSS MiB/instance", "-"), ("host MiB/instance", ":")):
            if col in g.columns:
                v = g[col].where(g[col] > 0)  # a host figure below zero: neighbours freed memory meanwhile
                ax.plot(g["n"].astype(float), v, marker="o", linestyle=ls, color=c,
                        markerfacecolor="white" if hollow else c, label=f"{label} ({col.split()[0]})")
    drawn = footer(fig, ["density_pss_per_instance", "density_host_per_instance"], list(t["runtime"].unique()),
                   cores(meta)) if with_references else []
    right = float(t["n"].max()) if len(t) else 1.0
    for r in drawn:
        ax.scatter([right * 1.15], [r.value / MB], marker="<", color=REF_STYLE["color"], zorder=4)
        ax.annotate(f"reference: {r.what}", (right * 1.15, r.value / MB), fontsize=6, color=REF_STYLE["color"],
                    xytext=(4, 0), textcoords="offset points", va="center")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("idle instances (n)")
    ax.set_ylabel("MiB per instance (solid: PSS sum; dotted: host MemAvailable)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title("Density: memory per idle instance (hollow: KSM on)", df, meta), fontsize=10)
    return fig


def figures(df: pd.DataFrame, meta: dict, which=None, with_references: bool = True) -> dict:
    """``storm`` and ``density-sweep`` where the frame has their rows (or those named in ``which``)."""
    out = {}
    if (not which or "storm" in which) and len(storm_.table(df)):
        out["storm"] = storm(df, meta, with_references)
    has_sweep = any(c in df.columns for c in ("ksm", "vm_memory")) or \
        (df["metric"] == "density_host_per_instance").any()
    if (not which or "density-sweep" in which) and has_sweep and len(sweep_table(df)):
        out["density-sweep"] = sweep(df, meta, with_references)
    return out
