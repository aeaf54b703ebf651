"""The container backends of kit.runtimes.oci (runc, runsc) and kit.runtimes.lxc, against the real runtimes.

The behaviour every container runtime must show is checked here once,
parametrised over runc, runsc and lxc; LXC's own details are in test_lxc.py.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import http_get, need, unique

import kit
from kit import cgroups, config, mounts
from kit._proc import wait_until
from kit.errors import InvalidSpec, StartFailed
from kit.runtimes import _rootfs, oci
from kit.runtimes.lxc import lxcpath
from kit.spec import RunSpec

RUNTIMES = ["runc", "runsc", "lxc"]
SLOW = {"runsc"}  # ptrace-platform gVisor: each start ~0.2 s, memory-hungry work much slower


def params(*names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(rt_name: str, inst, pids: list[int]) -> list[str]:
    """Everything of ``inst`` still on the host: processes, runtime state, mounts, cgroups, files."""
    left = [f"process {p}" for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    if rt_name == "lxc":
        if (lxcpath() / inst.id).exists():
            left.append(f"lxc dir {lxcpath() / inst.id}")
    else:
        root = oci.runtime_root(rt_name)
        out = subprocess.run([rt_name, "--root", str(root), "list", "-q"], capture_output=True, text=True, timeout=30)
        if inst.id in out.stdout.split():
            left.append(f"{rt_name} state {inst.id}")
        if root.is_dir() and any(p.name.startswith(inst.id) for p in root.iterdir()):
            left.append(f"{rt_name} state files for {inst.id}")
    left += [f"mount {m}" for m in mounts.below(inst.state_dir)]
    rel = f"kit/{inst.tag}"
    for h in cgroups.ROOT.iterdir():
        for d in (h / rel, h / (rel + "-lxcmon")):
            if d.exists():
                left.append(f"cgroup {d}")
    if inst.state_dir.exists():
        left.append(f"state dir {inst.state_dir}")
    return left


@pytest.fixture(params=params(*RUNTIMES))
def rt(request):
    need(request.param)
    return request.param


# -- run to exit -----------------------------------------------------------------
def test_echo_hello(rt):
    r = kit.run("busybox", ["echo", "hello"], runtime=rt)
    assert (r.stdout, r.stderr, r.exit_code) == ("hello\n", "", 0)
    assert r.runtime == rt


def test_exit_code_propagates(rt):
    assert kit.run("busybox", ["sh", "-c", "exit 3"], runtime=rt).exit_code == 3


def test_timeout_kills_the_container(rt):
    t0 = time.monotonic()
    r = kit.run("busybox", ["sleep", "300"], runtime=rt, timeout=1)
    assert (r.timed_out, r.exit_code) == (True, 124)
    assert time.monotonic() - t0 < 8


def test_stdout_and_stderr_stay_apart(rt):
    r = kit.run("busybox", ["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"], runtime=rt)
    assert r.stdout == "to-out\nmore-out\n"
    assert r.stderr == "to-err\n"


def test_shell_metacharacters_reach_argv_literally(rt):
    args = ["$(id)", ";", "`x`", "a b", "*", "'\"", "&&", "|"]
    r = kit.run("busybox", ["printf", "%s\\n", *args], runtime=rt)
    assert r.stdout.splitlines() == args


def test_output_streams_live(rt):
    got = []
    r = kit.run("busybox", ["sh", "-c", "echo one; echo two >&2"], runtime=rt, stream=lambda k, b: got.append((k, b)))
    assert b"".join(b for k, b in got if k == "stdout") == b"one\n"
    assert b"".join(b for k, b in got if k == "stderr") == b"two\n"
    assert r.exit_code == 0


def test_env_and_workdir(rt):
    r = kit.run("busybox", ["sh", "-c", 'echo "$GREETING"; pwd'], runtime=rt, env={"GREETING": "hi there"},
                workdir="/tmp")
    assert r.stdout == "hi there\n/tmp\n"


# -- isolation ---------------------------------------------------------------------
def test_hostname_is_the_containers(rt):
    r = kit.run("busybox", ["hostname"], runtime=rt, hostname="inside-box")
    assert r.stdout.strip() == "inside-box"
    assert socket.gethostname() != "inside-box"


def test_pid_1_is_the_containers_own(rt):
    r = kit.run("busybox", ["sh", "-c", "cat /proc/1/cmdline; echo; readlink /proc/self"], runtime=rt)
    cmdline, self_pid = r.stdout.splitlines()
    if rt == "lxc":
        assert cmdline.split("\0")[0] in ("init", "/sbin/init", "lxc-init")  # lxc-execute's lxc-init
    else:
        assert cmdline.split("\0")[:2] == ["sh", "-c"]
    assert int(self_pid) < 100  # a fresh PID namespace, not the host's numbering


def test_network_is_loopback_only(rt):
    r = kit.run("busybox", ["cat", "/proc/net/dev"], runtime=rt)
    ifaces = {ln.split(":")[0].strip() for ln in r.stdout.splitlines()[2:] if ":" in ln}
    assert ifaces <= {"lo"}


def test_image_rootfs_is_never_modified(rt):
    img = kit.images.get("busybox")
    before = sorted(p.name for p in (img.rootfs / "etc").iterdir())
    r = kit.run("busybox", ["sh", "-c", "echo scribble > /etc/kit-was-here && rm /bin/ls && cat /etc/kit-was-here"],
                runtime=rt)
    assert r.stdout == "scribble\n", r.stderr
    assert not (img.rootfs / "etc" / "kit-was-here").exists()
    assert (img.rootfs / "bin" / "ls").is_symlink()
    assert sorted(p.name for p in (img.rootfs / "etc").iterdir()) == before
    assert kit.run("busybox", ["ls", "/etc/kit-was-here"], runtime=rt).exit_code != 0  # a fresh layer each time


def test_read_only_root(rt):
    r = kit.run("busybox", ["sh", "-c", "touch /x"], runtime=rt, read_only=True)
    assert r.exit_code != 0
    assert "Read-only" in r.stderr or "read-only" in r.stderr.lower()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", params(*RUNTIMES))
def test_memory_limit_kills_and_says_oom(runtime):
    need(runtime)
    # One process with a 100 MB buffer against a 32 MB limit: the OOM killer's only candidate, so the
    # command itself dies by it (a shell holding a variable fed by a pipeline has children the killer
    # may pick instead, and the shell then ends otherwise: exit 1 once in a fresh make test, on lxc).
    r = kit.run("busybox", ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
                runtime=runtime, memory="32m", timeout=120)
    assert r.oom_killed, r
    assert r.exit_code == 137
    assert "records out" not in r.stderr  # dd did not get to copy its block


def test_memory_limit_leaves_small_work_alone(rt):
    r = kit.run("busybox", ["sh", "-c", 'x=$(head -c 1000000 /dev/zero | tr "\\0" a); echo ${#x}'],
                runtime=rt, memory="32m")
    assert (r.stdout, r.oom_killed, r.exit_code) == ("1000000\n", False, 0)


# -- detached lifecycle ---------------------------------------------------------------
def test_detached_ps_stop_rm_leaves_nothing(rt, names):
    name = unique("nap")
    names.append(name)
    r = kit.start("busybox", ["sleep", "300"], runtime=rt, name=name, memory="64m")
    assert r.result().detached and r.result().exit_code is None
    row = kit.ps().set_index("name").loc[name]
    assert (row["runtime"], row["status"]) == (rt, "running") == (r.runtime, r.status)
    runtime, inst = r.backend, r.state
    pids = runtime.pids(inst)
    assert len(pids) >= 2  # the runtime's process and the container's
    if rt == "runsc":
        argv0 = {(psutil.Process(p).cmdline() or ["?"])[0] for p in pids}  # runsc re-execs itself as "exe"
        assert {"runsc-sandbox", "runsc-gofer"} <= argv0, argv0

    t0 = time.monotonic()
    kit.stop(name, timeout=2)  # sleep as PID 1 ignores SIGTERM: the kill after 2 s ends it
    assert time.monotonic() - t0 < 8
    assert not runtime.running(inst)
    # runc: sleep is PID 1 and ignores SIGTERM, so it is SIGKILLed after the timeout (137);
    # lxc-init passes SIGTERM on to sleep, and gVisor delivers it to PID 1: both die of it (143).
    assert inst.exit_code == (137 if rt == "runc" else 143)
    assert kit.ps().set_index("name").loc[name, "status"].startswith("exited")

    kit.rm(name)
    names.remove(name)
    assert leftovers(rt, inst, pids) == []
    assert name not in set(kit.ps()["name"])


def test_rm_force_of_a_running_container(rt, names):
    name = unique("force")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime=rt, name=name)
    _h = kit.api.get(name)
    runtime, inst = _h.backend, _h.state
    pids = runtime.pids(inst)
    t0 = time.monotonic()
    kit.rm(name, force=True)
    names.remove(name)
    assert time.monotonic() - t0 < 8
    assert leftovers(rt, inst, pids) == []


def test_exec_into_a_detached_container(rt, names):
    name = unique("ex")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime=rt, name=name, env={"WHO": "kit"}, hostname="exec-box")
    r = kit.exec_(name, ["sh", "-c", 'echo "$WHO@$(hostname)"; echo oops >&2; exit 4'])
    assert (r.stdout, r.stderr, r.exit_code) == ("kit@exec-box\n", "oops\n", 4)
    r = kit.exec_(name, ["ls", "-d", "/proc/1"])  # an argument that looks like an option stays the command's
    assert r.exit_code == 0 and r.stdout == "/proc/1\n"
    assert kit.logs(name).stderr == ""  # the runtime's own chatter stays out of the container's log


def test_detached_output_goes_to_logs(rt, names):
    name = unique("log")
    names.append(name)
    kit.start("busybox", ["sh", "-c", "echo started; echo warn >&2; exec sleep 300"], runtime=rt, name=name)

    def both_lines():
        r = kit.logs(name)
        return r if r.stdout and r.stderr else None

    r = wait_until(both_lines, 10, what="both log lines")
    assert (r.stdout, r.stderr) == ("started\n", "warn\n")


def test_port_forward_reaches_a_server_inside(rt, names):
    name = unique("web")
    names.append(name)
    port = free_port()
    kit.start("busybox", ["sh", "-c", "mkdir -p /www && echo hello-from-inside > /www/index.html && "
                                      "exec httpd -f -p 8080 -h /www"],
              runtime=rt, name=name, ports=[f"{port}:8080"])

    def fetch():
        return http_get(port)

    assert wait_until(fetch, 20, interval=0.05, what="httpd answering through the forwarder") == b"hello-from-inside\n"
    # And again, on a new connection: each try is one. A second try may be needed on a loaded host, where
    # ptrace-platform gVisor can take longer than http_get's 2 s to answer (once in a fresh make test);
    # a forwarder that served one connection only would fail every try.
    assert wait_until(fetch, 20, interval=0.05, what="a second connection through the forwarder") == b"hello-from-inside\n"
    _h = kit.api.get(name)
    runtime, inst = _h.backend, _h.state
    assert inst.forwarder is not None  # the instance's own, not a dict on the shared runtime
    kit.rm(name, force=True)
    names.remove(name)
    assert (inst.forwarder, inst.netns_fd) == (None, None)
    with socket.socket() as s:  # the host port is free again (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert leftovers(rt, inst, []) == []


def test_threads_publish_and_remove_their_own_instances(rt, names):
    """Three threads at once, each with its own published port: per-instance forwarders and
    namespaces never mix, and removing one leaves the others serving."""
    ports = []
    while len(set(ports)) < 3:
        ports.append(free_port())
    ports = sorted(set(ports))

    def one(port):
        name = unique("thr")
        names.append(name)
        kit.start("busybox", ["sh", "-c", f"mkdir -p /www && echo {port} > /www/index.html && "
                                          "exec httpd -f -p 8080 -h /www"],
                  runtime=rt, name=name, ports=[f"{port}:8080"])
        got = wait_until(lambda: http_get(port), 30, interval=0.05, what=f"httpd behind port {port}")
        _h = kit.api.get(name)
        runtime, inst = _h.backend, _h.state
        kit.rm(name, force=True)
        return got, inst

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, ports))
    assert [got for got, _ in results] == [f"{p}\n".encode() for p in ports]
    for _, inst in results:
        assert leftovers(rt, inst, []) == []


def test_port_already_taken_is_refused(rt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidSpec, match="already in use"):
            kit.run("busybox", ["true"], runtime=rt, ports=[f"{port}:80"])


# -- failures clean up -----------------------------------------------------------------
@pytest.mark.parametrize("runtime", params(*RUNTIMES))
@pytest.mark.parametrize("detach", [False, True])
def test_a_start_that_fails_leaves_nothing(runtime, detach):
    """A command the runtime cannot exec (the API's own check is bypassed on purpose)."""
    need(runtime)
    rt = kit.runtimes.get(runtime)
    img = kit.images.get("busybox")
    inst = rt.new_instance(RunSpec(image="busybox", command=["/etc/passwd"], name=unique("fail"), detach=detach,
                                   memory=64 * 2**20), img, kit.api.default_session().context)
    try:
        if runtime == "lxc":
            # lxc-init reports a failed exec only as exit code 255, like a command exiting 255.
            rt.start(inst)
            assert rt.wait(inst, timeout=30) == 255
        else:
            with pytest.raises(StartFailed, match="passwd|permission"):
                rt.start(inst)
                rt.wait(inst, timeout=30)
    finally:
        rt.remove(inst)
    assert leftovers(runtime, inst, []) == []


# -- probes and config --------------------------------------------------------------------
def test_crun_works_or_names_hybrid_cgroups():
    a = kit.runtimes.get("crun").availability(refresh=True)
    if shutil.which("crun") is None:
        pytest.skip(f"crun is not installed here: {a.reason}")
    if cgroups.version() == 1 and (cgroups.ROOT / "unified").exists():  # this machine kind
        assert not a.available
        assert "hybrid" in a.reason
    else:
        assert a.available, a.reason
        r = kit.run("busybox", ["sh", "-c", "echo hello; exit 3"], runtime="crun")
        assert (r.stdout, r.exit_code) == ("hello\n", 3)


@pytest.mark.parametrize("runtime", ["runc", "runsc", "lxc"])
def test_probes_are_bounded_and_give_a_version(runtime):
    t0 = time.monotonic()
    a = kit.runtimes.get(runtime).availability(refresh=True)
    assert time.monotonic() - t0 < 10
    need(runtime)
    assert a.available, a.reason
    assert re.match(r"\d", a.version), a.version


def _probe_leftovers(binary: str) -> list[str]:
    """What probes of ``binary`` may leave: temp bundles, processes, cgroups."""
    left = [str(p) for p in config.state_dir().glob(f"probe-{binary}-*")]
    for p in psutil.process_iter(["cmdline"]):
        if any(f"-probe-{binary}-" in a for a in p.info["cmdline"] or []):
            left.append(f"process {p.pid}")
    for pattern in (f"kit-{config.SESSION_ID}-probe-{binary}-*", f"kit/{config.SESSION_ID}-probe-{binary}-*"):
        left += [str(d) for h in cgroups.ROOT.iterdir() for d in h.glob(pattern)]
    return left


@pytest.mark.slow
def test_concurrent_probes_do_not_collide_and_leave_nothing():
    """Four smoke runs at once (what four threads' first runsc starts did): each has its own id."""
    need("runsc")
    rt = kit.runtimes.get("runsc")
    path = shutil.which("runsc")
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda _: rt._smoke_run(path, timeout=60), range(4)))
    assert verdicts == [""] * 4
    assert _probe_leftovers("runsc") == []


