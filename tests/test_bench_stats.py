"""kit.bench.stats on data whose answers are known by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from kit.bench import stats


def test_describe_known_sample():
    d = stats.describe([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert d["n"] == 9
    assert d["median"] == 5
    assert (d["q1"], d["q3"], d["iqr"]) == (3, 7, 4)  # linear interpolation
    assert (d["min"], d["max"]) == (1, 9)
    assert d["mean"] == 5
    assert d["sd"] == pytest.approx(math.sqrt(7.5))  # sample sd, ddof=1
    assert d["ci_low"] <= 5 <= d["ci_high"]
    assert d["outliers"] == 0


def test_describe_ignores_nan_and_handles_empty():
    assert stats.describe([1.0, float("nan"), 3.0])["n"] == 2
    empty = stats.describe([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_bootstrap_is_seeded_and_degenerate_cases():
    rng = np.random.default_rng(42)
    sample = rng.normal(10, 1, 50)
    a = stats.bootstrap_ci(sample, seed=7)
    assert a == stats.bootstrap_ci(sample, seed=7)
    # medians of resamples are order statistics, so another seed may give the same bounds; means do not
    assert stats.bootstrap_ci(sample, np.mean, seed=7) != stats.bootstrap_ci(sample, np.mean, seed=8)
    assert a[0] < np.median(sample) < a[1]
    assert 9 < a[0] and a[1] < 11
    assert stats.bootstrap_ci([4.0] * 10) == (4.0, 4.0)
    assert stats.bootstrap_ci([3.0]) == (3.0, 3.0)


def test_bootstrap_ci_covers_true_median_most_of_the_time():
    rng = np.random.default_rng(0)
    hits = sum(lo <= 0 <= hi for lo, hi in (stats.bootstrap_ci(rng.normal(0, 1, 40), seed=i, n_boot=500)
                                            for i in range(100)))
    assert hits >= 85  # nominal 95 %; the percentile bootstrap runs a little narrow on small samples


# hyperfine's own test vectors (src/outlier_detection.rs)
@pytest.mark.parametrize("xs, expected", [
    ([], 0), ([50.0], 0), ([1000.0, 0.0], 0),
    ([-0.2, 0.0, 0.2], 0),
    ([-0.2, 0.0, 0.2, 4.0], 1),
    ([0.5, 0.30, 0.29, 0.31, 0.30], 1),
    ([2.33269488, 1.42195907, -0.57527698, -0.31293437, 2.2948158, 0.75813273, -1.0712388, -0.96394741,
      -1.15897446, 1.10976285], 0),
    ([2.33269488, 1.42195907, -0.57527698, -0.31293437, 2.2948158, 0.75813273, -1.0712388, -0.96394741,
      -1.15897446, 1.10976285, 20.0, -500.0], 2),
    ([10.0] * 7 + [100.0], 1),
    ([10.0] * 7 + [100.0, 100.0], 2),
])
def test_outliers_match_hyperfine(xs, expected):
    assert int(stats.outliers(xs).sum()) == expected


def test_modified_zscores_definition():
    z = stats.modified_zscores([1.0, 2.0, 3.0, 4.0, 10.0])  # median 3, MAD 1
    assert list(z) == [-2.0, -1.0, 0.0, 1.0, 7.0]


def test_ratio_sd_propagates_relative_errors():
    # 10 % and 10 % relative error -> sqrt(2) * 10 % on the ratio of 2
    assert stats.ratio_sd(20, 2, 10, 1) == pytest.approx(2 * math.sqrt(0.02))


def _frame(values: dict[str, list[float]], warm: dict[str, list[float]] | None = None) -> pd.DataFrame:
    rows = []
    for rt, vs in values.items():
        for i, v in enumerate(vs):
            rows.append({"part": "startup", "image": "busybox", "runtime": rt, "kind": "x", "workload": "true",
                         "metric": "launch_to_exit", "component": "", "n": pd.NA, "unit": "s", "value": v,
                         "warmup": False, "status": "ok"})
    for rt, vs in (warm or {}).items():
        for v in vs:
            rows.append({**rows[0], "runtime": rt, "value": v, "warmup": True})
    return pd.DataFrame(rows)


def test_summarize_leaves_out_warmups_and_failures():
    df = _frame({"process": [1.0, 2.0, 3.0], "runc": [10.0, 20.0, 30.0]}, warm={"runc": [1000.0]})
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "runtime": "runc", "value": 999.0, "status": "timeout"}
    s = stats.summarize(df).set_index("runtime")
    assert s.loc["runc", "runs"] == 3 and s.loc["runc", "median"] == 20.0 and s.loc["runc", "max"] == 30.0
    assert s.loc["process", "median"] == 2.0


def test_relative_table_against_process():
    df = _frame({"process": [1.0, 2.0, 3.0], "runc": [10.0, 20.0, 30.0], "qemu": [100.0, 200.0, 300.0]})
    r = stats.relative(df).set_index("runtime")
    assert list(r.index) == ["process", "runc", "qemu"]  # fastest first
    assert r.loc["process", "ratio"] == 1.0
    assert r.loc["runc", "ratio"] == 10.0 and r.loc["qemu", "ratio"] == 100.0
    assert r.loc["runc", "mean_ratio"] == 10.0
    assert r.loc["runc", "ratio_low"] <= 10.0 <= r.loc["runc", "ratio_high"]
    assert stats.relative(df, baseline="nothing").empty


def test_one_rule_for_every_verdict_and_not_enough_runs_below_it():
    """kit.bench.compare.difference decides compare() and the findings alike; its size floor is where the rank
    test can reach p < 1 - level at all, checked here against the exact test on fully separated samples."""
    from kit.bench.compare import NOT_ENOUGH, difference, enough_runs, min_p, rank_permutation_p

    for n in range(1, 7):
        for m in range(1, 7):
            apart = rank_permutation_p(list(range(100, 100 + n)), list(range(m)))  # exact: the most extreme split
            assert min_p(n, m) == pytest.approx(apart if n and m else 1.0), (n, m)
            assert enough_runs(n, m) == (min(n, m) >= 2 and apart < 0.05), (n, m)
    far = difference([10.0, 10.1, 10.2], [1.0, 1.1, 1.2])  # 9x apart, 3 against 3: the bootstrap alone would say so
    assert far["verdict"] == NOT_ENOUGH and far["ratio"] == pytest.approx(10.1 / 1.1) and math.isnan(far["p_value"])
    up = difference([10.0, 10.1, 10.2, 10.3], [1.0, 1.1, 1.2, 1.3])
    assert up["verdict"] == "higher" and up["ratio_low"] > 1 and up["p_value"] == pytest.approx(2 / 70)
    down = difference([1.0, 1.1, 1.2, 1.3], [10.0, 10.1, 10.2, 10.3])
    assert down["verdict"] == "lower" and down["ratio_high"] < 1
    same = difference([1.0, 1.2, 1.1, 1.3, 1.05], [1.1, 1.0, 1.25, 1.15, 1.2])
    assert same["verdict"] == "within noise"
    assert difference([1.0] * 5, [0.0] * 5)["verdict"] == NOT_ENOUGH  # no ratio to a zero median
