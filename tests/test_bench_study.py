"""A tiny real study (the process baseline and runc), saved, loaded and re-plotted; studies that are
interrupted or meet a failing runtime keep what they measured and resume."""

import dataclasses
import json
import math
import re
from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest
from IPython.core.error import UsageError

import kit
from kit.bench import METRICS, Study, StudyParams, build_parser, magic, startup, storage, tables
from kit.bench.metrics import COLUMNS, definitions
from kit.bench.options import study_kwargs
from kit.bench.workloads import Workload, parse
from kit.errors import InvalidSpec

from tests.conftest import need

matplotlib.use("Agg")

#: The baseline and one container runtime (expected on this machine kind: see conftest.py).
CONTAINER = "runc"
RUNTIMES = ["process", CONTAINER]
REAL_MEASURE = startup.measure  # before any test patches it


@pytest.fixture(scope="module")
def study():
    for rt in RUNTIMES:
        need(rt)
    s = Study(image="busybox", runtimes=RUNTIMES, workload="true", repeat=2, warmup=1, density_max=2,
              seed=3, progress=False, name="tiny")
    s.run()
    return s


def test_startup_rows(study):
    df = study.df
    assert list(df.columns) == COLUMNS
    st = df[df["part"] == "startup"]
    assert (st["status"] == "ok").all(), st[st["status"] != "ok"]["status"].unique()
    for rt in RUNTIMES:
        mine = st[st["runtime"] == rt]
        for metric in ("launch_to_exit", "teardown", "total"):
            rows = mine[mine["metric"] == metric]
            assert len(rows) == 3  # 1 warmup + 2 measured, every run kept
            assert rows["warmup"].sum() == 1
            assert (rows["value"] > 0).all() and (rows["value"] < 60).all()
            assert set(rows["unit"]) == {"s"}
        assert sorted(mine[mine["metric"] == "launch_to_exit"]["repeat"].tolist()) == [0, 0, 1]
    # one clock for every runtime: the request. 'prepare' (request -> the runtime's launch) is a phase,
    # every milestone lies inside launch_to_exit, and 'exited' is its end.
    runs = st.pivot_table(index=["runtime", "round"], columns=["metric", "component"], values="value")
    for (rt, _), run in runs.iterrows():
        l2e = run[("launch_to_exit", "")]
        assert 0 <= run[("phase", "prepare")] < l2e, (rt, run[("phase", "prepare")], l2e)
        assert run[("phase", "exited")] == pytest.approx(l2e, abs=1e-9)
        phases = run["phase"].dropna()
        assert (phases >= 0).all() and (phases <= l2e + 1e-9).all(), (rt, phases.to_dict())
        # total also covers the kit's checks before the request
        assert run[("total", "")] >= l2e + run[("teardown", "")] - 1e-9
    assert set(st[st["metric"] == "phase"]["component"]) >= {"prepare", "exited"}
    assert "requested" not in set(st["component"]) and "launched" not in set(st["component"])
    # the order within each round is recorded, and reproducible from the seed
    assert study.meta["order"] == [[f"{rt}/{i}/{w.name}" for i, rt, w in cells]
                                   for cells in study.plan(RUNTIMES)]


def test_steady_state_rows(study):
    df = study.df[study.df["status"] == "ok"]
    for rt in RUNTIMES:
        mem = df[(df["part"] == "memory") & (df["runtime"] == rt)]
        assert mem[mem["metric"] == "pss"]["value"].iloc[0] > 0
        dens = df[(df["part"] == "density") & (df["runtime"] == rt)]
        assert sorted(dens[dens["metric"] == "density_pss_total"]["n"].tolist()) == [1, 2]
        dsk = df[(df["part"] == "disk") & (df["runtime"] == rt)]
        assert sorted(dsk[dsk["metric"] == "total_for_n"]["n"].tolist()) == [1, 2]
        assert len(dsk[dsk["metric"] == "instance_allocated"]) == 2
    per = df[(df["metric"] == "pss") & (df["runtime"] == CONTAINER)]["value"].iloc[0]
    assert per > df[(df["metric"] == "pss") & (df["runtime"] == "process")]["value"].iloc[0]
    # nothing of the study is left running
    assert not any(n.startswith("b") and "-s" in n for n in kit.ps()["name"])


