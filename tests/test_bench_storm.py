"""benchmarks/bench_storm.py's measure on real runc, small: the driving process's own CPU per start is a
part of the host's CPU per start in the same storms, never more, and the plain launcher's is reported
beside the kit's."""

from __future__ import annotations

from tests.conftest import bench_script


def test_the_driving_process_cpu_is_a_part_of_the_hosts_in_the_same_storms(tmp_path):
    bench = bench_script("bench_storm")
    tmp = tmp_path / "plain"
    tmp.mkdir()
    try:
        df, driver = bench.measure(bench.raw_commands(tmp), ["runc"], [4], rounds=2, warmup=0, seed=3)
    finally:
        bench.cleanup(tmp)
    table = bench.storm.table(df).set_index("runtime")
    mine = bench.driver_table(driver).set_index("runtime")
    assert set(mine.index) == {"cli:runc", "runc", "runc like-for-like"} == set(table.index)
    for rt, row in mine.iterrows():
        own = row["user ms/start"] + row["system ms/start"]
        assert 0 < own <= table.loc[rt, "CPU ms/start"], (rt, own, table.loc[rt, "CPU ms/start"])
        assert row["context switches/start"] > 0
