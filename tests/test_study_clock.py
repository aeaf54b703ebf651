"""The startup clock means what kit.bench.METRICS says (issue 20): every sample starts on a quiet kit,
teardown is the removal itself, a part is never longer than its whole, and readiness and exit are
the same event for every runtime.

Spies here wrap the real functions (they call them and note when they ran); nothing is faked.
"""

from __future__ import annotations

import time

import pytest

import kit
import kit.api as api
from kit import pool, warm
from kit.bench import Study, startup
from kit.bench.workloads import IDLE, parse, started_at
from tests.conftest import need, unique

RUNTIMES = ["process", "runc", "lxc", "runsc", "docker"]
TRUE = parse("true")


class Background:
    """When background work ran: each removal of an instance by its runtime (a foreground run's
    teardown) and each warm-pool fill, as (what, start, end) on the phases' clock; and each foreground
    run's (name, requested, exited). Spies on public methods only: Runtime.remove, Pool.fill, kit.api.run."""

    def __init__(self, monkeypatch):
        self.work: list[tuple[str, float, float]] = []
        self.runs: list[tuple[str, float, float]] = []
        self.removed: dict[str, float] = {}
        real_fill, real_run = pool.Pool.fill, api.run

        def spy(real):
            def remove(state):
                t0 = time.time()
                try:
                    return real(state)
                finally:
                    self.removed[state.name] = time.time()
                    self.work.append((f"removal of {state.name}", t0, self.removed[state.name]))
            return remove

        def fill(pool, rt, spec, image, n=None):
            t0 = time.time()
            try:
                return real_fill(pool, rt, spec, image, n)
            finally:
                self.work.append((f"{rt.name} pool fill", t0, time.time()))

        def run(image, command, runtime=None, **kw):
            r = real_run(image, command, runtime, **kw)
            if not kw.get("detach"):
                self.runs.append((r.name, r.phases["requested"], r.phases["exited"]))
            return r

        for name in kit.runtimes.names():  # the session removes through its runtime (inst.backend)
            rt = kit.runtimes.get(name)
            monkeypatch.setattr(rt, "remove", spy(rt.remove))
        monkeypatch.setattr(pool.Pool, "fill", fill)
        monkeypatch.setattr(api, "run", run)

    def overlaps(self) -> list[str]:
        """Every (run, background work) pair whose spans overlap."""
        return [f"{name} [{a:.4f}, {b:.4f}] and {what} [{s:.4f}, {e:.4f}]"
                for name, a, b in self.runs for what, s, e in self.work if min(b, e) > max(a, s)]


def test_wait_until_quiet_waits_for_the_removal_and_the_refill():
    need("runc")
    name = unique("quiet")
    r = kit.run("busybox", ["echo", name], runtime="runc", start="precreated", name=name)  # a new key: a miss
    assert r.info["pool"] == "miss"
    session = api.default_session()
    assert session.warm.filling() > 0  # the refill is in flight as kit.run returns
    try:
        api.wait_until_quiet()
        assert session.warm.filling() == 0 and session.warm.pool.count(pool.key(
            kit.runtimes.get("runc"), session.spec("busybox", ["echo", name], start="precreated"),
            kit.images.get("busybox"))) == 1
        assert not (session.state_dir / name).exists()  # removed, not only returned
    finally:
        warm.clear()


def test_every_sample_of_a_study_starts_on_a_quiet_kit(monkeypatch):
    """Without the wait, about half the samples of this interleaved study overlapped the previous
    sample's removal or a pool refill (by tens of ms for LXC and Docker)."""
    for rt in ("process", "runc", "lxc", "docker"):
        need(rt)
    bg = Background(monkeypatch)
    try:
        Study(runtimes="process,runc,lxc,docker", workload="true", repeat=2, warmup=0, parts="startup",
              starts=["cold", "precreated"], progress=False).run()
    finally:
        warm.clear()
    assert len(bg.runs) == 12 and len(bg.work) >= 12, (bg.runs, bg.work)  # a removal per run, refills
    assert bg.overlaps() == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_teardown_is_timed_to_the_end_of_the_removal(runtime, monkeypatch):
    need(runtime)
    bg = Background(monkeypatch)
    name = unique("td")
    s = startup.measure(runtime, "busybox", TRUE, name, 120)
    assert s.status == "ok", s.status
    v = {(r["metric"], r["component"]): r["value"] for r in s.rows}
    (_, requested, exited), = bg.runs
    gone = requested + v[("launch_to_exit", "")] + v[("teardown", "")]
    assert gone >= bg.removed[name]  # the removal was over when teardown stopped
    assert not (api.default_session().state_dir / name).exists()


def _check_parts(df) -> None:
    st = df[(df["part"] == "startup")]
    assert (st["status"] == "ok").all(), st[st["status"] != "ok"]["status"].unique()
    runs = st.pivot_table(index=["runtime", "round"], columns=["metric", "component"], values="value")
    assert len(runs)
    for (rt, rnd), run in runs.iterrows():
        l2e, total, teardown = run[("launch_to_exit", "")], run[("total", "")], run[("teardown", "")]
        phases = run["phase"].dropna()
        assert 0 <= phases["prepare"] and (phases >= 0).all(), (rt, rnd, phases.to_dict())
        assert (phases <= l2e + 1e-9).all(), (rt, rnd, l2e, phases.to_dict())  # every milestone inside it
        assert phases["exited"] == pytest.approx(l2e, abs=1e-9)
        assert 0 < teardown and l2e < total and teardown < total, (rt, rnd, l2e, teardown, total)
        assert l2e + teardown <= total + 1e-9, (rt, rnd, l2e, teardown, total)


def test_a_part_is_never_longer_than_its_whole():
    for rt in RUNTIMES:
        need(rt)
    s = Study(runtimes=RUNTIMES, workload="true", repeat=2, warmup=0, parts="startup", progress=False)
    _check_parts(s.run())


@pytest.mark.slow
def test_a_part_is_never_longer_than_its_whole_in_a_vm():
    need("qemu")
    s = Study(runtimes="qemu", workload="true", repeat=1, warmup=0, parts="startup", progress=False, timeout=180)
    df = s.run()
    _check_parts(df)
    ph = df[df["metric"] == "phase"].set_index("component")["value"]
    # the guest's report of the exit comes before the host's exit: QEMU's end, after the power-off
    assert ph["command"] < ph["command_exited"] < ph["exited"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_idle_instance_is_ready_when_its_command_started(runtime):
    """The same event for every runtime: phase 'started' (a VM's 'command'), the host's own stamp."""
    need(runtime)
    inst, ready = startup.start(runtime, "busybox", IDLE, unique("ready"), 120)
    try:
        assert isinstance(inst, kit.Instance) and "started" in inst.phases
        assert ready.after == started_at(inst.phases) - ready.requested
        assert ready.requested == inst.phases["requested"] and ready.called <= ready.requested
        assert inst.phases["launched"] <= inst.phases["started"]
    finally:
        startup.remove(inst)
    assert inst.status == "removed"
