"""benchmarks/bench_launch.py: the plain CLI's storm launched both ways, on real runc, writes its table
and its record (a run of the script, small: the figures themselves are the committed result's)."""

from __future__ import annotations

import json

import pandas as pd

from tests.conftest import bench_script


def test_both_ways_storm_runc_and_the_table_and_record_are_written(tmp_path):
    bench = bench_script("bench_launch")
    assert bench.main(["--rounds", "2", "--n", "3", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "launch.csv")
    assert sorted(df["launch"].value_counts().items()) == [("process group of its own", 2), ("session of its own", 2)]
    assert (df["failures"] == 0).all() and (df["starts_per_s"] > 0).all()
    # runc, its init and echo ran in each start: their CPU is counted
    assert (df["launched_cpu_ms_per_start"] > 0).all()
    text = (tmp_path / "launch.md").read_text()
    assert "Autogroups" in text and "starts per second" in text
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["bench_launch.py"]["outputs"] == ["launch.csv", "launch.md"]