@pytest.mark.slow
def test_a_probe_that_times_out_leaves_nothing():
    need("runsc")
    why = kit.runtimes.get("runsc")._smoke_run(shutil.which("runsc"), timeout=0.05)
    assert "did not finish within" in why
    # runsc delete --force ends the sandbox before the probe returns; give the kernel a moment
    # to reap what was killed.
    wait_until(lambda: _probe_leftovers("runsc") == [], 10, what="the probe's processes to be gone")


@pytest.mark.parametrize("runtime", params(*RUNTIMES))
def test_monitor_pids_are_the_runtimes_process_not_the_container(runtime, names):
    need(runtime)
    name = unique("mon")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime=runtime, name=name)
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    pids, monitor = rt.pids(inst), rt.monitor_pids(inst)
    assert monitor == [inst.proc.pid]  # runc run / runsc run / lxc-execute, and nothing else
    assert set(monitor) < set(pids)
    # The container's own processes: the command (runc, LXC), gVisor's sandbox and gofer. Its init is
    # still "runc init" for a moment after the runtime says running, until it has exec'd the command
    # (seen once on a loaded host): their command lines are read once it has.
    own = (["sleep"], ["runsc-sandbox"], ["runsc-gofer"])

    def exec_done():
        argv = {p: psutil.Process(p).cmdline() for p in rt.pids(inst)}
        return argv if any(a[:1] in own for a in argv.values()) else None

    argv = wait_until(exec_done, 20, interval=0.05, what="the container's command", ignoring=(psutil.NoSuchProcess,))
    assert "run" in argv[inst.proc.pid] or argv[inst.proc.pid][0].endswith("lxc-execute")
    workload = [p for p, a in argv.items() if a[:1] in own]
    assert workload and not set(workload) & set(monitor), argv


