"""kit.Session and the kit.Instance handle (issue 21): sessions apart, the handle's methods, the one exit hook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import kit
from kit import pool
from kit._proc import wait_until
from kit.errors import InstanceNotFound, InvalidSpec, KitError, KitTimeout
from tests.conftest import need, unique

ROOT = Path(__file__).parents[1]


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def test_importing_the_kit_starts_no_thread_and_the_first_session_starts_the_sweep():
    p = _python("import threading, kit, kit.api, kit.networks, kit.volumes, kit.warm\n"
                "from kit import lifetime\n"
                "before = [t.name for t in threading.enumerate()]\n"
                "assert lifetime.sweeper() is None\n"
                "s = kit.Session()\n"
                "print(before, lifetime.sweeper() is not None, lifetime.sweeper() is lifetime.sweep_once_in_background())\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["['MainThread']", "True", "True"], p.stdout


def test_two_sessions_do_not_see_each_others_instances():
    with kit.Session() as a, kit.Session() as b:
        wa = a.start(None, ["sleep", "300"], runtime="process", name="web")
        wb = b.start(None, ["sleep", "300"], runtime="process", name="web")  # the same name: no clash
        only = a.start(None, ["sleep", "300"], runtime="process", name="only-a")
        assert list(a.ps()["name"]) == ["only-a", "web"] and list(b.ps()["name"]) == ["web"]
        assert a.get("web") is wa and b.get("web") is wb
        with pytest.raises(InstanceNotFound):
            b.get("only-a")
        with pytest.raises(InstanceNotFound, match="not this session's"):
            b.rm(only, force=True)
        assert "web" not in set(kit.ps()["name"])  # nor does the default session see them
        assert wa.id != wb.id and wa.state.state_dir != wb.state.state_dir
        assert wa.id == f"kit-{kit.config.SESSION_ID}-{a.id}-web"
        assert wa.state.state_dir == a.state_dir / "web" and a.state_dir.parent == b.state_dir.parent
        pids_b = wb.pids()
        a.close()
        assert wa.status == "removed" and wb.status == "running" and all(psutil.pid_exists(p) for p in pids_b)
        assert not a.state_dir.exists() and (b.state_dir / "web").is_dir()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids_b)


def test_the_handle_logs_execs_measures_stops_and_removes(names):
    name = unique("h")
    names.append(name)
    h = kit.start(None, ["sh", "-c", "echo up; exec sleep 300"], runtime="process", name=name)
    assert (h.name, h.runtime, h.image, h.ports) == (name, "process", None, [])
    assert isinstance(kit.run(None, ["true"], runtime="process"), kit.RunResult)  # a foreground run: its result
    wait_until(lambda: h.logs().stdout == "up\n", 10, what="its first line")
    assert h.exec(["echo", "inside"]).stdout == "inside\n"
    (pid,) = h.pids()
    assert pid == h.state.proc.pid and h.status == "running" and h.phases["requested"] <= h.phases["started"]
    mem = h.memory()
    # Checked against the kernel's own figures for that process: RSS from /proc/PID/status (it does not
    # move for an idle sleep), PSS from smaps_rollup within a quarter (its shared pages' sharers may change).
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    rollup = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    assert abs(mem["rss"] - int(status["VmRSS"].split()[0]) * 1024) <= 64 * 1024, (mem, status["VmRSS"])
    assert abs(mem["pss"] - int(rollup["Pss"].split()[0]) * 1024) <= 0.25 * mem["pss"], (mem, rollup["Pss"])
    assert 0 < mem["uss"] <= mem["pss"] <= mem["rss"] and mem["monitor_pss"] == 0
    with pytest.raises(KitTimeout, match="did not exit within"):
        h.wait(timeout=0.2)
    stopped = h.stop(timeout=2)
    assert stopped.exit_code == 143 and h.status == "exited (143)" and h.wait().exit_code == 143
    assert name in repr(h) and "exited (143)" in h._repr_html_()
    h.rm()
    assert h.status == "removed" and not h.state.state_dir.exists() and name not in set(kit.ps()["name"])
    with pytest.raises(InstanceNotFound):
        h.rm()


def test_the_handle_as_a_context_manager_removes_it_even_on_error():
    name = unique("cm")
    with pytest.raises(RuntimeError, match="inside"):
        with kit.start(None, ["sleep", "300"], runtime="process", name=name) as h:
            pid = h.pids()[0]
            raise RuntimeError("inside")
    assert h.status == "removed" and name not in set(kit.ps()["name"])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with kit.start(None, ["sleep", "300"], runtime="process", name=name) as again:  # the name is free again
        again.rm(force=True)  # removed inside the block: leaving it is no error


def test_a_closed_session_tears_down_in_order_and_starts_nothing():
    seen = []

    class Stacks:  # what compose keeps per session: closed first, while the instances still run
        def __init__(self, session):
            self.session = session

        def close(self):
            seen.append(list(self.session.ps()["name"]))

    s = kit.Session()
    h = s.start(None, ["sleep", "300"], runtime="process", name="svc")
    assert s.extension("stacks", Stacks) is s.extension("stacks", Stacks)
    s.close()
    s.close()  # idempotent
    assert seen == [["svc"]] and h.status == "removed" and not s.state_dir.exists()
    with pytest.raises(KitError, match="closed"):
        s.run(None, ["true"], runtime="process")


def test_the_exit_hook_closes_every_session_and_removes_the_process_directory(tmp_path):
    code = ("import json, kit\n"
            "own = kit.Session().start(None, ['sleep', '300'], runtime='process', name='a')\n"
            "dflt = kit.start(None, ['sleep', '300'], runtime='process', name='a')\n"
            "print(json.dumps({'pids': own.pids() + dflt.pids(), 'run': str(kit.config.home() / 'run' / "
            "kit.config.SESSION_ID)}))\n")
    p = _python(code, input="")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["pids"]) == 2
    wait_until(lambda: not any(psutil.pid_exists(x) and psutil.Process(x).status() != psutil.STATUS_ZOMBIE
                               for x in out["pids"]), 10, what="both sessions' instances gone")
    assert not Path(out["run"]).exists()


def test_optional_start_modes_refuse_where_not_offered_and_say_which_path_starts_them():
    process, docker, qemu = (kit.runtimes.get(n) for n in ("process", "docker", "qemu"))
    s = kit.api.default_session()
    state = process.new_instance(s.spec(None or "-", ["true"], name=unique("modes")), None, s.context)
    try:
        for call in (lambda: process.create(state), lambda: process.start_created(state),
                     lambda: process.checkpoint(state, Path("/nonexistent")),
                     lambda: process.restore(state, Path("/nonexistent"))):
            with pytest.raises(InvalidSpec, match=r"is not offered by runtime 'process' \(it offers cold\)"):
                call()
    finally:
        process.remove(state)
    precreated = s.spec("busybox", ["true"], start="precreated")
    snapshot = s.spec("busybox", ["true"], start="snapshot", detach=True)
    assert "precreated" in docker.start_modes and pool.pooled(docker, precreated)
    assert qemu.start_modes == ("cold", "snapshot") and not pool.pooled(qemu, snapshot)  # its start() restores
    with pytest.raises(InvalidSpec, match="takes no ports"):
        pool.check(docker, s.spec("busybox", ["true"], start="precreated", ports=["18556:80"]))


def test_docker_client_is_the_sessions_own_and_closes_with_it():
    need("docker")
    closed = []
    with kit.Session() as s:
        client = s.docker
        assert s.docker is client and client is not kit.api.default_session().docker
        real_close = client.close
        client.close = lambda: (closed.append(s.list()), real_close())
        h = s.start("busybox", ["sleep", "300"], runtime="docker", name="d")
        assert client.api.inspect_container(h.id)["State"]["Running"]
        assert h.state.ctx.docker() is client  # what the runtime reaches Docker through
    assert closed == [[]]  # closed last, after its container was removed
    with pytest.raises(InstanceNotFound):
        s.get("d")


def test_every_info_key_written_or_read_is_written_down_once():
    """What an instance's info may hold is kit.runtimes.base.Info: every key the kit's code writes or
    reads on an instance record (its runtime's state, the pool's, the session's) is one of its keys."""
    import re

    from kit.runtimes.base import Info

    record = r"\b(?:inst|state|tinst|made|self\.inst|self\.state|h|handle|r|result)\.info"
    keys = set()
    for path in (ROOT / "kit").rglob("*.py"):
        text = path.read_text()
        keys |= {(path.name, k) for k in re.findall(record + r"""(?:\[|\.get\(|\.setdefault\()["'](\w+)["']""", text)}
        for body in re.findall(record + r"\.update\(\{([^}]*)\}", text):
            keys |= {(path.name, k) for k in re.findall(r"""["'](\w+)["']\s*:""", body)}
    assert len(keys) > 20, keys  # the search finds the writers (it would pass vacuously otherwise)
    unknown = sorted((f, k) for f, k in keys if k not in Info.__annotations__)
    assert unknown == [], unknown


def test_a_compose_project_belongs_to_its_session_and_goes_down_with_it_first():
    need("runc")
    from kit import compose

    project = unique("cs")
    text = "services:\n  a:\n    image: busybox\n    command: sleep 300\n  b:\n    image: busybox\n    command: sleep 300\n"
    s = kit.Session()
    try:
        stack = compose.up(text, runtime="runc", project=project, session=s)
        assert compose.get(project, session=s) is stack and stack.session is s
        with pytest.raises(KitError, match="is up"):
            compose.get(project)  # the default session has no such project
        assert set(s.ps()["name"]) == {f"{project}-a-1", f"{project}-b-1"} and s.networks.names() == [f"{project}_default"]
        assert not set(kit.ps()["name"]) & set(s.ps()["name"])
        pids = [p for h in s.list() for p in h.pids()]
    finally:
        s.close()
    assert s.list() == [] and s.networks.names() == [] and compose.get(stack) is stack and not stack.units
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