def test_every_metric_is_defined(study):
    assert set(study.df["metric"]) <= set(METRICS)
    # the definitions travel with the data: in the frame and in the metadata saved with it
    assert study.df.attrs["metrics"] == study.meta["metrics"] == definitions()
    assert study.meta["metrics"]["pss"]["unit"] == "bytes"
    assert study.meta["partial"] is None


def test_environment_record(study):
    env = study.meta["environment"]
    for key in ("host", "kernel", "cpu_model", "cpu_count", "memory_total", "cgroup", "runtimes", "vm_accel",
                "kit_version", "git_commit", "date"):
        assert key in env
    assert env["kit_version"] == kit.__version__
    assert {r["name"] for r in env["runtimes"]} >= {"process", "runc", "qemu"}


def test_summary_and_relative(study):
    s = study.summary("startup")
    row = s[(s["runtime"] == "process") & (s["metric"] == "launch_to_exit")].iloc[0]
    assert row["runs"] == 2 and row["min"] <= row["median"] <= row["max"]
    rel = study.relative()
    assert rel.set_index("runtime").loc["process", "ratio"] == 1.0
    assert rel.set_index("runtime").loc[CONTAINER, "ratio"] > 1.0


def test_save_load_round_trip_and_replot(study, tmp_path):
    d = study.save(tmp_path / "res")
    for f in ("results.csv", "study.json", "summary.csv", "startup.png", "memory.png", "disk.png", "density.png"):
        assert (d / f).exists(), f
    loaded = Study.read(d)
    pd.testing.assert_frame_equal(loaded.df, study.df)
    assert loaded.meta["environment"] == json.loads(json.dumps(study.meta["environment"]))
    figs = loaded.plot()
    assert {"startup", "memory", "disk", "density"} <= set(figs)
    assert "VM accelerator" in figs["startup"]._suptitle.get_text()
    pd.testing.assert_frame_equal(loaded.summary(), study.summary())
    # the definitions saved with the data come back with it, in the frame and in the metadata
    assert loaded.df.attrs["metrics"] == loaded.meta["metrics"] == study.meta["metrics"]
    readme = (d / "README.md").read_text()
    assert "## Definitions" in readme
    assert re.search(r"^\| `launch_to_exit` +\| s +\| run-to-exit workloads: from the request", readme, re.M)
    assert "|:--" in readme or "|---" in readme  # tables made by tabulate


def test_markdown_tables_come_from_tabulate():
    df = pd.DataFrame({"runtime": ["process", "qemu"], "median ms": [1.23456, 4567.8], "ratio": [1.0, math.nan]})
    lines = tables.table(df).splitlines()
    assert lines[0].split("|")[1:4] == [" runtime   ", "   median ms ", "   ratio "]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [["process", "1.23", "1"], ["qemu", "4568", ""]]  # 3 significant figures; whole from 100


def test_storage_keeps_awkward_strings(tmp_path):
    df = pd.DataFrame([{"study": "s", "part": "memory", "runtime": "x", "metric": "pss_by_process",
                        "component": "NA", "value": 1.5, "warmup": True, "status": "ok"}])
    storage.save(tmp_path, df, {"x": float("nan")})
    back, meta = storage.read(tmp_path)
    assert back.loc[0, "component"] == "NA" and bool(back.loc[0, "warmup"]) and back.loc[0, "value"] == 1.5
    # none given: today's definitions are saved with the rows, and their fingerprint
    assert meta == {"x": None, "metrics": kit.bench.metrics.definitions(),
                    "metrics_fingerprint": kit.bench.metrics.fingerprint()}


def test_bad_options_are_one_line_errors():
    with pytest.raises(InvalidSpec, match="repeat"):
        Study(repeat=0)
    with pytest.raises(InvalidSpec, match="part"):
        Study(parts="startup,speed")
    with pytest.raises(InvalidSpec, match="memory"):
        Study(idle_memory="lots")
    with pytest.raises(InvalidSpec, match="run"):
        Study().summary()
    with pytest.raises(kit.errors.RuntimeUnavailable, match="unknown runtime"):
        Study(runtimes="nope").resolve_runtimes()
    with pytest.raises(InvalidSpec, match=r"^bench: argument -n/--repeat: invalid int value: 'many'"):
        magic("--repeat many")
    with pytest.raises(UsageError):  # the magic's parser is IPython's: it raises, never exits
        build_parser().parse_args(["--repeat", "many"])