def test_read_only_run_shares_the_image_rootfs_unmounted(names):
    need("runc")
    name = unique("ro")
    names.append(name)
    r = kit.start("busybox", ["sleep", "300"], runtime="runc", name=name, read_only=True)
    assert r.info["rootfs"] == "image, read-only"
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    assert mounts.below(inst.state_dir) == []  # no overlay: nothing to mount or unmount
    w = kit.exec_(name, ["sh", "-c", "touch /x || touch /tmp/x"])
    assert w.exit_code != 0 and "Read-only" in w.stderr
    assert not (kit.images.get("busybox").rootfs / "x").exists()
    assert kit.run("busybox", ["true"], runtime="runc").info["rootfs"] == "overlay"  # writable: its own layer


def test_shareable_needs_every_mount_point_in_the_image(tmp_path):
    for d in ("proc", "dev", "sys", "srv"):
        (tmp_path / d).mkdir()
    points = ["/proc", "/dev", "/dev/pts", "/sys/fs/cgroup"]
    assert _rootfs.shareable(tmp_path, points, "/srv")
    assert not _rootfs.shareable(tmp_path, points, "/work")  # the runtime would mkdir the workdir
    (tmp_path / "sys").rmdir()
    (tmp_path / "sys").symlink_to("/sys")
    assert not _rootfs.shareable(tmp_path, points, "/")


