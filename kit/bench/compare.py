"""Is the difference larger than the noise? Studies from different hosts or dates, compared.

>>> from kit import bench
>>> bench.compare(["results/monday", "results/friday"])            # saved studies
>>> bench.compare([fleet_study])                                    # the hosts of one fleet run

Each study (or each host of a fleet study) is an entry; every entry after the first is compared
with the first, per image, workload, runtime and metric measured in both.

The rule is :func:`difference`, the one every verdict of the kit uses (these comparisons and the
reference findings of :mod:`kit.bench.findings`): the ratio of medians (other / first) and its
percentile bootstrap confidence interval, each sample resampled on its own
(:func:`kit.bench.stats.ratio_ci`); when the interval excludes 1, the difference may be larger
than the noise, and a two-sided Mann-Whitney U test must agree (p below ``1 - level``), as
hyperfine's ``scripts/welch_ttest.py`` adds a test to its comparison: SciPy's when installed,
else the same test by permutation of the ranks (exact for small samples, seeded Monte Carlo
otherwise; ``method`` says which). Below the sizes at which that test can reach ``1 - level`` at
all (:func:`enough_runs`: 3 runs against 3 cannot reach p < 0.05, whatever the bootstrap says;
4 against 4 can), the verdict is ``not enough runs``: a bootstrap interval of so few runs is
not to be trusted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InvalidSpec
from . import stats, storage
from .tables import table

#: What identifies one comparable sample (the host is the entry, not a key).
KEYS = ["part", "image", "workload", "runtime", "kind", "metric", "component", "n", "unit"]


#: Permutations of the Monte Carlo test when the exact one would enumerate more splits than this.
N_PERM = 20000

#: The verdict below the sample sizes at which the rule can decide (see :func:`enough_runs`).
NOT_ENOUGH = "not enough runs"


def _mannwhitney():
    """(name, p_value(b, a)): SciPy's two-sided Mann-Whitney U, else :func:`rank_permutation_p`."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return "Mann-Whitney U (rank permutation)", rank_permutation_p
    return "Mann-Whitney U (SciPy)", lambda b, a, seed=0: float(mannwhitneyu(b, a, alternative="two-sided").pvalue)


def rank_permutation_p(b, a, seed: int = 0) -> float:
    """Two-sided p-value of the Mann-Whitney U statistic by permuting the group labels.

    Exact (every split enumerated) when there are at most :data:`N_PERM` splits, else a seeded
    Monte Carlo estimate. Ties get mid-ranks.

    >>> round(rank_permutation_p([5, 6, 7, 8], [1, 2, 3, 4]), 4)   # 2 of 70 splits are as extreme
    0.0286
    """
    from itertools import combinations

    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled = np.concatenate([b, a])
    ranks = pd.Series(pooled).rank().to_numpy()
    nb, n = b.size, pooled.size
    centre = nb * (n + 1) / 2  # expected rank sum of b under no difference
    observed = abs(ranks[:nb].sum() - centre)
    if math.comb(n, nb) <= N_PERM:
        sums = np.array([ranks[list(c)].sum() for c in combinations(range(n), nb)])
    else:
        rng = np.random.default_rng(seed)
        sums = np.array([ranks[rng.permutation(n)[:nb]].sum() for _ in range(N_PERM)])
    return float(np.mean(np.abs(sums - centre) >= observed - 1e-9))


