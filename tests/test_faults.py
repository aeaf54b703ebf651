"""Faults from outside, each real (issue 27): a daemon that stops, a full or read-only disk under
``$KIT_HOME``, an instance killed by someone else, a guest kernel that panics, an OOM kill.

Each case checks that the fault is said in one line naming the cause and the remedy (a
:class:`kit.KitError` subclass, or the instance's status), that the other runtimes keep working
meanwhile, and that nothing is left once it is over: no process, no state directory, no
container, nothing partial in the store, and the session still runs things.

Docker's daemon is stopped for a few seconds only, and started again by what ``make dockerd``
runs (scripts/ensure-dockerd) whatever happens: other tests on this machine use it. While it is
stopped, ``live-restore`` keeps every container running (set for the test when no daemon.json
says otherwise, then put back), so the other users' containers survive it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError

import kit
from kit import widgets
from kit.bench import Study
from kit._proc import wait_until
from kit.errors import DaemonUnavailable, InvalidSpec, NoSpace, ReadOnlyStorage
from kit.images import engine, store
from kit.net import free_port
from tests.conftest import need, unique

ROOT = Path(__file__).resolve().parent.parent
DAEMON_JSON = Path("/etc/docker/daemon.json")
DOCKER_PID = Path("/var/run/docker.pid")
#: How long dockerd may stay down in a test (it is restarted within seconds; the margin is for a busy machine).
DOWN_AT_MOST = 60
BUSYBOX = store.get("busybox")  # read before a test moves KIT_HOME


def alive(pids) -> list[int]:
    """The PIDs of ``pids`` still running (a zombie is not: its parent has yet to reap it)."""
    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def assert_gone(inst, pids) -> None:
    """Nothing of ``inst`` is left: its processes, its state directory, its row; and the session runs things."""
    wait_until(lambda: not alive(pids), 30, what=f"the processes of {inst.name} gone")
    assert not inst.state.state_dir.exists()
    assert inst.name not in set(kit.ps()["name"])
    assert kit.run(None, ["true"], runtime="process").exit_code == 0


# -- killed from outside ---------------------------------------------------

def _argv0(pid: int) -> str:
    try:
        return (psutil.Process(pid).cmdline() or [""])[0]
    except psutil.NoSuchProcess:
        return ""


#: (runtime, what is killed, how to find its PID among the instance's, the status said)
KILLS = [
    ("process", "the command", "sleep", "killed (SIGKILL)"),
    ("runc", "the command", "sleep", "killed (SIGKILL)"),
    ("runc", "its monitor", "/usr/sbin/runc", "killed (SIGKILL): runc run, its monitor"),
    ("lxc", "the command", "sleep", "killed (SIGKILL)"),
    ("lxc", "the container's init", "init", "killed (SIGKILL): the container's init"),
    ("lxc", "its monitor", "/usr/bin/lxc-execute", "killed (SIGKILL): lxc-execute, its monitor"),
    ("runsc", "the sentry", "runsc-sandbox", "killed (SIGKILL)"),
    ("runsc", "the gofer", "runsc-gofer", "killed (SIGKILL)"),
    ("runsc", "its monitor", "/usr/bin/runsc", "killed (SIGKILL): runsc run, its monitor"),
    ("docker", "the command", "sleep", "killed (SIGKILL)"),
    ("docker", "its containerd shim", "containerd-shim-runc-v2", "killed (SIGKILL)"),
    ("qemu", "QEMU", "qemu-system", "killed (SIGKILL)"),
]


@pytest.mark.parametrize("runtime, what, argv0, said", KILLS, ids=[f"{k[0]}-{k[1]}" for k in KILLS])
def test_an_instance_killed_from_outside_says_so(runtime, what, argv0, said, names):
    need(runtime)
    inst = kit.start(None if runtime == "process" else "busybox", ["sleep", "600"], runtime=runtime,
                     name=unique("killed"))
    names.append(inst.name)
    pids = inst.pids()
    target = [p for p in pids if argv0 in os.path.basename(_argv0(p)) or _argv0(p) == argv0]
    assert target, f"no process of {runtime} matches {argv0!r}: {[_argv0(p) for p in pids]}"
    os.kill(target[0], signal.SIGKILL)
    wait_until(lambda: inst.status != "running", 30, what=f"{inst.name} seen ended once {what} was killed")
    assert inst.status == said, f"{what} of {runtime} SIGKILLed"
    assert kit.ps().set_index("name").loc[inst.name, "status"] == said
    kit.rm(inst.name)
    names.remove(inst.name)
    assert_gone(inst, pids)


def test_a_guest_kernel_panic_says_so_with_the_console(names):
    need("qemu")
    inst = kit.start("busybox", ["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 600"], runtime="qemu",
                     name=unique("panic"))
    names.append(inst.name)
    pids = inst.pids()
    wait_until(lambda: inst.status != "running", 60, what="the guest's panic seen")
    status = inst.status
    assert status.startswith("guest panic: sysrq triggered crash") and "\n" not in status, status
    assert " | " in status  # with the console's last lines
    kit.rm(inst.name)
    names.remove(inst.name)
    assert_gone(inst, pids)


@pytest.mark.parametrize("runtime", ["runc", "docker"])
def test_an_oom_kill_says_oom_killed(runtime, names):
    need(runtime)
    # dd's 200 MiB block is one allocation: the 32 MiB limit's OOM killer ends it
    inst = kit.start("busybox", ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"], runtime=runtime,
                     name=unique("oom"), memory="32m")
    names.append(inst.name)
    pids = inst.pids()
    wait_until(lambda: inst.status != "running", 30, what="the OOM kill seen")
    assert inst.status == "oom_killed"
    kit.rm(inst.name)
    names.remove(inst.name)
    assert_gone(inst, pids)


def test_a_stop_by_the_kit_is_not_a_kill_from_outside(names):
    need("runc")
    inst = kit.start("busybox", ["sleep", "600"], runtime="runc", name=unique("stopped"))
    names.append(inst.name)
    inst.stop(timeout=1)  # sleep as PID 1 ignores SIGTERM: the kit's SIGKILL after 1 s ends it
    assert inst.status == "exited (137)"
    inst.rm()
    names.remove(inst.name)


# -- Docker's daemon stopped mid-session ------------------------------------

def _live_restore() -> bool:
    p = subprocess.run(["docker", "info", "--format", "{{json .LiveRestoreEnabled}}"], capture_output=True,
                       text=True, timeout=30)
    return p.stdout.strip() == "true"


def _reload_dockerd() -> None:
    os.kill(int(DOCKER_PID.read_text()), signal.SIGHUP)  # dockerd rereads daemon.json (live-restore is reloadable)


@contextmanager
def dockerd_stopped():
    """Stop dockerd for the block and start it again after it, whatever the block does, as
    ``make dockerd`` does (scripts/ensure-dockerd). live-restore keeps containers running meanwhile."""
    made = not DAEMON_JSON.exists()
    pid = int(DOCKER_PID.read_text())
    try:
        if made:
            DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
            DAEMON_JSON.write_text(json.dumps({"live-restore": True}) + "\n")
            _reload_dockerd()
            wait_until(_live_restore, 30, what="dockerd's live-restore on")
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive([pid]), 30, what="dockerd stopped")
        yield
    finally:
        if not engine.daemon_answers():
            subprocess.run(["bash", str(ROOT / "scripts" / "ensure-dockerd")], capture_output=True, timeout=90,
                           start_new_session=True)
        wait_until(engine.daemon_answers, 60, what="dockerd answering again")
        if made:  # dockerd keeps its settings when the file is gone: it is put back by a reload first
            DAEMON_JSON.write_text(json.dumps({"live-restore": False}) + "\n")
            _reload_dockerd()
            wait_until(lambda: not _live_restore(), 30, what="dockerd's live-restore off again")
            DAEMON_JSON.unlink()


def test_docker_stopped_mid_session_is_dockers_own_fault(ip, names):
    need("docker")
    need("runc")
    d = kit.start("busybox", ["sleep", "600"], runtime="docker", name=unique("dk"))
    names.append(d.name)
    r = kit.start("busybox", ["sleep", "600"], runtime="runc", name=unique("rc"))
    names.append(r.name)
    t0 = time.monotonic()
    with dockerd_stopped():
        down = time.monotonic()
        status = kit.ps().set_index("name")["status"]
        assert status[r.name] == "running"
        assert status[d.name].startswith("docker: daemon not answering at unix:///var/run/docker.sock: start it")
        assert "\n" not in status[d.name]
        states = {row["name"]: row["state"] for row in widgets.instance_rows()}
        assert states[r.name] == "running" and states[d.name] == status[d.name]
        with pytest.raises(DaemonUnavailable, match=r"^docker: daemon not answering .* and retry") as e:
            kit.run("busybox", ["true"], runtime="docker")
        assert "\n" not in str(e.value)
        with pytest.raises(DaemonUnavailable, match="daemon not answering"):
            kit.rm(d.name, force=True)
        assert d.name in set(kit.ps()["name"])  # its container is still the daemon's: it stays listed
        with pytest.raises(UsageError, match=r"^DaemonUnavailable: docker: daemon not answering") as e:
            ip.run_line_magic("container", "run -r docker busybox true")
        assert "\n" not in str(e.value)
        assert kit.run("busybox", ["echo", "still"], runtime="runc").stdout.strip() == "still"
        assert r.exec(["echo", "here"]).stdout.strip() == "here"
        study = Study(image="busybox", runtimes=["runc", "docker"], workload="true", repeat=1, warmup=0,
                      parts="startup", progress=False, name="faults").run()
        said = study.groupby("runtime")["status"].agg(set)
        assert said["runc"] == {"ok"}, said["runc"]  # the other runtime measured as ever
        assert all(x.startswith("error") and "docker: daemon not answering at unix://" in x for x in said["docker"]), said["docker"]
        pruned = kit.prune()  # every other runtime's instance goes; Docker's stays, its row saying why
        assert r.name in pruned and d.name not in pruned and set(kit.ps()["name"]) == {d.name}
        down = time.monotonic() - down
    print(f"dockerd down {down:.1f} s while the session was checked; answering again {time.monotonic() - t0:.1f} s after the start")
    assert down < DOWN_AT_MOST, f"dockerd stayed down {down:.0f} s"
    # The session recovers with the daemon: the container ran on (live-restore) and is the kit's again.
    wait_until(lambda: d.status == "running", 60, what="the Docker instance seen running again")
    assert d.exec(["echo", "back"]).stdout.strip() == "back"
    pids = d.pids()
    kit.rm(d.name, force=True)
    names.remove(d.name)
    for inst in (d, r):
        assert_gone(inst, pids)
    gone = subprocess.run(["docker", "ps", "-aq", "--filter", f"id={d.id}"], capture_output=True, text=True)
    assert gone.returncode == 0 and gone.stdout.strip() == ""
    assert time.monotonic() - t0 < 300


# -- $KIT_HOME full or read-only ---------------------------------------------

@contextmanager
def mounted_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "kit-faults", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_home(tmp_path, monkeypatch):
    """``$KIT_HOME`` on an 8 MiB tmpfs for the test (the default session's own directory stays where it is)."""
    kit.api.default_session()  # made before: its state directory stays on the real KIT_HOME
    with mounted_tmpfs(tmp_path / "home", "8m") as home:
        monkeypatch.setenv("KIT_HOME", str(home))
        yield home
        monkeypatch.delenv("KIT_HOME")


def random_tar(path: Path, size: int) -> Path:
    blob = path.with_suffix(".bin")
    blob.write_bytes(os.urandom(size))
    with tarfile.open(path, "w") as tar:
        tar.add(blob, arcname="big")
    blob.unlink()
    return path


def partial(home: Path) -> list[str]:
    """What a failed write may have left under ``home``: staging directories, unrecorded trees."""
    images = home / "images"
    return [p.name for p in images.iterdir() if p.name.startswith(".")] if images.exists() else []


def assert_no_space(e, home: Path, doing: str) -> None:
    line = str(e.value)
    assert "\n" not in line and doing in line, line
    assert f"KIT_HOME={home}" in line and "free" in line and "point KIT_HOME at a larger disk" in line, line


def test_a_full_kit_home_during_an_image_import(small_home, tmp_path):
    tar = random_tar(tmp_path / "big.tar", 12 * 2**20)
    with pytest.raises(NoSpace) as e:
        kit.images.import_tar("fault-big", tar)
    assert_no_space(e, small_home, "importing image 'fault-big'")
    assert not partial(small_home) and not store.exists("fault-big")
    small = kit.images.import_tar("fault-small", random_tar(tmp_path / "small.tar", 2**20))  # usable after
    assert (small.rootfs / "big").stat().st_size == 2**20


def test_a_full_kit_home_during_a_docker_image_build(small_home, tmp_path):
    need("docker")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\nRUN head -c 12000000 /dev/urandom > /big\n")
    tag = f"kit-test/fault-build:{unique('t')}"
    try:
        with pytest.raises(NoSpace) as e:
            kit.images.build(tmp_path / "ctx", tag=tag, stream=lambda line: None)
        assert_no_space(e, small_home, f"storing image {tag!r}")
        assert "needed" in str(e.value)
        assert not partial(small_home) and not store.exists(tag)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_a_full_kit_home_during_a_pull(tmp_path, monkeypatch):
    need("docker")
    from kit.images import registry

    reg = registry.serve(storage=tmp_path / "registry")
    tag = f"kit-test/fault-pull:{unique('t')}"
    try:
        (tmp_path / "ctx").mkdir()
        (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\nRUN head -c 12000000 /dev/urandom > /big\n")
        kit.images.build(tmp_path / "ctx", tag=tag, stream=lambda line: None)
        ref = f"{reg.address}/t/big:1"
        kit.images.push(tag, ref, progress=False)
        with mounted_tmpfs(tmp_path / "home", "8m") as home:
            monkeypatch.setenv("KIT_HOME", str(home))
            with pytest.raises(NoSpace) as e:
                kit.images.pull(ref, name="fault-pulled", progress=False)
            assert_no_space(e, home, f"pulling {ref!r}")
            assert not partial(home) and not store.exists("fault-pulled")
            monkeypatch.delenv("KIT_HOME")
    finally:
        store.remove(tag) if store.exists(tag) else None
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
        reg.stop()


def test_a_full_kit_home_while_saving_a_vm_template(tmp_path, monkeypatch):
    need("qemu")
    real = kit.config.home()
    kit.api.default_session()
    before = set(kit.ps()["name"])
    # 24 MiB: the template's RAM file (256 MiB of guest memory) cannot fit; kernels and images stay the real ones
    with mounted_tmpfs(tmp_path / "home", "24m") as home:
        binds = []
        try:
            for sub in ("kernels", "images"):
                (home / sub).mkdir()
                subprocess.run(["mount", "--bind", str(real / sub), str(home / sub)], check=True)
                binds.append(home / sub)
            monkeypatch.setenv("KIT_HOME", str(home))
            with pytest.raises(NoSpace) as e:
                kit.run("busybox", ["true"], runtime="qemu", start="snapshot")
            assert_no_space(e, home, "saving VM template")
            assert "256.0 MiB needed" in str(e.value)
            assert [p.name for p in (home / "templates").iterdir() if not p.name.endswith(".lock")] == []
            monkeypatch.delenv("KIT_HOME")
        finally:
            for b in binds:
                subprocess.run(["umount", str(b)], check=False)
    assert set(kit.ps()["name"]) == before
    assert kit.run(None, ["true"], runtime="process").exit_code == 0


def test_a_full_kit_home_during_a_volume_write(small_home, names):
    need("runc")
    kit.images.import_dir("busybox", BUSYBOX.rootfs)  # the kit's busybox in this KIT_HOME's store (2 MiB)
    vol, other = f"fault-vol-{os.getpid()}", f"fault-other-{os.getpid()}"
    # An instance fills the disk through its volume: its command is told (ENOSPC is its own), the instance goes.
    r = kit.run("busybox", ["sh", "-c", "dd if=/dev/zero of=/data/fill bs=1M count=64"], runtime="runc",
                volumes=[f"{vol}:/data"])
    assert r.exit_code != 0 and "No space left on device" in r.stderr
    # The kit's own write while full (another volume made and marked in use): one line, nothing started.
    before = set(kit.ps()["name"])
    with pytest.raises(NoSpace) as e:
        kit.run("busybox", ["true"], runtime="runc", volumes=[f"{other}:/data"])
    assert_no_space(e, small_home, "preparing the volumes of")
    assert set(kit.ps()["name"]) == before
    kit.volumes.rm(vol)  # room again: the session goes on
    assert not (small_home / "volumes" / vol).exists()
    r = kit.run("busybox", ["sh", "-c", "echo ok > /data/f && cat /data/f"], runtime="runc", volumes=[f"{other}:/data"])
    assert r.stdout.strip() == "ok"
    kit.volumes.rm(other)


def test_a_read_only_kit_home(tmp_path, monkeypatch):
    kit.api.default_session()
    with mounted_tmpfs(tmp_path / "home", "1m,ro") as home:
        monkeypatch.setenv("KIT_HOME", str(home))
        for what, call in [("making the session's state directory", kit.Session),
                           ("making the image store", lambda: kit.images.import_dir("fault-ro", tmp_path)),
                           ("creating volume 'fault-ro'", lambda: kit.volumes.create("fault-ro"))]:
            with pytest.raises(ReadOnlyStorage) as e:
                call()
            line = str(e.value)
            assert "\n" not in line and what in line and f"KIT_HOME={home}" in line and "read-only" in line, line
        assert kit.images.list() == []  # reading needs no write
        monkeypatch.delenv("KIT_HOME")
    assert kit.run(None, ["true"], runtime="process").exit_code == 0


def test_the_state_directory_made_read_only(names):
    need("runc")
    session = kit.api.default_session()
    session.wait_idle()  # an earlier test's instance may still be being removed in the background
    d = session.state_dir
    before = set(os.listdir(d))
    subprocess.run(["mount", "--bind", str(d), str(d)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(d)], check=True)
        with pytest.raises(ReadOnlyStorage) as e:
            kit.run("busybox", ["true"], runtime="runc", name=unique("ro"))
        line = str(e.value)
        assert "\n" not in line and "read-only" in line and "KIT_HOME=" in line and str(d) in line, line
    finally:
        subprocess.run(["umount", str(d)], check=False)
    assert set(os.listdir(d)) == before  # nothing half-made
    assert kit.run("busybox", ["true"], runtime="runc").exit_code == 0  # writable again: usable


# -- a published port taken by someone else -----------------------------------

@pytest.mark.parametrize("runtime", ["runc", "docker"])
def test_a_port_taken_between_the_check_and_the_bind(runtime, names):
    """Someone else listens on the port once the kit has checked it is free (its instance's state
    directory appears after the check) and before the kit's forwarder binds it (once the instance runs)."""
    need(runtime)
    session = kit.api.default_session()
    session.wait_idle()  # no earlier teardown's directory comes or goes meanwhile
    d = session.state_dir
    port, before, holder = free_port(), set(os.listdir(d)), []

    def take():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(os.listdir(d)) - before:
            time.sleep(0.001)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        holder.append(s)

    t = threading.Thread(target=take)
    t.start()
    try:
        with pytest.raises(InvalidSpec, match=rf"port {port} on 127.0.0.1 is already in use: choose another host port"):
            kit.start("busybox", ["sleep", "600"], runtime=runtime, name=unique("port"), ports=[f"{port}:80"])
    finally:
        t.join()
        for s in holder:
            s.close()
    assert holder  # it was taken after the check
    wait_until(lambda: not set(os.listdir(d)) - before, 30, what="the failed start's state directory gone")
    inst = kit.start("busybox", ["sleep", "600"], runtime=runtime, name=unique("port"), ports=[f"{port}:80"])
    names.append(inst.name)
    assert inst.status == "running"  # the port free again: the same start works