def test_limits_get_a_kit_group_and_no_limits_the_runtimes_own(names):
    need("runc")
    plain, limited = unique("cgp"), unique("cgl")
    names += [plain, limited]
    kit.start("busybox", ["sleep", "300"], runtime="runc", name=plain)
    kit.start("busybox", ["sleep", "300"], runtime="runc", name=limited, memory="64m")
    for name, leaf in ((plain, ""), (limited, "/ctr")):
        _h = kit.api.get(name)
        rt, inst = _h.backend, _h.state
        pid = max(p for p in rt.pids(inst) if psutil.Process(p).name() == "sleep")
        line = [ln for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in ln
                or ln.startswith("0::")][0]
        assert line.endswith(f"/kit/{inst.tag}{leaf}")
        assert rt.cgroup_path(inst) == inst.cgroup.path and pid in inst.cgroup.pids()


class _Img:
    rootfs = Path("/nonexistent")
    config = {"env": {"IMG": "1", "PATH": "/img/bin"}, "workdir": "/srv"}


def test_build_config_is_a_plain_runc_spec_container():
    spec = RunSpec(image="x", command=["echo", "$(id)"], name="cfg", env={"A": "b"}, hostname="hn")
    cfg = oci.build_config(spec, _Img(), Path("/b/rootfs"), "/kit/s-cfg/ctr")
    p = cfg["process"]
    assert p["args"] == ["echo", "$(id)"] and p["terminal"] is False and p["cwd"] == "/srv"
    assert {"A=b", "IMG=1", "PATH=/img/bin", "HOSTNAME=hn"} <= set(p["env"])
    assert p["capabilities"]["bounding"] == oci.CAPABILITIES
    assert cfg["hostname"] == "hn"
    assert cfg["root"] == {"path": "/b/rootfs", "readonly": False}
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "mount", "uts", "ipc", "network"}
    assert cfg["linux"]["cgroupsPath"] == "/kit/s-cfg/ctr"
    assert "/proc/kcore" in cfg["linux"]["maskedPaths"] and "/proc/sys" in cfg["linux"]["readonlyPaths"]
    assert {m["destination"] for m in cfg["mounts"]} >= {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"}
    json.dumps(cfg)

    ro = oci.build_config(RunSpec(image="x", command=["true"], name="ro", read_only=True, workdir="/w"), None,
                          Path("/r"), None, network=None)
    assert ro["root"]["readonly"] is True and ro["process"]["cwd"] == "/w"
    assert "cgroupsPath" not in ro["linux"]
    assert "network" not in {n["type"] for n in ro["linux"]["namespaces"]}


def test_sweep_finds_only_the_sessions_containers(names):
    need("runc")
    name = unique("sw")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime="runc", name=name)
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    assert rt.sweep(config.SESSION_ID, dry_run=True) == [f"runc container {inst.id}"]
    assert rt.sweep("0000000000", dry_run=True) == []
    assert rt.running(inst)  # a dry run removes nothing
