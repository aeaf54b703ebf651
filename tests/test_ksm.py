"""KSM for a study only (kit.bench.ksm, issue 24): back to its first settings after the block, after
an interrupt in the middle of a study and after a process killed inside it; QEMU guests merged, the
reported counters checked against every process's own count; the density part's host method
checked against /proc/meminfo read by the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import kit
from conftest import need
from kit.bench import Study, density, footprint, ksm
from kit.bench.workloads import IDLE


@pytest.fixture
def first():
    """KSM's settings before the test; the test fails if they are not back after it."""
    assert ksm.available() is None, ksm.available()
    before = ksm.state()
    yield before
    assert ksm.state() == before


def test_on_inside_the_block_only_also_after_an_interrupt(first):
    with ksm.enabled():
        assert ksm.state() == {"run": "1", "pages_to_scan": str(ksm.PAGES_TO_SCAN), "sleep_millisecs": str(ksm.SLEEP_MS)}
    assert ksm.state() == first
    with pytest.raises(KeyboardInterrupt):
        with ksm.enabled():
            assert ksm.state()["run"] == "1"
            raise KeyboardInterrupt
    assert ksm.state() == first
    with ksm.enabled(False):
        assert ksm.state() == first


def test_a_study_interrupted_in_the_middle_puts_ksm_back(first, monkeypatch):
    seen = []

    def interrupted(*a, **k):
        seen.append(ksm.state()["run"])
        raise KeyboardInterrupt

    monkeypatch.setattr(ksm, "settle", interrupted)
    s = Study(runtimes=["process"], parts="density", ksm="off,on", density_max=1, progress=False, name="ksm-int")
    with pytest.raises(KeyboardInterrupt):
        s.run()
    assert seen == ["1"]  # KSM was on while the pass ran, and is back now (the fixture)
    assert not [n for n in kit.ps()["name"] if n.startswith("b") and "-s" in n]


def test_settings_a_killed_process_left_are_put_back(first):
    code = ("import os, signal\nfrom kit.bench import ksm\ncm = ksm.enabled()\ncm.__enter__()\n"
            "print(ksm.state()['run'], flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -9 and p.stdout.strip() == "1", p.stderr
    assert ksm.state()["run"] == "1"  # left on by the killed process...
    said = ksm.restore_left()  # ...and put back by the next study (enabled() calls this first)
    assert said and "put back" in said
    assert ksm.restore_left() is None


def _mem_available() -> int:
    """MemAvailable from /proc/meminfo, parsed here (not through psutil, which the kit uses)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


def test_host_method_against_meminfo():
    need("process")
    seen = {}

    def at_reading(n, pids):  # called just before each step is read
        seen[n] = _mem_available()
        return []

    before = _mem_available()
    rows = density.steady_state("process", "busybox", parts=("density",), max_n=2, memory_budget=2**32,
                                time_budget=60, timeout=60, prefix=f"tksm{os.getpid()}", image_usages={},
                                settle=at_reading)
    per = {r["n"]: r["value"] for r in rows if r["metric"] == "density_host_per_instance"}
    used = {r["n"]: r["value"] for r in rows if r["metric"] == "density_host_used"}
    assert set(per) == {1, 2}
    for n in per:
        assert per[n] * n == pytest.approx(used[n])
        # the same difference, read by the test a moment apart: 64 MiB of slack for a shared host's neighbours
        assert abs(per[n] * n - (before - seen[n])) < 64 * 2**20


@pytest.mark.slow
def test_qemu_guests_merged_and_the_counters_agree_with_every_process(first, names):
    need("qemu")
    page = os.sysconf("SC_PAGE_SIZE")
    with ksm.enabled():
        lives = []
        for i in range(2):
            names.append(f"tksm-vm{os.getpid()}-{i}")
            lives.append(kit.start("busybox", list(IDLE.command()), runtime="qemu", name=names[-1], memory="128m"))
        pids = [p for inst in lives for p in footprint.host_pids(inst.backend, inst.state)]
        rows = {r["metric"]: r for r in ksm.measure(2, lambda: pids)}
        # every process's own count of its merged pages, read by the test, summed over the host
        every = 0
        for proc in psutil.process_iter(["pid"]):
            try:
                every += int(Path(f"/proc/{proc.pid}/ksm_merging_pages").read_text())
            except (OSError, ValueError):
                pass
        mine = sum(int(Path(f"/proc/{p}/ksm_merging_pages").read_text()) for p in pids)
        # QEMU marks its guests' RAM mergeable: a mapping of at least the guest's size with VmFlags mg
        smaps = Path(f"/proc/{pids[0]}/smaps").read_text().split("\n")
        sizes = [int(smaps[i - k].split()[1]) for i, line in enumerate(smaps) if line.startswith("VmFlags")
                 and " mg" in line for k in range(1, 30) if smaps[i - k].startswith("Size:")][:50]
    assert rows["ksm_settle"]["value"] < ksm.SETTLE_DEADLINE and rows["ksm_pages_sharing"]["status"] == "ok"
    assert max(sizes) >= 128 * 1024
    shared, sharing = rows["ksm_pages_shared"]["value"], rows["ksm_pages_sharing"]["value"]
    assert sharing > 0 and rows["ksm_merged"]["value"] > 0
    # shared + sharing is every page mapped onto a merged one: the sum of every process's count (5 % apart
    # at most: ksmd goes on merging between the two readings)
    assert every == pytest.approx(shared + sharing, rel=0.05, abs=256)
    assert rows["ksm_merged"]["value"] == pytest.approx(mine * page, rel=0.05, abs=256 * page)
