"""Warm starts (issue 14, containers): precreated runs, refused modes, the pool's cleanup, CRIU's verdict."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kit
import kit.api
from kit import lifetime, pool, warm
from kit.runtimes import criu
from kit._proc import wait_until
from tests.conftest import need, unique

SCRIPT = 'echo "$$ $K $(pwd)"; echo oops >&2; exit 3'


@pytest.fixture
def waiting():
    """The default session's pool, emptied afterwards whatever happened."""
    yield kit.api.default_session().warm.pool
    warm.clear()


@pytest.mark.parametrize("runtime", ["runc", "runsc", "docker"])
def test_precreated_runs_the_command_itself_from_a_waiting_container(runtime, waiting):
    need(runtime)
    results = []
    for _ in range(2):
        kit.api.wait_until_quiet()  # the first run's refill done: the second finds its container waiting
        results.append(kit.run("busybox", ["sh", "-c", SCRIPT], runtime=runtime, start="precreated",
                               env={"K": "v"}, workdir="/tmp", name=unique(f"warm-{runtime}")))
    for r in results:
        # PID 1 is the command: no waiting init stands between the start and the command.
        assert (r.exit_code, r.stdout, r.stderr) == (3, "1 v /tmp\n", "oops\n"), r
        p = r.phases
        assert p["requested"] <= p["launched"] <= p["started"] <= p["exited"], p
        assert r.info["warm"]["prepare_s"] > 0
    # The first request made its container (before its clock started); the second found one waiting,
    # made after the first run exited.
    assert [r.info["warm"]["pool"] for r in results] == ["miss", "hit"]
    assert results[0].info["warm"]["id"] != results[1].info["warm"]["id"]
    wait_until(lambda: waiting.count() == 1, 60, what="the refill after the second run")
    kit.api.wait_for_teardown()
    assert not [x for x in lifetime.leftovers(kit.config.SESSION_ID) if results[0].info["warm"]["id"] in x]


@pytest.mark.parametrize("runtime", ["runc", "docker"])
def test_a_pool_miss_is_measured_as_a_miss_with_its_preparation(runtime, waiting):
    need(runtime)
    argv = ["echo", unique("miss")]  # a command no pooled container has

    def run():
        return kit.run("busybox", argv, runtime=runtime, start="precreated")

    kit.api.wait_until_quiet()
    first = run()
    during = run()  # asked while the refill after the first is still being made: nothing was waiting
    kit.api.wait_until_quiet()
    hit = run()
    assert [r.info["pool"] for r in (first, during, hit)] == ["miss", "miss", "hit"]
    assert first.info["warm"]["pool"] == "miss" and hit.info["warm"]["pool"] == "hit"
    # The miss's clock runs from its request through making its container: prepare_s is inside it.
    made = first.info["warm"]["prepare_s"]
    assert first.phases["launched"] - first.phases["requested"] >= made
    assert first.phases["exited"] - first.phases["requested"] >= made
    # A hit paid for no container: its wait before the start is less than making one took.
    assert hit.phases["launched"] - hit.phases["requested"] < hit.info["warm"]["prepare_s"]


def test_detached_precreated_service_and_prepare_ahead(waiting, names):
    need("runc")
    assert warm.prepare("busybox", ["sleep", "300"], "runc") == 1
    assert list(warm.ls()["command"]) == ["sleep 300"]
    names.append(unique("warm-svc"))
    r = kit.start("busybox", ["sleep", "300"], runtime="runc", name=names[0], start="precreated")
    assert r.info["warm"]["pool"] == "hit" and warm.ls().empty
    assert kit.exec_(names[0], ["cat", "/proc/1/cmdline"]).stdout == "sleep\x00300\x00"
    kit.rm(names[0], force=True)
    assert names[0] not in set(kit.ps()["name"])


