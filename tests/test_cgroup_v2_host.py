"""The kit on a pure cgroup v2 host, for real: inside a Debian guest the kit boots (issue 25).

The project's machines are cgroup v1 hybrid: crun refuses there, and the kit's cgroup v2 paths
(limits in ``memory.max``/``cpu.max``, OOM counts from ``memory.events``, working set from
``memory.stat``, an ordinary user's delegated subtree) never run. ``scripts/cgroup_v2_guest.py``
boots a guest that is such a host (once per test session, under TCG here) with this checkout
mounted read-only at the same path, and this very file runs inside it twice under pytest: its
``inside_*`` functions as root, then those named ``rootless`` as the ordinary user ``kit`` from its
delegated subtree. On this host each of them is one ``test_in_guest[...]`` case, failing with the
guest's own error lines; the last case checks the guest's cgroup tree is left as the guest booted.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import kit
from kit import cgroups

pytestmark = pytest.mark.slow

RUNTIMES = ("runc", "crun")
both = pytest.mark.parametrize("runtime", RUNTIMES)
MIB = 1024**2
CG = Path("/sys/fs/cgroup")
#: 48 MB held in a shell variable against a 24 MiB limit (as tests/test_oci.py does on the host, smaller:
#: under TCG every byte through tr costs).
HOG = ["sh", "-c", 'x=$(head -c 48000000 /dev/zero | tr "\\0" a); echo ${#x}']
LIMIT = "24m"
#: A guest run's deadline: under TCG a kit start and its teardown take a few seconds each.
RUN_TIMEOUT = 120


# -- inside the guest (collected there with python_functions=inside_*) ------------------------------------
def _kit_groups() -> set[str]:
    """The groups below the kit's base group, once every removal the session runs in the background is done."""
    kit.api.default_session().wait_for_teardown(timeout=60)
    base = CG / cgroups.kit_rel()
    return {str(Path(d).relative_to(base)) for d, _, _ in os.walk(base) if Path(d) != base}


def _in_group(h: kit.Instance, group: Path) -> bool:
    """Whether each of ``h``'s own processes (its runtime's monitor, ``runc run``, aside) is in ``group`` or
    below it, by its /proc/PID/cgroup read by hand."""
    pids = set(h.pids()) - set(h.backend.monitor_pids(h.state))
    rel = "/" + str(group.relative_to(CG))
    lines = [Path(f"/proc/{p}/cgroup").read_text().strip() for p in pids]
    return bool(lines) and all(ln.startswith("0::") and (ln[3:] + "/").startswith(rel + "/") for ln in lines)


def inside_host_is_cgroup_v2():
    assert (CG / "cgroup.controllers").is_file() and cgroups.version() == 2
    assert cgroups.describe() == "v2 (unified)"
    assert {"memory", "cpu", "pids"} <= set((CG / "cgroup.subtree_control").read_text().split())