def test_parameters_are_kept_checked_and_saved_in_one_form():
    svc = Workload.service("svc", ["srv", "-p", "{port}"], tcp=b"PING\r\n")
    p = StudyParams(image=["busybox", "debian-bench"], runtimes="process, runc", workload=["true", svc, "cpu"],
                    repeat=3, parts="startup,load", starts="cold,precreated", density_memory_budget="1g")
    assert (p.image, p.runtimes, p.parts, p.starts) == (("busybox", "debian-bench"), ("process", "runc"),
                                                        ("startup", "load"), ("cold", "precreated"))
    assert [w.name for w in p.workloads] == ["true", "svc"] and p.loads == ("cpu",)
    assert (p.vm_repeat, p.density_memory_budget) == (3, 2**30)  # resolved: min(repeat, 5); bytes
    saved = json.loads(json.dumps(p.to_dict()))  # as study.json keeps it
    assert StudyParams.from_dict(saved) == p and "progress" not in saved and saved["images"] == list(p.image)
    assert StudyParams.from_dict(saved).workloads[1].tcp == b"PING\r\n"
    # a study's parameters are fixed; another value is another study
    s = Study(p.image, p.runtimes, list(p.workload), 3, parts=p.parts, starts=p.starts)
    assert s.params == dataclasses.replace(p, density_memory_budget="4g") and s.repeat == 3
    with pytest.raises(AttributeError, match="fixed"):
        s.repeat = 5
    assert Study.from_params(s.params, repeat=5).repeat == 5 and s.repeat == 3
    assert Study.from_params(saved).progress is False  # a study read back shows no progress bar


def test_parser_matches_study_options():
    ns = build_parser().parse_args(["-r", "process,runc", "-n", "3", "--parts", "startup", "echo", "hi there"])
    kw = study_kwargs(ns)
    assert kw["runtimes"] == "process,runc" and kw["repeat"] == 3
    s = Study(**kw)
    assert s.runtimes == ("process", "runc") and s.params == StudyParams(**kw)
    assert s.workloads[0].argv == ("echo", "hi there") and s.parts == ("startup",)
    # every parameter is an option, with its help; and the defaults are the parameters' own
    assert StudyParams(**study_kwargs(build_parser().parse_args([]))) == StudyParams()
    text = build_parser().format_help()
    for f in dataclasses.fields(StudyParams):
        flag = f.name if f.name == "workload" else "--no-progress" if f.name == "progress" else \
            "--" + f.name.replace("_", "-")
        assert flag in text or flag.upper() in text, flag
        assert f.metadata["help"].split()[0] in text and f.metadata["help"].split()[0] in Study.__doc__


def test_workload_parsing():
    assert parse("idle").kind == "idle"
    assert parse("echo 'a b'").argv == ("echo", "a b")
    assert parse("httpd").needs_port
    assert Workload.service("w", ["srv", "-p", "{port}"], tcp=True).command(8080) == ["srv", "-p", "8080"]
    with pytest.raises(InvalidSpec):
        Workload.service("w", ["srv"])  # a service needs a readiness probe
    with pytest.raises(InvalidSpec):
        parse("'unbalanced")


