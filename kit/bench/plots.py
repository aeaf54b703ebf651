"""Figures of a results frame: startup, phases, memory, disk, density.

Every runtime has one colour in every figure, a shade of its class's hue
(process grey, containers blue, sandboxes orange, VMs red), so the class
reads at a glance. Titles name the host and the VM accelerator. Nothing here
needs a display: the figures render under the Agg backend.

A fleet frame (a ``host`` column, see :mod:`kit.bench.fleet`) gives every figure once per host
(facets, named ``NAME-HOST``) and :func:`hosts`, which overlays the hosts' startup times.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .metrics import KINDS
from .stats import measured

CLASS_COLOURS = {"process": "#4d4d4d", "container": "#2171b5", "sandbox": "#e6550d", "vm": "#cb181d"}
RUNTIME_COLOURS = {
    "process": "#4d4d4d",
    "runc": "#2171b5", "crun": "#6baed6", "lxc": "#08306b", "docker": "#4292c6", "podman": "#9ecae1",
    "runsc": "#e6550d",
    "qemu": "#cb181d",
}
MB = 1024 * 1024


def colour(runtime: str, kind: str) -> str:
    return RUNTIME_COLOURS.get(runtime) or CLASS_COLOURS.get(kind, "#888888")


def _kinds(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df["runtime"], df["kind"]))


def runtime_order(df: pd.DataFrame, metric: str | None = None) -> list[str]:
    """Runtimes by class (process, container, sandbox, vm), then by median of ``metric``."""
    kinds = _kinds(df[df["runtime"] != "-"])
    rank = {k: i for i, k in enumerate(KINDS)}
    med = {}
    if metric:
        m = measured(df)
        med = m[m["metric"] == metric].groupby("runtime")["value"].median().to_dict()
    return sorted(kinds, key=lambda r: (rank.get(kinds[r], 9), med.get(r, np.inf), r))


def accel(df: pd.DataFrame, meta: dict) -> str:
    vm = df[(df["kind"] == "vm") & (df["accel"] != "")]
    if len(vm):
        return ", ".join(sorted(vm["accel"].unique()))
    return (meta.get("environment") or {}).get("vm_accel") or "none"


def title(what: str, df: pd.DataFrame, meta: dict) -> str:
    env = meta.get("environment") or {}
    host = env.get("host", "?")
    cpus = env.get("cpu_count", "?")
    return f"{what}\n{host} ({cpus} CPUs, {env.get('cgroup', '?')} cgroups, kernel {env.get('kernel', '?')}); " \
           f"VM accelerator: {accel(df, meta)}"


def _xtick_colours(ax, runtimes, kinds):
    for label, rt in zip(ax.get_xticklabels(), runtimes):
        label.set_color(colour(rt, kinds.get(rt, "")))


def startup(df: pd.DataFrame, meta: dict):
    """Launch-to-exit (or -ready) and teardown per runtime: every run a dot over a box, log scale."""
    import matplotlib.pyplot as plt

    data = df[df["part"] == "startup"]
    workloads = list(dict.fromkeys(data["workload"]))
    metrics_ = [("launch_to_exit", "launch → exit / ready"), ("teardown", "teardown")]
    fig, axes = plt.subplots(len(metrics_), len(workloads), figsize=(max(6, 5 * len(workloads)), 8),
                             squeeze=False, sharey="row")
    kinds = _kinds(data)
    rng = np.random.default_rng(0)  # jitter only; fixed so figures are reproducible
    for col, w in enumerate(workloads):
        wd = data[data["workload"] == w]
        main = "launch_to_exit" if (wd["metric"] == "launch_to_exit").any() else "launch_to_ready"
        order = runtime_order(wd, main)
        for row, (metric, label) in enumerate(metrics_):
            metric = main if metric == "launch_to_exit" else metric
            ax = axes[row][col]
            ok = wd[(wd["metric"] == metric) & (wd["status"] == "ok")]
            boxes = [ok[(ok["runtime"] == r) & ~ok["warmup"]]["value"].to_numpy() * 1000 for r in order]
            ax.boxplot([b if len(b) else [np.nan] for b in boxes], positions=range(len(order)), widths=0.6,
                       showfliers=False, medianprops={"color": "black"})
            for i, r in enumerate(order):
                pts = ok[ok["runtime"] == r]
                x = i + rng.uniform(-0.18, 0.18, len(pts))
                c = colour(r, kinds.get(r, ""))
                warm = pts["warmup"].to_numpy()
                ax.scatter(x[~warm], pts["value"].to_numpy()[~warm] * 1000, s=14, color=c, alpha=0.8, zorder=3)
                ax.scatter(x[warm], pts["value"].to_numpy()[warm] * 1000, s=14, facecolors="none",
                           edgecolors=c, zorder=3, label="warmup" if i == 0 and warm.any() else None)
            ax.set_yscale("log")
            ax.set_xticks(range(len(order)), order, rotation=30)
            _xtick_colours(ax, order, kinds)
            ax.set_ylabel(f"{'launch → ready' if metric == 'launch_to_ready' else label} (ms)")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            if row == 0:
                ax.set_title(f"workload: {w}")
    fig.suptitle(title("Startup time, every run (hollow: warmup)", df, meta), fontsize=10)
    fig.tight_layout()
    return fig


def phases(df: pd.DataFrame, meta: dict):
    """Median time of each milestone a runtime exposes, after the request (prepare = its launch).

    Top: every runtime on one log axis. Below: one linear timeline per runtime
    with three or more milestones (Docker, VMs), where they would crowd on a log axis.
    """
    import matplotlib.pyplot as plt

    data = measured(df[(df["part"] == "startup") & (df["metric"] == "phase")])
    med = data.groupby(["runtime", "component"])["value"].median().reset_index()
    order = [r for r in runtime_order(df[df["part"] == "startup"], "launch_to_exit") if r in set(med["runtime"])]
    detailed = [r for r in order if (med["runtime"] == r).sum() >= 3]
    kinds = _kinds(df)
    heights = [1 + 0.6 * max(1, len(order))] + [1.3] * len(detailed)
    fig, axes = plt.subplots(1 + len(detailed), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    ax = axes[0][0]
    for i, r in enumerate(order):
        pts = med[med["runtime"] == r]
        c = colour(r, kinds.get(r, ""))
        ax.hlines(i, 0, pts["value"].max() * 1000, color=c, lw=2)
        ax.scatter(pts["value"] * 1000, [i] * len(pts), color=c, zorder=3)
    ax.set_yticks(range(len(order)), order)
    ax.set_xlabel("ms after the request (median)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.grid(True, axis="x", alpha=0.3)
    for k, r in enumerate(detailed, start=1):
        sub = axes[k][0]
        pts = med[med["runtime"] == r].sort_values("value")
        c = colour(r, kinds.get(r, ""))
        sub.hlines(0, 0, pts["value"].max() * 1000, color=c, lw=2)
        sub.scatter(pts["value"] * 1000, [0] * len(pts), color=c, zorder=3)
        for j, (_, p) in enumerate(pts.iterrows()):
            sub.annotate(p["component"], (p["value"] * 1000, 0), textcoords="offset points",
                         xytext=(0, (8, -14, 18, -24)[j % 4]), ha="center", fontsize=7)
        sub.set_yticks([0], [r])
        sub.set_ylim(-1, 1)
        sub.set_xlim(left=0)
        sub.set_xlabel(f"{r}: ms after the request (median, linear)")
        sub.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title("Startup phases", df, meta), fontsize=10)
    fig.tight_layout()
    return fig


def memory(df: pd.DataFrame, meta: dict):
    """Host PSS of one idle instance, stacked by process, with cgroup working set and the guest's view."""
    import matplotlib.pyplot as plt

    data = df[(df["part"] == "memory") & (df["status"] == "ok")]
    comp = data[data["metric"] == "pss_by_process"]
    order = runtime_order(data, "pss")
    kinds = _kinds(data)
    daemons = data[data["metric"] == "daemon_pss"]
    names = list(dict.fromkeys(comp.sort_values("value", ascending=False)["component"]))
    # Pastel fills for processes, so they never read as a runtime class; the edge is the runtime's colour.
    cmap = plt.get_cmap("Pastel2")
    comp_colour = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    labels = order + (["daemons"] if len(daemons) else [])
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(labels) + 3), 5))
    for i, r in enumerate(order):
        bottom = 0.0
        rc = comp[comp["runtime"] == r].groupby("component")["value"].median().sort_values(ascending=False)
        for name, v in rc.items():
            ax.bar(i, v / MB, bottom=bottom, color=comp_colour[name], edgecolor=colour(r, kinds.get(r, "")),
                   linewidth=1.5, label=name)
            bottom += v / MB
        # the per-instance helper (monitor_pss) on top, hatched: counted beside the instance, not in its pss
        for name, v in data[(data["runtime"] == r) & (data["metric"] == "monitor_pss")].groupby(
                "component")["value"].median().items():
            ax.bar(i, v / MB, bottom=bottom, color="white", hatch="..", edgecolor=colour(r, kinds.get(r, "")),
                   label="helper (monitor_pss)")
            bottom += v / MB
        ax.annotate(f"{bottom:.1f}", (i, bottom), ha="center", va="bottom", fontsize=8)
        for metric, marker, lab in (("cgroup_working_set", "D", "cgroup working set"),
                                    ("guest_used", "x", "guest MemTotal-MemAvailable")):
            v = data[(data["runtime"] == r) & (data["metric"] == metric)]["value"]
            if len(v):
                ax.scatter(i, v.median() / MB, marker=marker, color="black", zorder=4, label=lab)
    if len(daemons):
        bottom, i = 0.0, len(order)
        for name, v in daemons.groupby("component")["value"].median().items():
            ax.bar(i, v / MB, bottom=bottom, color="white", hatch="//", edgecolor=CLASS_COLOURS["container"],
                   label=f"daemon: {name}")
            ax.annotate(name, (i, bottom + v / MB / 2), ha="center", fontsize=7)
            bottom += v / MB
    handles, labs = ax.get_legend_handles_labels()
    uniq = dict(zip(labs, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", ncol=2)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    _xtick_colours(ax, order, kinds)
    # log: a bare process and a VM differ a thousandfold, and a linear axis flattens every container to zero
    ax.set_yscale("log")
    ax.set_ylabel("MiB, log scale (PSS of host processes, stacked by process; helper on top)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title("Memory of one idle instance (sleep 3600)", df, meta), fontsize=10)
    fig.tight_layout()
    return fig


def disk(df: pd.DataFrame, meta: dict):
    """Bytes shared by all instances (image formats read) vs bytes each instance adds; totals for n."""
    import matplotlib.pyplot as plt

    data = df[(df["part"] == "disk") & (df["status"] == "ok") & (df["runtime"] != "-")]
    order = runtime_order(data, "total_for_n")
    kinds = _kinds(data)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.38
    for i, r in enumerate(order):
        d = data[data["runtime"] == r]
        shared = d[d["metric"] == "image_shared"]["value"].median()
        per = d[d["metric"] == "instance_allocated"]["value"].median()
        c = colour(r, kinds.get(r, ""))
        if shared > 0:  # the bare process reads no image
            ax.bar(i - width / 2, shared / MB, width, color=c, label="shared (image formats, once)")
        if per > 0:
            ax.bar(i + width / 2, per / MB, width, color="white", edgecolor=c, hatch="..",
                   label="per instance (state, writable layer)")
        tot = d[d["metric"] == "total_for_n"].sort_values("n")
        ax2.plot(tot["n"].astype(float), tot["value"] / MB, marker="o", color=c, label=r)
    handles, labs = ax.get_legend_handles_labels()
    uniq = dict(zip(labs, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(order)), order, rotation=30)
    _xtick_colours(ax, order, kinds)
    ax.set_ylabel("MiB allocated on disk (log)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax2.set_xlabel("instances (n)")
    ax2.set_ylabel("MiB allocated, sharing accounted")
    ax2.legend(fontsize=8)
    ax2.grid(True, alpha=0.3)
    fig.suptitle(title("Disk: shared vs per-instance bytes", df, meta), fontsize=10)
    fig.tight_layout()
    return fig


def density(df: pd.DataFrame, meta: dict):
    """Total memory, memory per instance and start time against the number of idle instances."""
    import matplotlib.pyplot as plt

    data = df[(df["part"] == "density") & (df["status"] == "ok")]
    order = runtime_order(data, "density_pss_per_instance")
    kinds = _kinds(data)
    # density_host_used stays in the frame but not here: on a shared host it mostly shows the neighbours.
    panels = [("density_pss_total", "total PSS (MiB)", MB), ("density_pss_per_instance", "PSS per instance (MiB)", MB),
              ("density_start", "start of the n-th instance (ms)", 1e-3)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.5))
    for ax, (metric, label, scale) in zip(axes, panels):
        for r in order:
            d = data[(data["runtime"] == r) & (data["metric"] == metric)].sort_values("n")
            if len(d):
                ax.plot(d["n"].astype(float), d["value"] / scale, marker="o", color=colour(r, kinds.get(r, "")),
                        label=r)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("idle instances (n)")
        ax.set_ylabel(label)
        ax.set_yscale("log")  # a bare process and a VM differ a thousandfold
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title("Density: n idle instances (sleep 3600)", df, meta), fontsize=10)
    fig.tight_layout()
    return fig


def hosts(df: pd.DataFrame, meta: dict):
    """Startup of every host overlaid: per runtime, one column of dots (every measured run) per
    host, with its median as a bar; one panel per workload, log scale."""
    import matplotlib.pyplot as plt

    data = measured(df[(df["part"] == "startup")])
    data = data[data["metric"].isin(["launch_to_exit", "launch_to_ready"])]
    labels = list(dict.fromkeys(df["host"]))
    workloads = list(dict.fromkeys(data["workload"]))
    cmap = plt.get_cmap("tab10")
    host_colour = {h: cmap(i % cmap.N) for i, h in enumerate(labels)}
    fig, axes = plt.subplots(1, max(1, len(workloads)), figsize=(max(7, 6 * len(workloads)), 5), squeeze=False)
    kinds = _kinds(data)
    rng = np.random.default_rng(0)
    width = 0.8 / max(1, len(labels))
    for ax, w in zip(axes[0], workloads):
        wd = data[data["workload"] == w]
        order = runtime_order(wd, "launch_to_exit")
        for j, h in enumerate(labels):
            for i, r in enumerate(order):
                v = wd[(wd["host"] == h) & (wd["runtime"] == r)]["value"].to_numpy() * 1000
                if not len(v):
                    continue
                x = i - 0.4 + width * (j + 0.5)
                ax.scatter(x + rng.uniform(-width / 4, width / 4, len(v)), v, s=12, color=host_colour[h],
                           alpha=0.8, zorder=3, label=h if i == 0 or r == order[0] else None)
                ax.hlines(np.median(v), x - width / 2.5, x + width / 2.5, color=host_colour[h], lw=2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(order)), order, rotation=30)
        _xtick_colours(ax, order, kinds)
        ax.set_ylabel("launch → exit / ready (ms; bar: median)")
        ax.set_title(f"workload: {w}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        handles, labs = ax.get_legend_handles_labels()
        uniq = dict(zip(labs, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, title="host")
    fig.suptitle(f"Startup time on {len(labels)} hosts, every measured run", fontsize=10)
    fig.tight_layout()
    return fig


def services(results: pd.DataFrame, host: str):
    """Services (a :mod:`kit.bench.services` frame: one row per service and runtime): the time until a
    real client got an answer (log axis: a bare process and a VM under TCG differ a hundredfold), and
    the memory at rest beside its peak under load, in MiB. The title names the VM accelerator.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{s}\n{r}" for s, r in zip(results["service"], results["runtime"])]
    colours = [colour(r, k) for r, k in zip(results["runtime"], results["kind"])]
    x = np.arange(len(results))
    axes[0].bar(x, results["ready_s"], color=colours)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds until it answers on 127.0.0.1 (log scale)")
    axes[0].set_title("time to answer")
    axes[1].bar(x - 0.2, results["idle_pss_mib"], width=0.4, color=colours, alpha=0.5, label="idle")
    axes[1].bar(x + 0.2, results["load_peak_pss_mib"], width=0.4, color=colours, label="peak under load")
    axes[1].set_ylabel("MiB (PSS of its host processes)")
    axes[1].set_title("memory")
    axes[1].legend()
    for ax in axes:
        ax.set_xticks(list(x), labels, fontsize=8)
    vm_accel = next((a for a in results["accel"] if a), "")
    fig.suptitle(f"Redis and MariaDB on {host}" + (f" (VM accelerator: {vm_accel})" if vm_accel else ""))
    fig.tight_layout()
    return fig


def slug(label: str) -> str:
    """A host label as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


FIGURES = {"startup": startup, "phases": phases, "memory": memory, "disk": disk, "density": density}
_NEEDS = {"startup": ("startup", None), "phases": ("startup", "phase"), "memory": ("memory", "pss"),
          "disk": ("disk", "total_for_n"), "density": ("density", "density_pss_total")}


def all_figures(df: pd.DataFrame, meta: dict, which=None) -> dict:
    """Every figure the frame has data for (or those named in ``which``): name -> Figure.

    A fleet frame gives ``hosts`` (overlay) and every other figure per host as ``NAME-HOST``.
    """
    if "host" in df.columns:
        out = {}
        if (not which or "hosts" in which) and len(measured(df[df["part"] == "startup"])):
            out["hosts"] = hosts(df, meta)
        for h in dict.fromkeys(df["host"]):
            env = ((meta.get("hosts") or {}).get(h) or {}).get("environment") or {"host": h}
            sub = df[df["host"] == h].drop(columns="host")
            for name, fig in all_figures(sub, {**meta, "environment": env}, which).items():
                out[f"{name}-{slug(h)}"] = fig
        return out
    out = {}
    for name, fn in FIGURES.items():
        if which and name not in which:
            continue
        part, metric = _NEEDS[name]
        d = df[(df["part"] == part) & (df["status"] == "ok")]
        if metric:
            d = d[d["metric"] == metric]
        if len(d):
            out[name] = fn(df, meta)
    return out
