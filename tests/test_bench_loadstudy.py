"""Load workloads in a study: rows in the tidy frame, relative() with CIs, figures, save/load with the
raw outputs, failure rows with their reason, the CLI/magic options; and the reference findings
computed from a small known frame."""

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
    p99 = study.relative("p99")  # per operation: fio read and write apart; no process baseline for the volume
    assert p99.empty or set(p99["component"]) <= {"read", "write"}
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
    back = Study.load(d)
    assert back.loads == ["cpu", "fileio-volume"] and back.parts == ("load",) and back.seconds == 1
    pd.testing.assert_frame_equal(back.relative(), study.relative())
    assert back.raw("fileio-volume", "lxc") == study.raw("fileio-volume", "lxc")
    assert len(back.findings()) == len(findings.FINDINGS)


def test_resume_measures_only_unfinished_load_cells(study):
    df = study.df
    cut = df[~((df["workload"] == "cpu") & (df["runtime"] == "runc") & (df["round"] == 2))]
    todo = loadpart.unfinished(cut, ["cpu", "fileio-volume"], RUNTIMES, last_round=2)
    assert todo == {"cpu": ["runc"]}  # the process's volume failure is a finished cell


def test_resume_remeasures_an_unfinished_load_cell_whole(study, tmp_path):
    again = Study.load(study.save(tmp_path / "s", figures=False))
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
    assert s.loads == ["cpu"] and s.parts == ("load",)
    assert (s.df[s.df["metric"] == "throughput"]["unit"] == "events/s").all() and len(s.relative()) == 1


def test_names_parts_and_options():
    assert Study(workload=["true", "cpu"], progress=False).parts == ("startup", "memory", "disk", "density", "load")
    assert Study(workload="redis", progress=False).loads == ["redis"]  # a load by default
    s = Study(image="debian-redis", workload="redis", parts="startup", progress=False)
    assert s.loads == [] and s.workloads[0].kind == "service"  # the startup preset
    with pytest.raises(InvalidSpec, match="cpu: a load workload"):
        Study(workload="cpu", parts="startup")
    with pytest.raises(InvalidSpec, match="seconds"):
        Study(workload="cpu", seconds=0)
    kw = study_kwargs(build_parser().parse_args(["-r", "process,runc", "--seconds", "2", "cpu", "redis"]))
    assert kw["workload"] == ["cpu", "redis"] and kw["seconds"] == 2 and kw["parts"] is None
    assert study_kwargs(build_parser().parse_args(["echo", "hi"]))["workload"] == "echo hi"  # still a command


# -- the reference findings, from a small known frame ---------------------------------------------------

KINDS = {"process": "process", "runc": "container", "lxc": "container", "docker": "container", "runsc": "sandbox",
         "qemu": "vm"}


def frame(values: dict) -> pd.DataFrame:
    """{(workload, component, metric, runtime): [values]} as load rows."""
    rows = [{"part": "load", "image": "debian-bench", "workload": w, "component": c, "metric": m, "runtime": rt,
             "kind": KINDS[rt], "value": v, "warmup": False, "status": "ok", "unit": "", "n": 0}
            for (w, c, m, rt), vs in values.items() for v in vs]
    return pd.DataFrame(rows)


def known(**changes) -> pd.DataFrame:
    v = {("cpu", "cpu", "throughput", rt): [1000, 1010, 990] for rt in ("process", "runc", "lxc", "docker")}
    v |= {("memory", "memory", "throughput", rt): [5000, 5050, 4950] for rt in ("process", "runc", "lxc")}
    v |= {("redis", "GET", "p99", "process"): [1.0, 1.1, 0.9], ("redis", "GET", "p99", "runc"): [1.0, 1.05, 0.95],
          ("redis", "GET", "p99", "docker"): [3.0, 3.1, 2.9], ("redis", "GET", "p99", "qemu"): [20, 21, 19],
          ("redis", "GET", "cpu_per_op", "runc"): [30, 31, 29]}
    v[("redis", "forwarder/request", "cpu_per_op", "runc")] = [30.0, 31.0, 29.0]
    v |= {("fileio", "read", "throughput", "runc"): [900, 910, 890],
          ("fileio-volume", "read", "throughput", "runc"): [905, 900, 895]}
    v |= {("syscall", "syscall", "op_time", "runc"): [400, 410, 390],
          ("syscall", "syscall", "op_time", "runsc"): [9000, 9100, 8900]}
    v.update(changes.pop("values", {}))
    return frame(v)


def verdicts(df, env=None, skipped=None) -> dict:
    f = findings.compute(df, env or {"vm_accel": "tcg", "vm_accel_reason": "no usable /dev/kvm"}, skipped)
    return {r.key: (r.verdict, r.why) for r in f.itertuples()}


def test_findings_from_a_known_frame():
    v = verdicts(known())
    assert v["cpu_memory"][0] == "reproduced" and "runc 1.00×" in v["cpu_memory"][1]
    assert v["vm_latency"][0] == "reproduced" and "TCG" in v["vm_latency"][1] and "I/O not measured" in v["vm_latency"][1]
    assert v["docker_nat"][0] == "reproduced" and "docker-proxy" in v["docker_nat"][1]
    assert "no NAT" in v["docker_nat"][1] and "redis, CPU per request: runc (kit forwarder) 30.0 µs" in v["docker_nat"][1]
    assert v["volume"][0] == "not reproduced" and "runc fileio-volume/read 1.00×" in v["volume"][1]
    assert "MySQL: not measured" in v["volume"][1]
    assert v["syscall"][0] == "reproduced" and "22.5×" in v["syscall"][1]


def test_findings_that_do_not_hold_or_were_not_measured():
    slow = {("cpu", "cpu", "throughput", "lxc"): [500, 505, 495],
            ("syscall", "syscall", "op_time", "runsc"): [600, 610, 590],
            ("fileio-volume", "read", "throughput", "runc"): [2000, 2010, 1990]}
    v = verdicts(known(values=slow))
    assert v["cpu_memory"][0] == "not reproduced" and "lxc cpu not within" in v["cpu_memory"][1]
    assert v["syscall"][0] == "not reproduced" and v["volume"][0] == "reproduced"
    no_vm_docker = known()
    no_vm_docker = no_vm_docker[~no_vm_docker["runtime"].isin(["qemu", "docker"])]
    v = verdicts(no_vm_docker, {"vm_accel": "tcg"}, skipped={"qemu": "no guest kernel"})
    assert v["vm_latency"][0] == "not measured" and "qemu: no guest kernel" in v["vm_latency"][1]
    assert v["docker_nat"][0] == "not measured" and "no NAT" in v["docker_nat"][1]
    assert set(verdicts(pd.DataFrame({"part": ["startup"]})).values()) == {("not measured",
                                                                          "no load workload was run")}
