"""benchmarks/bench_overhead.py's tables from a known frame: the paired differences and each
default's own cost (a display test: the figures are made up, their arithmetic is not)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import bench_script

bench = bench_script("bench_overhead")

#: Per variant: wall ms in round r is BASE[variant] + DRIFT[r] (the neighbours' load, shared by
#: a round), and the runtime process is 10 ms less than the wall.
BASE = {"plain": 20.0, "kit_ro_soft": 22.0, "kit_soft": 25.0, "kit_ro": 23.5, "kit": 27.0}
DRIFT = [0.0, 9.0, -3.0, 30.0, 1.0]


def _frame() -> pd.DataFrame:
    rows = []
    for r, drift in enumerate(DRIFT):
        for v, base in BASE.items():
            row = {"runtime": "lxc", "variant": v, "round": r, "warmup": False, "ok": True,
                   "ms": base + drift, "cpu_ms": base / 2}
            if v != "plain":
                row.update({"api": 0.5, "step_config": 0.25 + (0.5 if v in ("kit_soft", "kit") else 0.0),
                            "prepare_rest": 0.25, "runtime_process": base + drift - 10, "collect": 0.5,
                            "teardown": 3.0 if v in ("kit_soft", "kit") else 1.0})
            rows.append(row)
    rows.append({**rows[0], "round": -1, "warmup": True, "ms": 999.0})  # warmup rows never count
    return pd.DataFrame(rows)


def test_paired_difference_removes_the_rounds_shared_drift():
    df = _frame()
    d = bench.paired(df[~df.warmup], "kit_ro_soft", "plain")
    assert list(d) == pytest.approx([2.0] * len(DRIFT))
    over, _ = bench.summarize(df)
    row = over.set_index("kit").loc["kit_ro_soft"]
    assert row.paired_ms == pytest.approx(2.0) and row.within_target


def test_each_default_is_a_row_of_its_own_against_the_like_for_like_run():
    got = bench.defaults_cost(_frame()).set_index("kit")
    assert set(got.index) == {"kit_soft", "kit_ro", "kit"} and (got.against == "kit_ro_soft").all()
    assert got.loc["kit_soft", "extra_ms"] == pytest.approx(3.0)  # the writable overlay
    assert got.loc["kit_ro", "extra_ms"] == pytest.approx(1.5)  # the hardening
    assert got.loc["kit", "extra_ms"] == pytest.approx(5.0)  # both
    assert got.loc["kit_soft", "extra_iqr"] == pytest.approx(0.0) and (got.rounds == len(DRIFT)).all()
    assert got.loc["kit_soft", "extra_cpu_ms"] == pytest.approx(1.5)
    # Where it lands: the overlay's step, the runtime's process, the removal.
    assert got.loc["kit_soft", "in_prepare"] == pytest.approx(0.5)
    assert got.loc["kit_soft", "in_runtime_process"] == pytest.approx(3.0)
    assert got.loc["kit_soft", "in_teardown_off_path"] == pytest.approx(2.0)
    assert got.loc["kit_ro", "in_teardown_off_path"] == pytest.approx(0.0)