def test_magic_and_cli_run_a_study(tmp_path, capsys):
    from kit.cli import main

    s = magic("-r process -n 2 --warmup 0 --parts startup --no-progress echo hi")
    assert set(s.df["runtime"]) == {"process"} and (s.df["status"] == "ok").all()
    assert "startup" in s._repr_html_()
    assert main(["bench", "-r", "process", "-n", "2", "--parts", "startup", "--no-progress", "--no-figures",
                 "-o", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "results.csv").exists() and (tmp_path / "cli" / "README.md").exists()
    assert "launch_to_exit" in capsys.readouterr().out
    assert main(["bench", "-r", "nope", "--no-progress"]) == 2


def test_service_workload_is_timed_to_readiness():
    for rt in RUNTIMES:
        need(rt)
    s = Study(runtimes=RUNTIMES, workload="httpd", repeat=1, warmup=0, parts="startup", progress=False)
    df = s.run()
    assert (df["status"] == "ok").all(), df["status"].unique()
    ready = df[df["metric"] == "launch_to_ready"]
    assert set(ready["runtime"]) == set(RUNTIMES) and (ready["value"] > 0).all()
    assert not (df["metric"] == "launch_to_exit").any()
    prepare = df[(df["metric"] == "phase") & (df["component"] == "prepare")].set_index("runtime")["value"]
    assert (prepare < ready.set_index("runtime")["value"]).all()


def _interrupt_after(monkeypatch, n: int) -> list:
    """startup.measure runs for real ``n`` times, then raises KeyboardInterrupt (Ctrl-C in a notebook)."""
    calls, real = [], REAL_MEASURE

    def measure(runtime, image, workload, name, timeout, memory=None):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append((runtime, name))
        return real(runtime, image, workload, name, timeout, memory)

    monkeypatch.setattr(startup, "measure", measure)
    return calls


def test_interrupted_study_keeps_its_runs_and_resumes(monkeypatch, tmp_path):
    need("process")
    s = Study(runtimes="process", workload="true", repeat=5, warmup=1, parts="startup", progress=False, seed=1)
    calls = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        s.run()
    assert len(calls) == 3
    done = s.df[s.df["metric"] == "launch_to_exit"]
    assert sorted(done["round"].tolist()) == [0, 1, 2] and (done["status"] == "ok").all()
    assert "KeyboardInterrupt" in s.meta["partial"] and "partial" in repr(s)
    # a partial study saves and loads as it is, and says so
    d = s.save(tmp_path / "partial", figures=False)
    assert "Partial study" in (d / "README.md").read_text()
    loaded = Study.read(d)
    assert loaded.meta["partial"] == s.meta["partial"]
    first = loaded.df.copy()

    calls = _interrupt_after(monkeypatch, 100)
    df = loaded.run(resume=True)
    assert len(calls) == 3  # only rounds 3, 4 and 5 ran again
    l2e = df[df["metric"] == "launch_to_exit"]
    assert sorted(l2e["round"].tolist()) == [0, 1, 2, 3, 4, 5]
    assert loaded.meta["partial"] is None and len(loaded.meta["resumed"]) == 1
    # the runs measured before the interruption are kept unchanged
    pd.testing.assert_frame_equal(df.iloc[:len(first)], first)
    assert loaded.summary("startup").set_index("metric").loc["launch_to_exit", "runs"] == 5
    # resuming a finished study measures nothing
    calls = _interrupt_after(monkeypatch, 100)
    assert len(loaded.run(resume=True)) == len(df) and calls == []


def test_a_failing_runtime_is_recorded_and_the_others_go_on(monkeypatch):
    for rt in RUNTIMES:
        need(rt)
    real = REAL_MEASURE

    def measure(runtime, image, workload, name, timeout, memory=None):
        if runtime == CONTAINER:
            raise RuntimeError("the runtime broke")  # not a KitError: a bug or a host failure
        return real(runtime, image, workload, name, timeout, memory)

    monkeypatch.setattr(startup, "measure", measure)
    s = Study(runtimes=RUNTIMES, workload="true", repeat=5, warmup=0, parts="startup", progress=False)
    df = s.run()
    ok = df[(df["runtime"] == "process") & (df["metric"] == "launch_to_exit")]
    assert len(ok) == 5 and (ok["status"] == "ok").all()
    broken = df[df["runtime"] == CONTAINER]
    assert set(broken["metric"]) == {"failed"}
    assert set(broken["status"]) == {"error: RuntimeError: the runtime broke"}
    assert len(broken) == 3  # dropped after MAX_CONSECUTIVE_FAILURES
    assert s.meta["dropped"] == {CONTAINER: "error: RuntimeError: the runtime broke"}
    assert s.meta["partial"] is None


def test_memory_table_shows_monitors_apart_from_pss():
    MiB = 1024 * 1024
    rows = [("process", "pss", "", 1), ("runc", "pss", "", 2), ("runc", "pss_by_process", "sleep", 2),
            ("runc", "monitor_pss", "runc", 8), ("docker", "pss", "", 3), ("docker", "monitor_pss", "shim-a", 4),
            ("docker", "monitor_pss", "shim-b", 1), ("docker", "daemon_pss", "dockerd", 50)]
    df = storage.normalise(pd.DataFrame([{"part": "memory", "image": "busybox", "runtime": rt, "metric": m,
                                          "component": c, "value": v * MiB, "status": "ok", "warmup": False}
                                         for rt, m, c, v in rows]))
    t = tables.memory_table(SimpleNamespace(df=df))
    assert list(t.index) == ["process", "runc", "docker", "(daemon) dockerd"]
    assert t["pss MiB"].tolist() == [1, 2, 3, 50]  # monitors are not in pss
    assert t.loc["runc", "monitor_pss MiB"] == 8 and t.loc["docker", "monitor_pss MiB"] == 5  # summed per instance
    assert math.isnan(t.loc["process", "monitor_pss MiB"])
