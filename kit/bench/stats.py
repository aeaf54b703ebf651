"""Statistics for benchmark samples: pure functions, no I/O, no global state.

The presentation follows hyperfine: median with min/max, mean ± standard
deviation, outliers flagged by a median-absolute-deviation score, and a
relative table against a baseline. On top of that: the interquartile range
and a seeded bootstrap 95 % confidence interval of the median.

>>> describe([1.0, 2.0, 3.0, 4.0, 100.0])["median"]
3.0
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: hyperfine's threshold (src/outlier_detection.rs): a point is an outlier when
#: ``|x - median| / MAD > 1.4826 * 10``, i.e. more than ten "robust standard
#: deviations" (1.4826 * MAD estimates sigma for normal data) from the median.
#: Iglewicz and Hoaglin's textbook rule (0.6745 * |x - median| / MAD > 3.5) is
#: stricter; pass ``threshold=3.5 / 0.6745`` to :func:`outliers` to use it.
OUTLIER_THRESHOLD = 1.4826 * 10.0

#: Bootstrap resamples: enough for a stable 95 % interval of a median.
N_BOOT = 2000


def _array(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[~np.isnan(a)]


def modified_zscores(values: Sequence[float]) -> np.ndarray:
    """hyperfine's modified z-scores: ``(x - median) / MAD``.

    A zero MAD (more than half the values equal) is replaced by the float
    epsilon, as hyperfine does, so any differing value scores as an outlier.
    """
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return a
    med = np.median(a)
    mad = np.median(np.abs(a - med))
    if not mad > 0:
        mad = np.finfo(float).eps
    return (a - med) / mad


def outliers(values: Sequence[float], threshold: float = OUTLIER_THRESHOLD) -> np.ndarray:
    """A boolean mask: True where the modified z-score exceeds ``threshold``."""
    return np.abs(modified_zscores(values)) > threshold


def bootstrap_ci(values: Sequence[float], stat=np.median, level: float = 0.95,
                 n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` (default the median).

    Seeded, so the same sample always gives the same interval.

    Returns:
        (low, high); both NaN for an empty sample.
    """
    a = _array(values)
    if a.size == 0:
        return math.nan, math.nan
    if a.size == 1:
        return float(a[0]), float(a[0])
    rng = np.random.default_rng(seed)
    samples = a[rng.integers(0, a.size, size=(n_boot, a.size))]
    stats = stat(samples, axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def describe(values: Sequence[float], seed: int = 0, threshold: float = OUTLIER_THRESHOLD) -> dict:
    """Every summary statistic of one sample, as a dict.

    Keys: n, median, q1, q3, iqr, min, max, mean, sd (sample, ddof=1),
    ci_low, ci_high (bootstrap 95 % CI of the median), outliers (count).
    Quartiles use linear interpolation (numpy's and pandas' default).
    """
    a = _array(values)
    if a.size == 0:
        return {"n": 0, **{k: math.nan for k in ("median", "q1", "q3", "iqr", "min", "max", "mean", "sd",
                                                  "ci_low", "ci_high")}, "outliers": 0}
    q1, med, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    lo, hi = bootstrap_ci(a, seed=seed)
    return {
        "n": int(a.size), "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
        "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
        "sd": float(a.std(ddof=1)) if a.size > 1 else math.nan,
        "ci_low": lo, "ci_high": hi, "outliers": int(outliers(a, threshold).sum()),
    }


def ratio_sd(mean: float, sd: float, ref_mean: float, ref_sd: float) -> float:
    """Standard deviation of ``mean / ref_mean`` by first-order error propagation (as hyperfine)."""
    ratio = mean / ref_mean
    rel = (sd / mean) ** 2 if mean else 0.0
    rel_ref = (ref_sd / ref_mean) ** 2 if ref_mean else 0.0
    return abs(ratio) * math.sqrt(np.nan_to_num(rel) + np.nan_to_num(rel_ref))


def ratio_ci(values: Sequence[float], ref: Sequence[float], level: float = 0.95, n_boot: int = N_BOOT,
             seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of ``median(values) / median(ref)``, both samples resampled independently."""
    a, b = _array(values), _array(ref)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, size=(n_boot, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, size=(n_boot, b.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ma / mb
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(r, [alpha, 1 - alpha])
    return float(lo), float(hi)


#: What identifies one sample in a results frame (``host`` only in a fleet run's frame; ``start`` and
#: ``pool`` only in a study of start modes).
GROUP = ["host", "part", "image", "runtime", "kernel", "start", "pool", "ksm", "vm_memory", "kind", "workload",
         "metric", "component", "n",
         "unit"]


def measured(df, misses: bool = False):
    """The rows statistics are computed on: completed runs, warmups excluded, and warm starts that
    found nothing waiting (``pool == "miss"``: they paid for their container or template) unless
    ``misses``."""
    keep = (~df["warmup"].astype(bool)) & (df["status"] == "ok")
    if not misses and "pool" in df.columns:
        keep &= df["pool"] != "miss"
    return df[keep]


def summarize(df, seed: int = 0, misses: bool = False):
    """One row per sample (runtime x image x workload x metric ..., and host when the frame has a
    ``host`` column) with :func:`describe`'s columns.

    Warmup runs and failed runs are left out, and warm-start misses unless ``misses`` (then
    apart from the hits: ``pool`` is part of what identifies a sample); ``n`` counts what remained.
    """
    import pandas as pd

    data = measured(df, misses)
    rows = []
    keys = [k for k in GROUP if k in data.columns]
    for key, grp in data.groupby(keys, dropna=False, sort=False):
        stats = describe(grp["value"].to_numpy(), seed=seed)
        stats["runs"] = stats.pop("n")
        rows.append({**dict(zip(keys, key)), **stats})
    return pd.DataFrame(rows)


def relative(df, metric: str = "launch_to_exit", baseline: str = "process", seed: int = 0,
             misses: bool = False):
    """Each runtime against ``baseline`` for one metric, as hyperfine's comparison.

    A frame with a ``host`` column (a fleet run) is compared host by host: each runtime against
    the baseline measured on the same host, and the result has a ``host`` column first. Warm-start
    misses are left out unless ``misses`` (see :func:`measured`).

    Columns: median, ratio (of medians), ratio_low/ratio_high (bootstrap 95 %
    CI of that ratio), mean_ratio and mean_ratio_sd (hyperfine's "x ± y times").
    Empty when the baseline has no data for that metric.
    """
    import pandas as pd

    if "host" in df.columns:
        parts = [relative(g.drop(columns="host"), metric, baseline, seed, misses).assign(host=h)
                 for h, g in df.groupby("host", sort=False)]
        parts = [p for p in parts if len(p)]
        if not parts:
            return pd.DataFrame()
        res = pd.concat(parts, ignore_index=True)
        return res[["host"] + [c for c in res.columns if c != "host"]]
    data = measured(df, misses)
    data = data[data["metric"] == metric]
    out = []
    for (image, workload), cell in data.groupby(["image", "workload"], sort=False):
        ref = cell[cell["runtime"] == baseline]["value"].to_numpy()
        if ref.size == 0:
            # The baseline was not run with this image (the bare process ignores images anyway).
            ref = data[(data["runtime"] == baseline) & (data["workload"] == workload)]["value"].to_numpy()
        if ref.size == 0:
            continue
        ref_mean, ref_sd = float(np.mean(ref)), float(np.std(ref, ddof=1)) if ref.size > 1 else 0.0
        for runtime, grp in cell.groupby("runtime", sort=False):
            v = grp["value"].to_numpy()
            lo, hi = ratio_ci(v, ref, seed=seed)
            mean, sd = float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0
            out.append({"image": image, "workload": workload, "runtime": runtime, "kind": grp["kind"].iloc[0],
                        "metric": metric, "median": float(np.median(v)),
                        "ratio": float(np.median(v) / np.median(ref)), "ratio_low": lo, "ratio_high": hi,
                        "mean_ratio": mean / ref_mean, "mean_ratio_sd": ratio_sd(mean, sd, ref_mean, ref_sd)})
    res = pd.DataFrame(out)
    return res.sort_values("ratio").reset_index(drop=True) if len(res) else res