def inside_crun_is_available_with_its_version():
    df = kit.runtimes.available(refresh=True).set_index("name")
    for rt in RUNTIMES:
        row = df.loc[rt]
        assert bool(row.available), (rt, row.reason)
        first = subprocess.run([rt, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        assert row.version and row.version in first, (rt, row.version, first)  # e.g. "crun version 1.8.1"


@both
def inside_echo_and_exit_codes(runtime):
    before = _kit_groups()
    r = kit.run("busybox", ["echo", "hello from cgroup v2"], runtime=runtime, timeout=RUN_TIMEOUT)
    assert (r.exit_code, r.stdout) == (0, "hello from cgroup v2\n"), r
    assert kit.run("busybox", ["sh", "-c", "exit 7"], runtime=runtime, timeout=RUN_TIMEOUT).exit_code == 7
    # a child of the container's init killed (the init itself, PID 1 of its namespace, ignores a SIGKILL
    # from inside; "; exit $?" keeps the shell from exec'ing the child in its place)
    r = kit.run("busybox", ["sh", "-c", "sh -c 'kill -9 $$'; exit $?"], runtime=runtime, timeout=RUN_TIMEOUT)
    assert r.exit_code == 137 and not r.oom_killed, r  # killed, but not by the memory limit
    assert _kit_groups() <= before  # each run's group went with it


@both
def inside_memory_limit_oom_kills_and_says_so(runtime):
    before = _kit_groups()
    r = kit.run("busybox", HOG, runtime=runtime, memory=LIMIT, timeout=RUN_TIMEOUT)
    assert r.oom_killed and r.exit_code == 137, r
    assert "48000000" not in r.stdout
    # under the limit nothing is killed: the limit, not something else, killed the hog
    r = kit.run("busybox", ["sh", "-c", 'x=$(head -c 1000000 /dev/zero | tr "\\0" a); echo ${#x}'],
                runtime=runtime, memory=LIMIT, timeout=RUN_TIMEOUT)
    assert (r.stdout, r.oom_killed, r.exit_code) == ("1000000\n", False, 0), r
    assert _kit_groups() <= before


@both
def inside_limits_land_in_memory_max_and_cpu_max(runtime):
    with kit.start("busybox", ["sleep", "3600"], runtime=runtime, memory="48m", cpus=0.5) as h:
        group = h.cgroup
        assert group is not None and group.is_relative_to(CG / cgroups.kit_rel())
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        assert int((group / "memory.max").read_text()) == 48 * MIB
        h.wait_until(lambda: h.pids(), 30, what="the container's processes")
        assert _in_group(h, group), h.pids()
    assert not group.exists()  # removed with the instance


@both
def inside_study_memory_matches_the_cgroup_read_by_hand(runtime):
    from kit.bench import Study

    df = Study(image="busybox", runtimes=runtime, parts="memory", repeat=1, warmup=0, density_max=1,
               progress=False).run()
    ok = df[(df.status == "ok") & (df.runtime == runtime)]
    study_ws = ok[ok.metric == "cgroup_working_set"].value
    study_usage = ok[ok.metric == "cgroup_usage"].value
    assert len(study_ws) and len(study_usage), df[["runtime", "metric", "status"]].drop_duplicates().to_string()
    # The same idle instance (the study's idle workload and limit), its group read by hand.
    with kit.start("busybox", ["sleep", "3600"], runtime=runtime, memory="256m") as h:
        h.wait_until(lambda: h.pids(), 30, what="the container's processes")

        def by_hand() -> int:
            current = int((h.cgroup / "memory.current").read_text())
            stat = dict(ln.split() for ln in (h.cgroup / "memory.stat").read_text().splitlines())
            return current - int(stat["inactive_file"])

        hand = kit.usage.steady(by_hand, timeout=30)
        kit_figure = h.memory()["cgroup_working_set"]
    # the kit's figure and the hand's, of one idle group a moment apart: within 5 % (+64 KiB of page noise)
    assert abs(kit_figure - hand) <= 0.05 * hand + 64 * 1024, (kit_figure, hand)
    # the study's idle instance is another instance of the same workload: within a half (+1 MiB)
    med = float(study_ws.median())
    assert abs(med - hand) <= 0.5 * hand + MIB, (med, hand)
    assert 0 < med <= float(study_usage.median())  # a part is never more than its whole


@both
def inside_rootless_limits_in_the_delegated_subtree(runtime):
    assert os.geteuid() != 0
    base = cgroups.delegated_cgroup()
    assert base == f"user.slice/user-{os.getuid()}.slice/user@{os.getuid()}.service", base
    assert cgroups.limits_refusal() == "" and cgroups.kit_rel() == f"{base}/kit"
    a = kit.runtimes.get(runtime).availability()
    assert a.available and a.info.get("mode") == "rootless", a
    r = kit.run("busybox", ["echo", "rootless"], runtime=runtime, memory=LIMIT, timeout=RUN_TIMEOUT)
    assert (r.exit_code, r.stdout) == (0, "rootless\n"), r
    r = kit.run("busybox", HOG, runtime=runtime, memory=LIMIT, timeout=RUN_TIMEOUT)
    assert r.oom_killed and r.exit_code == 137, r  # enforced, not refused, not run unlimited
    with kit.start("busybox", ["sleep", "3600"], runtime=runtime, cpus=0.5) as h:
        group = h.cgroup
        assert group is not None and group.is_relative_to(CG / base / "kit"), group
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        h.wait_until(lambda: h.pids(), 30, what="the container's processes")
        assert _in_group(h, group), h.pids()
    assert not group.exists()
    assert _kit_groups() == set()


def _process_limits():
    """A bare process (the ``process`` runtime): the kit moves it into its own group (Cgroup.add) before it
    execs, so the limit holds from its first byte and its OOM kill is counted there."""
    r = kit.run(None, HOG, runtime="process", memory=LIMIT, timeout=RUN_TIMEOUT)
    assert r.oom_killed and r.exit_code == 137, r
    with kit.start(None, ["sleep", "3600"], runtime="process", cpus=0.5) as h:
        group = h.cgroup
        assert group is not None and group.is_relative_to(CG / cgroups.kit_rel()), group
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        assert _in_group(h, group), h.pids()
    assert not group.exists()


def inside_process_limits_by_membership():
    _process_limits()
    assert _kit_groups() == set()


def inside_rootless_process_limits_by_membership():
    assert os.geteuid() != 0
    _process_limits()


# -- on this host: the guest, the two runs inside it, one case per inside_* test --------------------------
def _inner_ids() -> list[str]:
    """The test ids pytest gives this file's inside_* functions (their runtime parameters included)."""
    ids = []
    for name, f in list(globals().items()):
        if name.startswith("inside_"):
            marks = [m for m in getattr(f, "pytestmark", []) if m.name == "parametrize"]
            ids += [f"{name}[{v}]" for v in marks[0].args[1]] if marks else [name]
    return ids


class _Inside:
    """The guest and what the pytest runs inside it reported (JUnit XML), run on first need."""

    def __init__(self, guest):
        self.guest = guest
        self.cases: dict[str, tuple[str, str]] | None = None
        self.output = ""

    def outcome(self, inner: str) -> tuple[str, str]:
        """(passed | failed | skipped | missing, the guest's lines about it)."""
        if self.cases is None:
            self.cases, self.output = self.run()
        return self.cases.get(inner, ("missing", f"not run inside the guest; its pytest said:\n{self.output[-3000:]}"))

    def run(self) -> tuple[dict, str]:
        """Both runs at once (root's and the user's: each waits on its own Python under TCG half the time),
        in one exec (the guest's agent takes one at a time)."""
        from scripts.cgroup_v2_guest import command

        jobs = []
        for who, k in (("root", "not rootless"), ("user", "rootless")):
            argv = command(["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_functions=inside_*",
                            "-k", k, f"--junitxml=/tmp/inside-{who}.xml", __file__], user=who == "user")
            jobs.append(f"{shlex.join(argv)} >/tmp/inside-{who}.log 2>&1 &")
        self.guest.inst.exec(["sh", "-c", " ".join(jobs) + " wait"], timeout=900)
        cases, output = {}, ""
        for who in ("root", "user"):
            report = self.guest.run(["cat", f"/tmp/inside-{who}.xml"])
            log = self.guest.run(["cat", f"/tmp/inside-{who}.log"])
            cases.update(_cases(report.stdout) if report.exit_code == 0 else {})
            output += f"--- as {who}:\n{log.stdout[-3000:]}\n"
        return cases, output

    def pytest_terminal_summary(self, terminalreporter):
        if self.cases:
            outcomes = [o for o, _ in self.cases.values()]
            terminalreporter.write_line(
                f"cgroup v2 guest: {len(outcomes)} tests ran inside it ({outcomes.count('passed')} passed), as root "
                f"and as an ordinary user with a delegated subtree")


def _cases(xml: str) -> dict[str, tuple[str, str]]:
    out = {}
    for case in ET.fromstring(xml).iter("testcase"):
        outcome, text = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                text = f"{el.get('message', '')}\n{(el.text or '')[-3000:]}"
        out[case.get("name")] = (outcome, text)
    return out


@pytest.fixture(scope="module")
def inside(request):
    """The guest, booted once for this module (removed after it), and the inside runs' reports."""
    from scripts.cgroup_v2_guest import Guest

    with Guest() as guest:
        ins = _Inside(guest)
        request.config.pluginmanager.register(ins, "cgroup-v2-guest")
        yield ins


@pytest.mark.timeout(1200)  # the first case boots the guest and waits for both runs inside it
@pytest.mark.parametrize("inner", _inner_ids(), ids=lambda s: s.removeprefix("inside_"))
def test_in_guest(inside, inner):
    outcome, lines = inside.outcome(inner)
    if outcome != "passed":  # a skip inside counts: every runtime here is expected to work on cgroup v2
        pytest.fail(f"{inner} {outcome} inside the cgroup v2 guest:\n{lines}", pytrace=False)


def test_guest_left_nothing(inside):
    """After both runs: no cgroup the guest did not boot with (the kit's empty base groups aside), no runtime."""
    script = ("find /sys/fs/cgroup -mindepth 1 -type d | sort | comm -13 /run/cgroups-at-boot -; echo ---; "
              "for f in /proc/[0-9]*/comm; do read -r c <$f && echo $c; done 2>/dev/null | grep -x -e runc -e crun "
              "-e 'runc:.*' || true")
    r = inside.guest.run(["sh", "-c", script])
    new, _, procs = r.stdout.partition("---\n")
    base = "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/kit"
    assert set(new.split()) <= {"/sys/fs/cgroup/kit", base}, new
    for d in new.split():  # the kit's base group may stay, empty
        assert inside.guest.run(["find", d, "-mindepth", "1", "-type", "d"]).stdout == "", d
    assert procs.strip() == "", procs
