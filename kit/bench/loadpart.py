"""The ``load`` part of a study: load workloads (kit.bench.loads) as rows of the study's tidy frame.

A study names load workloads as it names startup ones (``Study(workload=["cpu", "redis"])``).
Which names are loads: :func:`split`. The part runs :func:`kit.bench.loads.run` (for each load,
one instance per runtime, then interleaved rounds, warmups first) and adds every run's rows as it
completes; each run's raw tool output is kept apart (:class:`kit.bench.storage.Outputs`), once per
run, not on every row. Throughput and latency compare to the bare process per operation (SET and GET apart):
:func:`relative`. Figures: :func:`figures`.

>>> split(["true", "cpu", "redis"], None)
(['true'], ['cpu', 'redis'], ('startup', 'memory', 'disk', 'density', 'load'))
>>> split(["redis"], ("startup",))[1]   # without the load part, redis is the startup preset
[]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InvalidSpec
from . import loads, stats
from .plots import colour, runtime_order, title
from .storage import Outputs
from .workloads import PRESETS

#: The parts of a study of startup workloads (the default without load names).
STARTUP_PARTS = ("startup", "memory", "disk", "density")

#: Load workload names a study accepts: every load of kit.bench.loads, and fileio on a volume.
VOLUME_SUFFIX = "-volume"
NAMES = tuple(loads.LOADS) + ("fileio" + VOLUME_SUFFIX,)

#: Metrics the load part reports (relative() compares them per operation).
METRICS = ("throughput", "p50", "p95", "p99", "mean_latency", "op_time", "cpu_per_op", "load_time")

#: Latency metrics, most telling first.
LATENCY = ("p99", "p95", "p50")

def is_load(spec) -> bool:
    return isinstance(spec, str) and spec in NAMES


def split(items, parts) -> tuple[list, list[str], tuple[str, ...]]:
    """(startup workloads, load names, parts) of a study's ``workload`` and ``parts`` arguments.

    With ``parts`` None: the load part when a load is named, the startup parts when anything else
    is. With ``parts`` given: names of loads are loads only when ``load`` is among them (so
    ``redis`` with ``parts="startup"`` is the startup preset).
    """
    items = list(items) if isinstance(items, (list, tuple)) else [items]
    if parts is None:
        named = [i for i in items if is_load(i)]
        rest = [i for i in items if not is_load(i)]
        parts = (STARTUP_PARTS if rest or not named else ()) + (("load",) if named else ())
        return rest, named, parts
    parts = tuple(parts)
    if "load" not in parts:
        stray = [i for i in items if is_load(i) and i not in PRESETS]
        if stray:
            raise InvalidSpec(f"{', '.join(stray)}: a load workload, but 'load' is not among parts "
                              f"{', '.join(parts)}: add it, or leave parts out")
        return items, [], parts
    named = [i for i in items if is_load(i)]
    return [i for i in items if not is_load(i)], list(dict.fromkeys(named)), parts


def check(names: list[str], seconds) -> None:
    if not names:
        raise InvalidSpec(f"the load part needs a load workload: one of {', '.join(NAMES)}")
    if not (isinstance(seconds, (int, float)) and seconds > 0):
        raise InvalidSpec(f"seconds {seconds!r} must be a positive number (how long each load runs)")


def unfinished(df: pd.DataFrame | None, names: list[str], runtimes: list[str], last_round: int) -> dict:
    """{load name: runtimes still to measure}: a (load, runtime) cell is done when its last round is in
    the frame, or its instance failed to start (one failed row and nothing else)."""
    todo = {}
    for name in names:
        rts = []
        for rt in runtimes:
            cell = df[(df["part"] == "load") & (df["workload"] == name) & (df["runtime"] == rt)] \
                if df is not None and len(df) else pd.DataFrame(columns=["round", "status"])
            done = (cell["round"] == last_round).any() or (len(cell) == 1 and (cell["status"] != "ok").all())
            if not done:
                rts.append(rt)
        if rts:
            todo[name] = rts
    return todo


def run(names: list[str], runtimes: list[str], *, repeat: int, warmup: int, seconds: float, seed: int,
        timeout: float, add, outputs: Outputs, progress=None, done: dict | None = None) -> None:
    """Measure ``names`` on ``runtimes`` (only the cells of ``done``'s complement: see :func:`unfinished`),
    passing each run's rows (raw output moved to ``outputs``) to ``add``."""
    todo = done if done is not None else {n: list(runtimes) for n in names}
    for i, name in enumerate(names):
        if name not in todo:
            continue
        base, volume = (name[:-len(VOLUME_SUFFIX)], True) if name.endswith(VOLUME_SUFFIX) else (name, False)
        loads.run([base], todo[name], repeat=repeat, warmup=warmup, seconds=seconds, seed=seed + i,
                  timeout=timeout, volume=volume, on_rows=lambda rows: add(outputs.keep(rows)), progress=progress)


def relative(df: pd.DataFrame, metric: str = "throughput", baseline: str = "process", seed: int = 0) -> pd.DataFrame:
    """Each runtime against ``baseline`` per load workload and operation (``component``): ratio of
    medians with its bootstrap 95 % CI (see :func:`kit.bench.stats.relative`)."""
    data = df[(df["part"] == "load") & (df["metric"] == metric)]
    out = []
    for (w, comp), g in data.groupby(["workload", "component"], sort=False):
        r = stats.relative(g, metric=metric, baseline=baseline, seed=seed)
        if len(r):
            out.append(r.assign(component=comp, unit=g["unit"].iloc[0]))
    if not out:
        return pd.DataFrame()
    res = pd.concat(out, ignore_index=True)
    first = [c for c in ("host", "image", "workload", "component", "runtime", "kind") if c in res.columns]
    return res[first + [c for c in res.columns if c not in first]]


def latency(df: pd.DataFrame) -> pd.DataFrame:
    """Median p50/p95/p99 (ms) per load workload, operation and runtime (warmups and failures left out)."""
    m = stats.measured(df[(df["part"] == "load") & df["metric"].isin(LATENCY)])
    if m.empty:
        return pd.DataFrame()
    return m.pivot_table(index=["workload", "component", "runtime"], columns="metric", values="value",
                         aggfunc="median").reindex(columns=[c for c in ("p50", "p95", "p99")
                                                            if c in set(m["metric"])])


def table(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Workload x operation x runtime: median throughput (unit), ratio to native with its CI, p99."""
    rel = relative(df, "throughput", seed=seed)
    if rel.empty:
        return rel
    lat = latency(df)
    p99 = lat["p99"] if "p99" in lat else pd.Series(dtype=float)
    rows = []
    for r in rel.itertuples(index=False):
        rows.append({"workload": r.workload, "operation": r.component, "runtime": r.runtime,
                     "median": r.median, "unit": r.unit, "× native": r.ratio,
                     "95% CI": f"{r.ratio_low:.3g}–{r.ratio_high:.3g}",
                     "p99 ms": p99.get((r.workload, r.component, r.runtime), np.nan)})
    return pd.DataFrame(rows).sort_values(["workload", "operation", "× native"]).reset_index(drop=True)


def figures(df: pd.DataFrame, meta: dict, which=None) -> dict:
    """``load`` (throughput relative to native per workload and runtime, 95 % CI) and ``latency``
    (p50/p95/p99 per workload and runtime), where the frame has the data."""
    out = {}
    if not which or "load" in which:
        rel = relative(df, "throughput")
        if len(rel):
            out["load"] = _relative_figure(rel, df, meta)
    if not which or "latency" in which:
        lat = latency(df)
        if len(lat):
            out["latency"] = _latency_figure(lat, df, meta)
    return out


def _runtimes(df: pd.DataFrame, present) -> list[str]:
    return [r for r in runtime_order(df[df["part"] == "load"]) if r in set(present)]


def _relative_figure(rel: pd.DataFrame, df: pd.DataFrame, meta: dict):
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(f"{w}/{c}" if c and c != w else w for w, c in zip(rel.workload, rel.component)))
    rel = rel.assign(label=[f"{w}/{c}" if c and c != w else w for w, c in zip(rel.workload, rel.component)])
    rts = _runtimes(df, rel.runtime)
    kinds = dict(zip(rel.runtime, rel.kind))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) * max(1, len(rts)) / 2), 4.5))
    w = 0.8 / max(len(rts), 1)
    for j, rt in enumerate(rts):
        g = rel[rel.runtime == rt].set_index("label").reindex(labels)
        x = np.arange(len(labels)) + j * w
        err = [(g.ratio - g.ratio_low).clip(lower=0).fillna(0), (g.ratio_high - g.ratio).clip(lower=0).fillna(0)]
        ax.bar(x, g.ratio, width=w, label=rt, color=colour(rt, kinds.get(rt, "")), yerr=err, capsize=2)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2, labels, rotation=30, ha="right")
    ax.set_ylabel("throughput ÷ bare process (median, 95 % CI)")
    _plain_log(ax)
    ax.legend(fontsize=8)
    ax.set_title(title("Throughput under load, relative to native", df, meta), fontsize=9)
    fig.tight_layout()
    return fig


_MARKERS = {"p50": "o", "p95": "s", "p99": "^"}


def _plain_log(ax) -> None:
    """A log y axis labelled 0.5, 1, 2 rather than 5×10⁻¹."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if hi < 10 * lo else NullFormatter())


def _latency_figure(lat: pd.DataFrame, df: pd.DataFrame, meta: dict):
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((w, c) for w, c, _ in lat.index))
    fig, axes = plt.subplots(1, len(groups), figsize=(max(5, 3.2 * len(groups)), 4), squeeze=False)
    for ax, (w, c) in zip(axes[0], groups):
        g = lat.loc[(w, c)]
        rts = _runtimes(df, g.index)
        kinds = dict(zip(df.runtime, df.kind))
        for i, rt in enumerate(rts):
            vals = g.loc[rt].dropna()
            ax.plot([i] * len(vals), vals.values, "-", color=colour(rt, kinds.get(rt, "")), lw=3, alpha=0.5)
            for m, marker in _MARKERS.items():
                if m in vals:
                    ax.plot(i, vals[m], marker, color=colour(rt, kinds.get(rt, "")))
        ax.set_xticks(range(len(rts)), rts, rotation=30)
        _plain_log(ax)
        ax.set_title(f"{w}/{c}" if c and c != w else w, fontsize=9)
        ax.set_ylabel("latency, ms (median of runs)")
    from matplotlib.lines import Line2D

    axes[0][0].legend([Line2D([], [], ls="", marker=mk, color="grey") for mk in _MARKERS.values()], list(_MARKERS),
                      fontsize=7)
    fig.suptitle(title("Latency percentiles under load", df, meta), fontsize=9)
    fig.tight_layout()
    return fig