def min_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value a rank test of ``n_a`` against ``n_b`` runs can give: the most
    extreme split is 2 of the C(n_a + n_b, n_a) equally likely ones (no ties).

    >>> round(min_p(3, 3), 3), round(min_p(4, 4), 4)
    (0.1, 0.0286)
    """
    return min(1.0, 2 / math.comb(n_a + n_b, n_a)) if n_a and n_b else 1.0


def enough_runs(n_a: int, n_b: int, level: float = 0.95) -> bool:
    """Whether ``n_a`` against ``n_b`` runs can show a difference at ``level`` at all (below, the
    verdict is :data:`NOT_ENOUGH`).

    >>> enough_runs(3, 3), enough_runs(3, 4), enough_runs(4, 4), enough_runs(3, 5)
    (False, False, True, True)
    """
    return min(n_a, n_b) >= 2 and min_p(n_a, n_b) < 1 - level


def runs_needed(level: float = 0.95) -> int:
    """The fewest runs per side (equal sizes) with which :func:`difference` can decide at ``level``.

    >>> runs_needed(0.95), runs_needed(0.99)
    (4, 5)
    """
    n = 2
    while not enough_runs(n, n, level):
        n += 1
    return n


def difference(values, ref, level: float = 0.95, seed: int = 0) -> dict:
    """Is the median of ``values`` different from that of ``ref`` beyond the noise? The one rule of
    every verdict of the kit (:func:`compare` and the reference findings).

    Returns:
        ``n``/``n_ref``, ``median``/``median_ref``, ``ratio`` (of medians, values / ref) with its
        bootstrap interval ``ratio_low``/``ratio_high`` at ``level``, ``p_value`` of a two-sided
        Mann-Whitney U test, ``test`` (which implementation) and ``verdict``: ``higher`` or
        ``lower`` when the interval excludes 1 and p < ``1 - level``, else ``within noise``;
        :data:`NOT_ENOUGH` below the sizes at which the test can reach that p at all
        (:func:`enough_runs`), and when the reference median is 0 (no ratio).
    """
    a, b = np.asarray(ref, float), np.asarray(values, float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    ma = float(np.median(a)) if a.size else math.nan
    mb = float(np.median(b)) if b.size else math.nan
    ratio = mb / ma if a.size and b.size and ma else math.nan
    test_name, test = _mannwhitney()
    out = {"n": int(b.size), "n_ref": int(a.size), "median": mb, "median_ref": ma, "ratio": ratio,
           "ratio_low": math.nan, "ratio_high": math.nan, "p_value": math.nan, "test": test_name}
    if not enough_runs(a.size, b.size, level) or not math.isfinite(ratio):
        return {**out, "verdict": NOT_ENOUGH}
    lo, hi = stats.ratio_ci(b, a, level=level, seed=seed)
    p = test(b, a, seed=seed)
    out.update(ratio_low=lo, ratio_high=hi, p_value=p)
    if (lo > 1 or hi < 1) and p < 1 - level:
        return {**out, "verdict": "higher" if lo > 1 else "lower"}
    return {**out, "verdict": "within noise"}


def _entries(studies, labels) -> list[tuple[str, pd.DataFrame]]:
    """(label, frame) per study, or per host of a fleet study. A study is a saved directory (read with
    :func:`kit.bench.storage.read`), a results frame, or anything with ``results()`` and ``meta`` (a
    :class:`~kit.bench.Study`, a :class:`~kit.bench.view.View`)."""
    if isinstance(studies, (pd.DataFrame, str, Path)) or hasattr(studies, "results"):
        studies = [studies]
    out = []
    for i, s in enumerate(studies):
        if isinstance(s, (str, Path)):
            df, meta = storage.read(s)
        elif isinstance(s, pd.DataFrame):
            df, meta = s, {}
        else:
            df, meta = s.results(), s.meta
        if "host" in df.columns:
            for h, g in df.groupby("host", sort=False):
                out.append((str(h), g.drop(columns="host")))
            continue
        env = meta.get("environment") or {}
        label = f"{env.get('host', 'study')} {env.get('date', '')[:19]}".strip() if env else f"study {i + 1}"
        out.append((label, df))
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(out):
            raise InvalidSpec(f"{len(labels)} labels for {len(out)} entries (studies, or hosts of a fleet study)")
        out = [(lab, df) for lab, (_, df) in zip(labels, out)]
    seen: dict[str, int] = {}
    for i, (lab, df) in enumerate(out):  # two saved studies of one host at the same minute stay apart
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            out[i] = (f"{lab} #{seen[lab]}", df)
    if len(out) < 2:
        raise InvalidSpec("compare needs at least two studies (or a fleet study with two hosts)")
    return out


def compare(studies, labels=None, metrics=None, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Verdicts per runtime and metric: is each entry different from the first beyond the noise?

    Args:
        studies: Studies, saved study directories or results frames; a fleet study counts as
            one entry per host.
        labels: names of the entries (default: host and date, or the host labels).
        metrics: metric names to compare (default: every metric measured at least twice, except
            ``failed``).
        level: confidence level of the interval (and 1 - the test's threshold).
        seed: seeds the bootstrap.

    Returns:
        One row per (entry, sample): ``baseline``, ``other``, the keys (image, workload, runtime,
        metric, ...), ``n_baseline``/``n_other``, ``median_baseline``/``median_other``, ``ratio``
        (other / baseline), ``ratio_low``/``ratio_high``, ``change_pct``, ``p_value``, ``method``
        and ``verdict`` (``slower``/``faster`` for times, ``larger``/``smaller`` otherwise,
        ``within noise`` or ``not enough runs``: see :func:`difference`).
    """
    if not 0.5 < level < 1:
        raise InvalidSpec(f"level {level!r} must lie between 0.5 and 1 (e.g. 0.95)")
    entries = _entries(studies, labels)
    method = f"bootstrap CI of the ratio of medians + {_mannwhitney()[0]}"
    base_label, base = entries[0]
    base = stats.measured(base)
    rows = []
    for label, df in entries[1:]:
        other = stats.measured(df)
        keys = [k for k in KEYS if k in base.columns and k in other.columns]
        theirs = {k: g["value"].to_numpy() for k, g in other.groupby(keys, dropna=False, sort=False)}
        for key, g in base.groupby(keys, dropna=False, sort=False):
            rec = dict(zip(keys, key))
            if rec["metric"] == "failed" or (metrics is not None and rec["metric"] not in metrics):
                continue
            a, b = g["value"].to_numpy(), theirs.get(key)
            if b is None:
                continue
            if metrics is None and max(a.size, b.size) < 2:
                continue  # one value per study (disk bytes, a density step): nothing to weigh
            rows.append({"baseline": base_label, "other": label, **rec,
                         **_verdict(a, b, rec.get("unit", ""), level, seed), "method": method})
    cols = ["baseline", "other"] + KEYS + ["n_baseline", "n_other", "median_baseline", "median_other", "ratio",
                                           "ratio_low", "ratio_high", "change_pct", "p_value", "verdict", "method"]
    return pd.DataFrame(rows, columns=cols)


