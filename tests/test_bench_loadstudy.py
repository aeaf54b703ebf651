"""Load workloads in a study: rows in the tidy frame, relative() with CIs, figures, save/load with the
raw outputs, failure rows with their reason, the CLI/magic options (the reference findings: see
tests/test_bench_findings.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from kit.bench import Study, build_parser, findings, loadpart
from kit.bench.options import study_kwargs
from kit.errors import InvalidSpec

from tests.conftest import need

RUNTIMES = ["process", "runc", "lxc"]


@pytest.fixture(scope="module")
def study():
    for rt in RUNTIMES:
        need(rt)
    # fileio-volume: the bare process cannot mount a volume, so it gives a failure row with the reason.
    s = Study(runtimes=RUNTIMES, workload=["cpu", "fileio-volume"], repeat=2, warmup=1, seconds=1, seed=2,
              progress=False, name="load")
    s.run()
    return s


def test_load_rows_relative_and_environment(study):
    df = study.df
    assert study.parts == ("load",) and set(df["part"]) == {"load"}
    ok = df[df["status"] == "ok"]
    cpu = ok[(ok["workload"] == "cpu") & (ok["metric"] == "throughput")]
    assert set(cpu["runtime"]) == set(RUNTIMES) and (cpu["unit"] == "events/s").all() and (cpu["value"] > 0).all()
    assert sorted(cpu.groupby("runtime")["round"].apply(sorted).iloc[0]) == [0, 1, 2]  # warmup + 2 rounds
    assert cpu["warmup"].sum() == len(RUNTIMES)
    fio = ok[ok["workload"] == "fileio-volume"]
    assert {"p50", "p95", "p99", "cpu_per_op", "throughput"} <= set(fio["metric"])
    failed = df[(df["runtime"] == "process") & (df["workload"] == "fileio-volume")]
    assert list(failed["metric"]) == ["failed"] and "cannot mount volumes" in failed["status"].iloc[0]
    rel = study.relative()  # a study of loads only: throughput
    r = rel[rel["workload"] == "cpu"].set_index("runtime")
    assert r.loc["process", "ratio"] == 1 and set(r.index) == set(RUNTIMES)
    assert ((r["ratio_low"] <= r["ratio"]) & (r["ratio"] <= r["ratio_high"])).all()
    # p99 per operation, fio's read and write apart; the bare process cannot mount the volume, so there is
    # no process baseline (and sysbench cpu reports no p99): nothing against the process, runc as baseline
    assert study.relative("p99").empty
    p99 = study.relative("p99", baseline="runc")
    assert set(p99["component"]) == {"read", "write"} and set(p99["runtime"]) == {"runc", "lxc"}
    assert (p99[p99["runtime"] == "runc"]["ratio"] == 1).all() and (p99["ratio"] > 0).all()
    s = study.summary("load")
    assert {"throughput", "cpu_per_op"} <= set(s["metric"])
    pin = study.meta["environment"]["load_pinning"]
    assert pin["instance"] and pin["generator"] and pin["instance"] != pin["generator"]
    assert "sysbench" in study.raw("cpu", "runc") and "events per second" in study.raw("cpu", "runc", round=1)
    with pytest.raises(InvalidSpec, match="no raw output of load 'redis'"):
        study.raw("redis", "runc")


def test_figures_save_and_load_round_trip(study, tmp_path):
    figs = study.plot()
    assert {"load", "latency"} <= set(figs)
    d = study.save(tmp_path / "s")
    assert (d / "load.png").exists() and (d / "latency.png").exists()
    text = (d / "README.md").read_text()
    assert "Under load: throughput" in text and "![load](load.png)" in text and "startup.png" not in text
    back = Study.read(d)
    assert back.loads == ("cpu", "fileio-volume") and back.parts == ("load",) and back.seconds == 1
    pd.testing.assert_frame_equal(back.relative(), study.relative())
    assert back.raw("fileio-volume", "lxc") == study.raw("fileio-volume", "lxc")
    assert len(back.findings()) == len(findings.FINDINGS)


def test_resume_measures_only_unfinished_load_cells(study):
    df = study.df
    cut = df[~((df["workload"] == "cpu") & (df["runtime"] == "runc") & (df["round"] == 2))]
    todo = loadpart.unfinished(cut, ["cpu", "fileio-volume"], RUNTIMES, last_round=2)
    assert todo == {"cpu": ["runc"]}  # the process's volume failure is a finished cell


def test_resume_remeasures_an_unfinished_load_cell_whole(study, tmp_path):
    again = Study.read(study.save(tmp_path / "s", figures=False))
    df = again.df
    again.df = df[~((df["workload"] == "cpu") & (df["runtime"] == "runc") & (df["round"] == 2))]
    again.outputs.records = [r for r in again.outputs.records if (r["workload"], r["runtime"], r["round"])
                             != ("cpu", "runc", 2)]
    again.run(resume=True)
    cpu = again.df[(again.df["workload"] == "cpu") & (again.df["metric"] == "throughput")]
    assert sorted(cpu[cpu["runtime"] == "runc"]["round"]) == [0, 1, 2]  # measured again whole, not doubled
    assert len(cpu[cpu["runtime"] == "lxc"]) == 3 and again.meta["partial"] is None
    fio = again.df[again.df["workload"] == "fileio-volume"]
    assert len(fio) == len(study.df[study.df["workload"] == "fileio-volume"])  # finished cells are kept as they were
    assert "events per second" in again.raw("cpu", "runc", round=2)


def test_bench_magic_takes_load_names(ip):
    need("process")
    s = ip.run_line_magic("bench", "-r process --seconds 1 -n 1 --warmup 0 --no-progress cpu")
    assert s.loads == ("cpu",) and s.parts == ("load",)
    assert (s.df[s.df["metric"] == "throughput"]["unit"] == "events/s").all() and len(s.relative()) == 1


def test_names_parts_and_options():
    assert Study(workload=["true", "cpu"], progress=False).parts == ("startup", "memory", "disk", "density", "load")
    assert Study(workload="redis", progress=False).loads == ("redis",)  # a load by default
    s = Study(image="debian-redis", workload="redis", parts="startup", progress=False)
    assert s.loads == () and s.workloads[0].kind == "service"  # the startup preset
    with pytest.raises(InvalidSpec, match="cpu: a load workload"):
        Study(workload="cpu", parts="startup")
    with pytest.raises(InvalidSpec, match="seconds"):
        Study(workload="cpu", seconds=0)
    kw = study_kwargs(build_parser().parse_args(["-r", "process,runc", "--seconds", "2", "cpu", "redis"]))
    assert kw["workload"] == ["cpu", "redis"] and kw["seconds"] == 2 and kw["parts"] is None
    assert study_kwargs(build_parser().parse_args(["echo", "hi"]))["workload"] == "echo hi"  # still a command