@pytest.mark.parametrize("runtime, mode, says", [
    ("lxc", "precreated", "(it offers cold): LXC has no create-then-start split"),
    ("process", "snapshot", "(it offers cold)"),
    ("runc", "snapshot", "(it offers cold, precreated): CRIU does not work here"),
])
def test_a_mode_the_runtime_does_not_offer_is_refused_before_anything_starts(runtime, mode, says):
    need(runtime)
    if runtime == "runc" and criu.probe().works:
        pytest.skip("CRIU works on this host: runc's snapshot refusal says something else")
    name = unique("refused")
    image = None if runtime == "process" else "busybox"
    with pytest.raises(kit.errors.InvalidSpec) as e:
        kit.run(image, ["true"], runtime=runtime, start=mode, name=name)
    msg = str(e.value)
    assert f"start mode {mode!r} is not offered by runtime {runtime!r} {says}" in msg and "\n" not in msg
    assert not (kit.api.default_session().state_dir / name).exists()


def test_precreated_with_ports_is_refused(waiting):
    need("runc")
    with pytest.raises(kit.errors.InvalidSpec, match="takes no ports"):
        kit.run("busybox", ["true"], runtime="runc", start="precreated", ports=["18555:80"])
    assert waiting.count() == 0


def test_pool_is_bounded_and_cleared_without_leftovers():
    need("runc")
    rt = kit.runtimes.get("runc")
    img = kit.images.get("busybox")
    session = kit.api.default_session()
    small = pool.Pool(session.context, per_key=1, limit=2)
    specs = [kit.spec.RunSpec(image="busybox", command=["echo", str(i)], start="precreated") for i in range(3)]
    try:
        for s in specs:
            small.fill(rt, s, img)
        assert small.count() == 2  # the oldest went when the third came
        assert small.take(rt, specs[0], img) == (None, False)
        ids = list(small.ls()["id"])
        dirs = [session.state_dir / i.split("-", 3)[3] for i in ids]
        assert all(d.is_dir() for d in dirs) and all((rt.root / i).is_dir() for i in ids)
    finally:
        gone = small.clear()
    assert len(gone) == 2 and small.count() == 0
    assert not any(d.exists() for d in dirs) and not any((rt.root / i).exists() for i in ids)
    assert not any(i in open("/proc/mounts").read() for i in ids)


def test_prune_removes_the_pool(waiting):
    need("runc")
    warm.prepare("busybox", ["echo", "pruned"], "runc")
    assert any(x.startswith("warm runc container") for x in kit.prune(dead_sessions=False))
    assert waiting.count() == 0


