"""Start storms (kit.bench.storm, issue 24): N real starts at once on every runtime, each figure
checked against what the test itself measures around the storm; the caps refuse before anything
starts, and a storm with no room stops the runtime's storms cleanly with what was measured.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import kit
from conftest import EXPECTED_HERE, need
from kit.bench import Study, StudyParams, plan, storm
from kit.bench.workloads import parse

#: ~30 ms of a shell's own arithmetic per start (no system calls): a storm of 4 is then several ticks of
#: the host CPU clock (1/USER_HZ per CPU), where 4 bare `true`s, the kit's share of a start now a few ms,
#: once read 0 ticks (a fresh make test, process runtime: storm_cpu_per_start 0.0).
BUSY = parse("sh -c 'i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done'")


def _left(prefix: str) -> list[str]:
    """Instances of ``prefix`` the kit still lists, and processes still named with it."""
    names = [n for n in kit.ps()["name"] if n.startswith(prefix)]
    procs = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
             if any(prefix in a for a in (p.info["cmdline"] or []))]
    return names + [str(p) for p in procs]


@pytest.mark.parametrize("runtime", EXPECTED_HERE)
def test_storm_of_4_gives_4_results_and_leaves_nothing(runtime):
    need(runtime)
    prefix = f"tst-{runtime}-{time.monotonic_ns() % 10**6}"
    busy0, t0 = storm.host_cpu(), time.time()
    rows = storm.run(runtime, "busybox", BUSY, 4, prefix, timeout=120)
    t1, busy1 = time.time(), storm.host_cpu()
    by = {m: [r for r in rows if r["metric"] == m] for m in {r["metric"] for r in rows}}
    assert not by.get("failed"), by.get("failed")
    assert len(by["launch_to_exit"]) == len(by["total"]) == 4
    assert by["storm_failures"][0]["value"] == 0
    wall = by["storm_wall"][0]["value"]
    # a part is never longer than its whole: each instance inside the storm, the storm inside the test's clock
    l2e = [r["value"] for r in by["launch_to_exit"]]
    total = [r["value"] for r in by["total"]]
    assert all(0 < a <= t + 0.005 for a, t in zip(l2e, total))
    assert max(total) <= wall + 0.005 <= (t1 - t0) + 0.01
    # starts/s is the successes over the wall time, and no more than the test's own clock allows
    assert by["storm_starts_per_s"][0]["value"] == pytest.approx(4 / wall)
    assert 4 / (t1 - t0) <= by["storm_starts_per_s"][0]["value"] * 1.01
    # host CPU per start: inside what the whole host spent over the test's clock (1/USER_HZ per CPU of slack)
    assert 0 < by["storm_cpu_per_start"][0]["value"] * 4 <= (busy1 - busy0) + 0.05
    kit.api.wait_until_quiet()
    assert _left(prefix) == []


def test_release_starts_every_thread_together():
    got = storm.release(8, lambda i: time.time(), timeout=10)
    began = np.array(got.results)
    # every call began after the release and within a moment of it (0.5 s: two busy cores)
    assert (began >= got.at - 1e-6).all() and began.max() - got.at < 0.5
    assert all(e >= b for e, b in zip(got.ended, began))


def test_past_the_caps_refused_before_anything_starts():
    with pytest.raises(kit.errors.InvalidSpec, match="from 1 to 64"):
        StudyParams(runtimes=["process"], storm=[4, 65])
    with pytest.raises(kit.errors.InvalidSpec, match="whole number"):
        StudyParams(runtimes=["process"], storm="4,x")
    p = StudyParams(runtimes=["process", "runc"], storm=[64], repeat=40, warmup=0)  # 64 x 40 x 2 > 5000
    before = set(kit.ps()["name"])
    with pytest.raises(kit.errors.InvalidSpec, match="more than the cap of 5000"):
        plan.storms(p, ["process", "runc"])
    with pytest.raises(kit.errors.InvalidSpec, match="more than the cap"):
        Study.from_params(p, progress=False).run()
    assert set(kit.ps()["name"]) == before
    with pytest.raises(kit.errors.InvalidSpec, match="runs workloads to their exit"):
        StudyParams(runtimes=["process"], storm=[1], workload="httpd")


def test_study_of_storms_and_its_table():
    s = Study(runtimes=["process", "runc"], storm=[1, 4], repeat=2, warmup=0, progress=False, name="storm-t")
    s.run()
    assert s.params.parts == ("storm",)
    t = storm.table(s.df).set_index(["runtime", "N"])
    assert set(t.index) == {("process", 1), ("process", 4), ("runc", 1), ("runc", 4)}
    assert (t["rounds"] == 2).all() and (t["failures"] == 0).all()
    for (rt, n), row in t.iterrows():
        d = s.df[(s.df["runtime"] == rt) & (s.df["n"] == n)]
        l2e = np.sort(d[d["metric"] == "launch_to_exit"]["value"].to_numpy())
        assert len(l2e) == 2 * n
        # p99 of fewer than 100 values lies between the two largest (or is the largest of one)
        assert l2e[-min(2, len(l2e))] * 1e3 <= row["p99 ms"] <= l2e[-1] * 1e3 + 1e-9
        assert row["median ms"] == pytest.approx(np.median(l2e) * 1e3)
        per = d[d["metric"] == "storm_starts_per_s"]["value"]
        walls = d[d["metric"] == "storm_wall"]["value"]
        assert row["starts/s"] == pytest.approx(np.median(n / walls.to_numpy()))
        assert row["starts/s"] == pytest.approx(per.median())
    fig = s.plot(["storm"])["storm"]
    ref = [ln for ln in fig.axes[0].get_lines() if "reference" in str(ln.get_label())]
    cores = s.meta["environment"]["cpu_count"]
    assert len(ref) == 1 and ref[0].get_ydata()[0] == pytest.approx(5 * cores)
    assert any("github.com/firecracker-microvm" in t.get_text() for t in fig.texts)


def test_a_storm_without_room_stops_cleanly(monkeypatch):
    """Memory the host does not have: the runtime's storms stop before starting one, with a row that
    says why, and the storms measured before stay."""
    free = psutil.virtual_memory().available
    real = storm.headroom
    monkeypatch.setattr(storm, "headroom", lambda kind, n, vm=None: real(kind, n, vm) if n < 4 else
                        f"{free / 2**20:.0f} MiB available, a storm of {n} needs more")
    s = Study(runtimes=["process"], storm=[1, 4, 16], repeat=1, warmup=0, progress=False, name="storm-room")
    s.run()
    d = s.df
    assert len(d[(d["metric"] == "launch_to_exit") & (d["n"] == 1)]) == 1
    stopped = d[d["metric"] == "failed"]
    assert stopped["n"].tolist() == [4] and stopped["status"].iloc[0].startswith("stopped: no room")
    assert "storm of 4" in s.meta["storm_stopped"]["process"]
    assert storm.stopped([{"metric": "failed", "status": "error: fork: Resource temporarily unavailable"},
                          {"metric": "launch_to_exit", "status": "ok"}]).startswith("the host ran out")
    assert storm.stopped([{"metric": "failed", "status": "exit 1: no such file"},
                          {"metric": "launch_to_exit", "status": "ok"}]) is None


def test_bench_magic_and_command_line_storm(ip, tmp_path):
    s = ip.run_line_magic("bench", "--storm 2 -r process --repeat 1 --warmup 0 --no-progress")
    assert s.params.parts == ("storm",) and s.params.storm == (2,)
    t = storm.table(s.df)
    assert t[["runtime", "N", "rounds", "failures"]].values.tolist() == [["process", 2, 1, 0]]
    p = subprocess.run([sys.executable, "-m", "kit.cli", "bench", "--storm", "1", "-r", "process", "--repeat", "1",
                        "--warmup", "0", "--no-progress", "-o", str(tmp_path / "s")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "## Start storms" in (tmp_path / "s" / "README.md").read_text() and (tmp_path / "s" / "storm.png").exists()
    bad = subprocess.run([sys.executable, "-m", "kit.cli", "bench", "--storm", "100", "-r", "process"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "from 1 to 64" in bad.stderr and "Traceback" not in bad.stderr


def test_failed_starts_are_counted_not_started():
    rows = storm.run("process", "busybox", parse("false"), 3, f"tstf-{time.monotonic_ns() % 10**6}", timeout=60)
    got = {m: [r for r in rows if r["metric"] == m] for m in {r["metric"] for r in rows}}
    assert got["storm_failures"][0]["value"] == 3 and len(got["failed"]) == 3
    assert all(r["status"].startswith("exit 1") for r in got["failed"])
    assert got["storm_starts_per_s"][0]["value"] == 0 and "storm_cpu_per_start" not in got
    assert storm.table(_frame(rows))["failures"].tolist() == [3]


def _frame(rows):
    """Storm rows as a study's frame (the columns storm.table groups by)."""
    import pandas as pd

    from kit.bench.storage import normalise

    return normalise(pd.DataFrame([{"image": "busybox", "runtime": "process", "kind": "process", "workload": "false",
                                    "round": 0, "warmup": False, **r} for r in rows]))