def _verdict(a: np.ndarray, b: np.ndarray, unit: str, level: float, seed: int) -> dict:
    d = difference(b, a, level=level, seed=seed)
    words = {"higher": "slower", "lower": "faster"} if unit == "s" else {"higher": "larger", "lower": "smaller"}
    ratio = d["ratio"]
    return {"n_baseline": d["n_ref"], "n_other": d["n"], "median_baseline": d["median_ref"],
            "median_other": d["median"], "ratio": ratio, "ratio_low": d["ratio_low"], "ratio_high": d["ratio_high"],
            "change_pct": (ratio - 1) * 100 if math.isfinite(ratio) else math.nan, "p_value": d["p_value"],
            "verdict": words.get(d["verdict"], d["verdict"])}


def markdown(verdicts: pd.DataFrame) -> str:
    """The verdicts as a short Markdown table (runtime, metric, medians, ratio with CI, verdict)."""
    if verdicts.empty:
        return "(nothing measured in both)"
    t = pd.DataFrame({
        "other vs baseline": verdicts["other"] + " vs " + verdicts["baseline"],
        "runtime": verdicts["runtime"], "workload": verdicts["workload"],
        "metric": verdicts["metric"] + verdicts["component"].map(lambda c: f" ({c})" if c else ""),
        "runs": verdicts["n_baseline"].astype(str) + " / " + verdicts["n_other"].astype(str),
        "ratio [CI]": [f"{r:.3g} [{lo:.3g}, {hi:.3g}]" for r, lo, hi in
                       zip(verdicts["ratio"], verdicts["ratio_low"], verdicts["ratio_high"])],
        "p": verdicts["p_value"], "verdict": verdicts["verdict"]})
    return table(t)
