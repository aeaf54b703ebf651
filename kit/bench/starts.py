"""Start modes in a study: which (runtime, start mode) cells run, and warm against cold per runtime.

A study with ``starts=["cold", "precreated", "snapshot"]`` measures each startup cell once per
start mode its runtime offers (:attr:`kit.runtimes.base.Runtime.start_modes`); a mode a runtime
does not offer is left out with the runtime's own reason (``meta["skipped_starts"]``), never a
failed run. Rows carry a ``start`` column and a ``pool`` column: ``hit`` for a warm start whose
container (or VM template, or CRIU checkpoint) was waiting, ``miss`` for one that had to make it
inside its startup clock, "" for a cold start. Misses are kept out of warm medians unless asked
(``misses=True`` here and in :mod:`kit.bench.stats`), so the two warm modes compare alike.
"""

from __future__ import annotations

import math

import numpy as np

from .. import runtimes as _runtimes
from ..errors import InvalidSpec
from ..spec import START_MODES
from . import stats


def check(starts) -> tuple[str, ...]:
    """The study's start modes, validated (InvalidSpec names the known ones)."""
    items = [s.strip() for s in starts.split(",")] if isinstance(starts, str) else [str(s) for s in starts]
    bad = [s for s in items if s not in START_MODES]
    if bad or not items:
        raise InvalidSpec(f"start mode(s) {', '.join(bad) or '(none)'} not known: choose from {', '.join(START_MODES)}")
    return tuple(dict.fromkeys(items))


def offered(runtime: str, starts) -> tuple[list[str], dict[str, str]]:
    """(the modes of ``starts`` that ``runtime`` offers, {"runtime/mode": why not} for the rest)."""
    rt = _runtimes.get(runtime)
    ok, skipped = [], {}
    for s in starts:
        why = rt.start_mode_refusal(s)
        if why:
            skipped[f"{runtime}/{s}"] = why
        else:
            ok.append(s)
    return ok, skipped


def labelled(df):
    """``df`` with each warm row's runtime named ``RUNTIME/MODE`` (cold rows keep the runtime's
    name), so that comparisons against a baseline runtime keep start modes apart."""
    if "start" not in df.columns:
        return df
    df = df.copy()
    warm = ~df["start"].isin(["", "cold"])
    df.loc[warm, "runtime"] = df.loc[warm, "runtime"] + "/" + df.loc[warm, "start"]
    return df


def relative(df, metric: str = "launch_to_exit", seed: int = 0, misses: bool = False):
    """Each runtime's warm start modes against its own cold start, for one metric.

    A warm start that found no container or template waiting (``pool == "miss"``) paid for it inside
    its clock: it is left out of the warm median unless ``misses``. The ``misses`` column counts the
    misses of each mode either way, so a mode that never hit still has its row (with no median).

    Columns: image, workload, runtime, kind, start, metric, median, cold_median, ratio (of medians),
    ratio_low/ratio_high (bootstrap 95 % CI), saved (cold median - warm median, seconds), runs (the
    warm runs in the median), misses.
    """
    import pandas as pd

    if "start" not in df.columns:
        return pd.DataFrame()
    data = stats.measured(df, misses=True)
    data = data[data["metric"] == metric]
    out = []
    for (image, workload, runtime), cell in data.groupby(["image", "workload", "runtime"], sort=False):
        cold = cell[cell["start"].isin(["", "cold"])]["value"].to_numpy()
        if cold.size == 0:
            continue
        for start, grp in cell[~cell["start"].isin(["", "cold"])].groupby("start", sort=False):
            missed = (grp["pool"] == "miss") if "pool" in grp.columns else pd.Series(False, index=grp.index)
            v = grp["value"].to_numpy() if misses else grp[~missed]["value"].to_numpy()
            med = float(np.median(v)) if v.size else math.nan
            lo, hi = stats.ratio_ci(v, cold, seed=seed)
            out.append({"image": image, "workload": workload, "runtime": runtime, "kind": grp["kind"].iloc[0],
                        "start": start, "metric": metric, "median": med,
                        "cold_median": float(np.median(cold)), "ratio": med / float(np.median(cold)),
                        "ratio_low": lo, "ratio_high": hi, "saved": float(np.median(cold)) - med,
                        "runs": int(v.size), "misses": int(missed.sum())})
    res = pd.DataFrame(out)
    return res.sort_values(["runtime", "start"]).reset_index(drop=True) if len(res) else res