@pytest.mark.slow
def test_sigkill_leaves_no_pooled_container():
    need("runc")
    need("docker")
    code = textwrap.dedent("""
        import sys, time, kit
        kit.warm.prepare("busybox", ["echo", "left"], "runc")
        kit.warm.prepare("busybox", ["echo", "left"], "docker")
        print(kit.config.SESSION_ID, flush=True)
        time.sleep(300)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).parents[1],
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    session = None
    try:
        session = p.stdout.readline().decode().strip()
        before = lifetime.leftovers(session)
        assert any("runc container" in x for x in before) and any("docker container" in x for x in before), before
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        wait_until(lambda: not lifetime.leftovers(session), 30, interval=0.2,
                   what=f"the reaper removing session {session}'s pooled containers")
    finally:
        if p.poll() is None:
            p.kill()
        if session:
            lifetime.sweep(session)


def test_criu_probe_reason_is_criu_s_own_first_error():
    v = criu.probe(refresh=True)
    assert v.summary in kit.runtimes.get("runc").availability(refresh=True).info["criu"]
    if not v.works:  # this machine kind: "vdso: Unexpected rt vDSO area bounds"
        assert v.reason and "\n" not in v.reason
        if os.geteuid() == 0 and "not installed" not in v.reason:
            p = subprocess.run(["criu", "check"], capture_output=True, timeout=30)
            assert p.returncode != 0 and criu.first_error(p.stderr) in v.reason


class _Fake:
    """Records command lines; answers like criu/runc would."""

    def __init__(self, rc=0, stderr=b"", stdout=b"Version: 3.17.1\n"):
        self.calls, self.rc, self.stderr, self.stdout = [], rc, stderr, stdout

    def __call__(self, argv, timeout=None, check=False, **kw):
        self.calls.append(list(argv))
        rc = 0 if argv[-1] == "--version" else self.rc
        return subprocess.CompletedProcess(argv, rc, self.stdout, self.stderr)


def test_criu_probe_and_runc_checkpoint_restore_command_lines(tmp_path, monkeypatch):
    monkeypatch.setattr("kit.runtimes.criu.which", lambda *n: "/usr/sbin/criu")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    bad = _Fake(1, b"Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n"
                   b"Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed\n")
    v = criu.probe(runner=bad)
    assert not v.works and v.reason == "criu 3.17.1 check fails on this kernel: vdso: Unexpected rt vDSO area bounds"
    assert bad.calls[-1] == ["/usr/sbin/criu", "check"]
    assert criu.probe(runner=_Fake(0)).summary == "yes (3.17.1)"
    cli = ["/usr/sbin/runc", "--root", "/run/kit/runc"]
    ok = _Fake(0)
    criu.checkpoint(cli, "kit-s-redis", tmp_path / "img", runner=ok)
    criu.restore(cli, "kit-s-redis2", tmp_path / "img", tmp_path / "bundle", tmp_path / "pid", runner=ok)
    assert ok.calls == [
        [*cli, "checkpoint", "--image-path", str(tmp_path / "img"), "--work-path", str(tmp_path / "img/work"),
         "kit-s-redis"],
        [*cli, "restore", "--detach", "--image-path", str(tmp_path / "img"), "--work-path",
         str(tmp_path / "img/restore-work"), "--bundle", str(tmp_path / "bundle"), "--pid-file",
         str(tmp_path / "pid"), "kit-s-redis2"],
    ]
    with pytest.raises(kit.errors.StartFailed, match="runc restore failed: vdso: Unexpected"):
        criu.restore(cli, "x", tmp_path / "img", tmp_path / "b", tmp_path / "p", runner=bad)


def test_study_measures_each_offered_start_mode_and_compares_warm_with_cold(waiting):
    need("runc")
    from kit.bench import Study

    s = Study(runtimes="process,runc", workload="true", repeat=2, warmup=0, parts=["startup"],
              starts=["cold", "precreated"], progress=False)
    df = s.run()
    runs = df[df["metric"] == "launch_to_exit"].groupby(["runtime", "start"]).size().to_dict()
    assert runs == {("process", "cold"): 2, ("runc", "cold"): 2, ("runc", "precreated"): 2}, runs
    assert "(it offers cold)" in s.meta["skipped_starts"]["process/precreated"]
    # The first precreated run found nothing waiting (a miss, its preparation inside its clock); the
    # second found the refill the first left (each sample starts once the kit is quiet).
    l2e = df[df["metric"] == "launch_to_exit"]
    assert l2e.groupby(["start", "pool"]).size().to_dict() == {("cold", ""): 4, ("precreated", "hit"): 1,
                                                              ("precreated", "miss"): 1}
    assert l2e[l2e["pool"] == "hit"]["round"].tolist() == [1]
    # Misses stay out of the warm medians unless asked, and are counted.
    rel = s.relative(baseline="cold")
    assert list(zip(rel["runtime"], rel["start"])) == [("runc", "precreated")]
    assert (rel["runs"].iloc[0], rel["misses"].iloc[0]) == (1, 1)
    assert rel["median"].iloc[0] == l2e[l2e["pool"] == "hit"]["value"].iloc[0]
    assert s.relative(baseline="cold", misses=True)["runs"].iloc[0] == 2
    summ = s.summary("startup")
    warm_rows = summ[(summ["metric"] == "launch_to_exit") & (summ["start"] == "precreated")]
    assert warm_rows[["pool", "runs"]].values.tolist() == [["hit", 1]]
    every = s.summary("startup", misses=True)
    assert sorted(every[(every["metric"] == "launch_to_exit") & (every["start"] == "precreated")]["pool"]) == \
        ["hit", "miss"]
    assert set(s.relative()["runtime"]) == {"process", "runc", "runc/precreated"}
    assert "start" in s.summary().columns
    # The start modes travel with the study (study.json, a fleet host's copy) and come back on load.
    assert Study.from_params(s.params.to_dict()).starts == ("cold", "precreated")
    with pytest.raises(kit.errors.InvalidSpec, match="not known"):
        Study(starts=["tepid"])


def test_magic_start_option(ip, waiting):
    need("runc")
    need("lxc")
    r = ip.run_line_magic("container", "run --start precreated -r runc busybox echo warm")
    assert (r.exit_code, r.stdout, r.info["warm"]["pool"]) == (0, "warm\n", "miss")
    with pytest.raises(Exception, match=r"not offered by runtime 'lxc' \(it offers cold\)"):
        ip.run_line_magic("container", "run --start precreated -r lxc busybox true")


FAKE_RUNC = r'''#!/usr/bin/env python3
# Stands in for runc where CRIU cannot run: records each command line, keeps a sleep per container.
import json, os, signal, subprocess, sys, time
args = sys.argv[1:]
root = args[args.index("--root") + 1]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
i = next(k for k, a in enumerate(args) if a in ("run", "checkpoint", "restore", "kill", "delete", "state"))
cmd, rest, cid = args[i], args[i + 1:], args[-1] if args[i] != "kill" else args[i + 1]
d = os.path.join(root, cid)
def pid():
    try:
        return int(open(os.path.join(d, "pid")).read())
    except OSError:
        return 0
def stop():
    try:
        os.kill(pid(), signal.SIGKILL)
    except OSError:
        pass
if cmd == "run":
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "pid"), "w").write(str(os.getpid()))
    open(os.path.join(d, "state.json"), "w").write("{}")
    os.execv("/bin/sleep", ["sleep", "300"])
elif cmd == "checkpoint":
    images = rest[rest.index("--image-path") + 1]
    os.makedirs(images, exist_ok=True)
    open(os.path.join(images, "inventory.img"), "w").write("dump")
    stop()
elif cmd == "restore":
    assert os.path.exists(os.path.join(rest[rest.index("--image-path") + 1], "inventory.img"))
    os.makedirs(d, exist_ok=True)
    p = subprocess.Popen(["/bin/sleep", "300"], start_new_session=True)
    open(os.path.join(d, "pid"), "w").write(str(p.pid))
    open(os.path.join(d, "state.json"), "w").write("{}")
    open(rest[rest.index("--pid-file") + 1], "w").write(str(p.pid))
elif cmd == "kill":
    stop()
elif cmd == "delete":
    stop()
    import shutil
    shutil.rmtree(d, ignore_errors=True)
elif cmd == "state":
    print(json.dumps({"status": "running", "pid": pid()}))
'''


def test_runc_snapshot_checkpoints_a_service_once_and_restores_it(tmp_path, monkeypatch, names):
    """The snapshot path where CRIU works, with a stand-in for runc: the command lines, the checkpoint
    made once per key (before the clock starts), restores under the subreaper, and nothing left."""
    need("runc")
    fake = tmp_path / "runc"
    fake.write_text(FAKE_RUNC)
    fake.chmod(0o755)
    rt = kit.runtimes.get("runc")
    monkeypatch.setattr(criu, "probe", lambda *a, **k: criu.CriuVerdict(True, "3.17.1"))
    monkeypatch.setattr(type(rt), "_cli_for", lambda self, inst: [sys.executable, str(fake), "--root", str(tmp_path)])
    monkeypatch.setattr(type(rt), "_has_state", lambda self, inst: (tmp_path / inst.id).is_dir())
    monkeypatch.setattr(type(rt), "_started", lambda self, inst: (tmp_path / inst.id / "state.json").exists())
    assert "snapshot" in rt.start_modes
    with pytest.raises(kit.errors.InvalidSpec, match="start it detached"):
        kit.run("busybox", ["sleep", "300"], runtime="runc", start="snapshot")
    try:
        results = []
        for _ in range(2):
            names.append(unique("snap"))
            results.append(kit.start("busybox", ["sleep", "300"], runtime="runc", start="snapshot", name=names[-1],
                                     settle=0.05))
        assert [r.info["snapshot"]["checkpoint"] for r in results] == ["miss", "hit"]
        assert [r.info["pool"] for r in results] == ["miss", "hit"]
        # the miss made its checkpoint inside its clock, as a VM snapshot miss builds its template
        made = results[0].info["snapshot"]["checkpoint_s"]
        assert results[0].phases["launched"] - results[0].phases["requested"] >= made
        assert all(kit.api.get(n).backend.running(kit.api.get(n).state) for n in names)
        p = results[1].phases
        assert p["requested"] <= p["launched"] <= p["started"]
        calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
        cmds = [c[c.index(str(tmp_path)) + 1:] for c in calls]
        ckpt = [c for c in cmds if "checkpoint" in c]
        assert len(ckpt) == 1 and ckpt[0][:2] == ["checkpoint", "--image-path"]
        images = Path(results[0].info["snapshot"]["dir"]) / "images"
        restores = [c for c in cmds if "restore" in c]
        assert len(restores) == 2
        for r, inst_name in zip(restores, names):
            inst = kit.api.get(inst_name).state
            assert r[r.index("restore"):] == criu.restore_argv(
                [], inst.id, images, inst.state_dir, inst.state_dir / "container.pid", inst.state_dir / "criu")
        for n in names:
            kit.rm(n, force=True)
    finally:
        warm.clear()
    assert not images.parent.exists()
    assert not [m for m in open("/proc/mounts").read().split("\n") if "ckpt-" in m or "checkpoint-" in m or "snap-" in m]


@pytest.mark.parametrize("runtime", ["runc", "docker"])
def test_create_then_start_created_through_the_runtime_interface(runtime):
    """The two halves of a precreated start, called as the pool calls them: create makes the container
    with its command fixed but not run; start_created runs exactly that command, its output streamed."""
    need(runtime)
    rt = kit.runtimes.get(runtime)
    session = kit.api.default_session()
    img = kit.images.get("busybox")
    marker = unique("halves")
    spec = session.spec("busybox", ["sh", "-c", f"echo {marker}; exit 7"], name=unique("halves"), start="precreated")
    state = rt.new_instance(spec, img, session.context)
    seen = []
    try:
        rt.create(state)
        assert not rt.running(state) or runtime == "runc"  # runc's created container waits in its init
        assert "started" not in state.phases
        out, _ = rt.logs(state)
        assert marker.encode() not in out  # nothing ran yet
        rt.start_created(state, lambda label, data: seen.append((label, data)))
        assert rt.wait(state, timeout=30) == 7 and "started" in state.phases
        assert rt.logs(state)[0] == f"{marker}\n".encode()
        assert b"".join(d for label, d in seen if label == "stdout") == f"{marker}\n".encode()
    finally:
        rt.remove(state)
    assert not [x for x in lifetime.leftovers(kit.config.SESSION_ID) if state.id in x]


def test_the_pool_keeps_only_policy():
    """kit.pool calls the runtimes' start-mode methods and nothing else of theirs: no isinstance, no
    private name of another object, no spec building of its own."""
    import ast

    tree = ast.parse(Path(pool.__file__).read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    private = [f"{ast.unparse(n.value)}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and n.attr.startswith("_") and not n.attr.startswith("__") and ast.unparse(n.value) != "self"]
    assert "isinstance" not in calls and private == [], private
    assert len(calls) > 10  # the walk sees the module's calls
