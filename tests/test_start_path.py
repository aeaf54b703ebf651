"""What a start and its teardown no longer do again each time (issue 24: the kit's own CPU per start
in a storm), each with what must still hold: the environment a child gets, whether an image can be
shared, the mounts and cgroups a teardown looks for, whether the kit may make cgroups."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import kit
from kit import cgroups, config, mounts
from kit._proc import marked_env
from kit.cgroups import Cgroup
from kit.runtimes import _rootfs


def test_a_child_gets_this_process_environment_as_it_is_now_and_the_marker(monkeypatch):
    monkeypatch.setenv("KIT_TEST_NOW", "first")
    env = marked_env(None)
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['KIT_TEST_NOW'], "
                          "os.environ['KIT_SESSION'], os.environ['PATH'] == os.environ['KIT_TEST_PATH'])"],
                         env={**env, b"KIT_TEST_PATH": os.environb[b"PATH"]}, capture_output=True, check=True)
    assert out.stdout.split() == [b"first", config.SESSION_ID.encode(), b"True"]
    monkeypatch.setenv("KIT_TEST_NOW", "second")  # changed after a copy: the next copy has it
    again = {os.fsdecode(k): os.fsdecode(v) for k, v in marked_env(None).items()}
    assert again == {**os.environ, "KIT_SESSION": config.SESSION_ID}
    given = marked_env({"ONLY": "this"})  # a given environment is taken as it is, marked
    assert given == {"ONLY": "this", "KIT_SESSION": config.SESSION_ID}


class _Image:
    def __init__(self, id_, rootfs):
        self.id, self.rootfs = id_, rootfs


def test_whether_an_image_can_be_shared_is_looked_up_once_per_image(tmp_path, monkeypatch):
    for d in ("proc", "dev", "sys"):
        (tmp_path / d).mkdir()
    looked = []
    real = _rootfs.shareable
    monkeypatch.setattr(_rootfs, "shareable", lambda *a: looked.append(a) or real(*a))
    img = _Image(f"sha256:{os.urandom(32).hex()}", tmp_path)
    points = ("/proc", "/dev", "/sys")
    assert _rootfs.image_shareable(img, points, "/") and _rootfs.image_shareable(img, points, "/")
    assert len(looked) == 1  # an id names immutable content: the same answer
    assert not _rootfs.image_shareable(img, points, "/work")  # another working directory: its own answer
    assert not _rootfs.image_shareable(_Image(None, tmp_path), points, "/work")  # no id: asked each time
    assert len(looked) == 3


def test_a_teardown_unmounts_only_what_the_kit_mounted(monkeypatch):
    unmounted = []
    real = mounts.unmount
    monkeypatch.setattr(mounts, "unmount", lambda target: unmounted.append(target) or real(target))
    shared = kit.run("busybox", ["true"], runtime="runc", read_only=True, harden=False)
    kit.api.wait_for_teardown(shared.name)
    assert shared.info["rootfs"] == "image, read-only" and unmounted == []
    own = kit.run("busybox", ["true"], runtime="runc")
    kit.api.wait_for_teardown(own.name)
    assert own.info["rootfs"] == "overlay" and len(unmounted) == 1
    assert not mounts.below(unmounted[0])  # and it is gone


def test_destroying_a_group_that_is_in_no_hierarchy_reads_nothing_else(monkeypatch):
    group = Cgroup(f"kit/absent-{os.getpid()}")
    monkeypatch.setattr(Cgroup, "pids", lambda self: pytest.fail("read the processes of a group that is not there"))
    group.destroy()  # returns at once


def test_a_group_with_a_process_is_still_emptied_and_removed():
    group = cgroups.for_instance("t", f"destroy-{os.getpid()}").create(memory=64 * 2**20)
    p = subprocess.Popen(["sleep", "60"])
    try:
        group.add(p.pid)
        assert p.pid in group.pids()
        group.destroy()
        assert p.wait(10) == -9 and not group.exists()
    finally:
        p.kill()
        p.wait()


def test_may_make_cgroups_is_asked_again_after_a_no_and_kept_after_a_yes(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)
    monkeypatch.setattr(cgroups, "_writable_for", None)
    (tmp_path / "memory").write_text("not a directory")  # v1: groups go in ROOT/memory/kit
    if cgroups.version() == 2:
        pytest.fail("this host is cgroup v1 (hybrid); the test makes the v1 layout")
    assert "cannot create cgroups" in cgroups.writable()
    (tmp_path / "memory").unlink()
    assert cgroups.writable() is None  # the fix is seen
    (tmp_path / "memory" / "kit").rmdir()
    (tmp_path / "memory").rmdir()
    (tmp_path / "memory").write_text("broken again")
    assert cgroups.writable() is None  # a yes is kept for the process: no mkdir on every start


def _removal_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "kit-rm" and t.is_alive()]


def test_teardowns_reuse_a_few_threads_and_each_says_when_it_ended(monkeypatch):
    from kit import session as session_mod

    ran_on = []
    real = session_mod.Session._discard
    monkeypatch.setattr(session_mod.Session, "_discard",
                        lambda self, inst: ran_on.append(threading.current_thread()) or real(self, inst))
    with kit.Session() as s:
        results = [s.run("busybox", ["true"], runtime="runc", name=f"td-{i}", read_only=True, harden=False)
                   for i in range(6)]
        ended = [s.wait_for_teardown(r.name) for r in results]
        assert all(e is not None and r.phases["exited"] <= e <= time.time() for r, e in zip(results, ended))
        assert not any((s.state_dir / r.name).exists() for r in results)
    assert len(ran_on) == 6 and len(set(ran_on)) <= 2  # one at a time here: not a thread per run


def test_a_burst_of_teardowns_runs_on_several_threads_and_a_failing_one_stops_none(monkeypatch):
    from kit import session as session_mod

    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    with kit.Session() as s:
        gate = threading.Event()
        real = session_mod.Session._discard

        def slow_discard(self, inst):
            gate.wait(30)  # held until the burst is queued: the pool must grow to take it
            real(self, inst)
            if inst.name == "burst-0":
                raise RuntimeError("this teardown fails")

        monkeypatch.setattr(session_mod.Session, "_discard", slow_discard)
        for i in range(4):
            s.run("busybox", ["true"], runtime="runc", name=f"burst-{i}", read_only=True, harden=False)
        kit.wait_until(lambda: len(_removal_threads()) >= 2, 10, what="more than one removal thread")
        assert len(_removal_threads()) <= session_mod._Removers.MOST
        gate.set()
        for i in range(4):
            assert s.wait_for_teardown(f"burst-{i}") is not None
        assert [str(e) for e in seen] == ["this teardown fails"]  # said, as a thread's own exception is
        monkeypatch.setattr(session_mod.Session, "_discard", real)
        after = s.run("busybox", ["true"], runtime="runc", name="after", read_only=True, harden=False)
        assert s.wait_for_teardown(after.name) is not None  # the threads still work


@pytest.mark.parametrize("new_session", [True, False])
def test_a_launch_is_in_a_group_of_its_own_and_a_session_only_when_asked(tmp_path, new_session):
    from kit._proc import Pumped

    marker = tmp_path / "preexec-ran"
    p = Pumped(["sleep", "30"], tmp_path, detach=True, new_session=new_session,
               preexec_fn=lambda: open(marker, "w").close())
    try:
        assert os.getpgid(p.pid) == p.pid  # kill_group's group, and out of a terminal's Ctrl-C
        assert os.getsid(p.pid) == (p.pid if new_session else os.getsid(0))
        assert marker.exists()  # a runtime's own preexec_fn (gVisor's setns) still runs
    finally:
        p.kill()
        p.wait(10)


def test_a_runc_launch_shares_the_kits_session_in_a_group_of_its_own():
    """No session (so no scheduler autogroup) per container start; the kit still ends it as a group."""
    inst = kit.start("busybox", ["sleep", "30"], runtime="runc")
    try:
        pid = inst.state.proc.pid
        assert (os.getpgid(pid), os.getsid(pid)) == (pid, os.getsid(0))
        # the container's own processes are in a session of their own (runc's init makes it): no
        # terminal of the kit's reaches them, whatever they open
        inside = inst.state.cgroup.pids()
        assert inside and all(os.getsid(p) not in (os.getsid(0), pid) for p in inside)
    finally:
        kit.rm(inst.name, force=True)
    assert inst.state.proc.proc.poll() is not None


def test_before_python_3_11_the_group_is_made_by_preexec_fn_with_the_runtimes_own(tmp_path, monkeypatch):
    from kit import _proc

    monkeypatch.setattr(_proc.sys, "version_info", (3, 10, 0))
    marker = tmp_path / "preexec-ran"
    for given in (None, lambda: open(marker, "w").close()):
        kw = _proc.group_of_its_own(given)
        assert "process_group" not in kw  # Popen of 3.10 has no such keyword
        p = subprocess.Popen(["sleep", "30"], **kw)
        try:
            assert (os.getpgid(p.pid), os.getsid(p.pid)) == (p.pid, os.getsid(0))
        finally:
            p.kill()
            p.wait(10)
    assert marker.exists()


def test_small_files_written_read_and_removed_in_few_calls(tmp_path):
    from kit._files import read_file, remove_files_and_dir, write_file

    big = os.urandom(200_000)  # more than one read's chunk
    write_file(tmp_path / "config.json", b"old contents, longer")
    write_file(tmp_path / "config.json", big)  # truncated, then written whole
    assert read_file(tmp_path / "config.json") == big
    assert read_file(tmp_path / "missing.log") == b""
    state = tmp_path / "state"
    state.mkdir()
    for name in ("config.json", "runtime.log", "stdout.log"):
        write_file(state / name, b"x")
    assert remove_files_and_dir(state) and not state.exists()
    assert remove_files_and_dir(state)  # already gone: gone
    (state / "rootfs").mkdir(parents=True)  # anything but files: left for a full walk
    write_file(state / "config.json", b"x")
    assert not remove_files_and_dir(state) and (state / "rootfs").is_dir()
    from kit import userns

    userns.rmtree(state)
    assert not state.exists()


def test_the_hierarchy_listing_is_kept_until_the_directory_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)
    monkeypatch.setattr(cgroups, "_listed", None)
    (tmp_path / "memory").mkdir()
    old = time.time_ns() - 5 * 10**9
    os.utime(tmp_path, ns=(old, old))
    assert cgroups._hierarchies() == [str(tmp_path / "memory")]
    assert cgroups._listed is not None  # kept: the directory's last change is seconds old
    (tmp_path / "pids").mkdir()  # a new mount point changes the directory's time
    assert sorted(cgroups._hierarchies()) == [str(tmp_path / "memory"), str(tmp_path / "pids")]
    # a listing made within a second of the last change is not kept: a change in the same clock tick
    # would not move the time
    monkeypatch.setattr(cgroups, "_listed", None)
    now = time.time_ns()
    os.utime(tmp_path, ns=(now, now))
    cgroups._hierarchies()
    (tmp_path / "cpu").mkdir()
    os.utime(tmp_path, ns=(now, now))
    assert str(tmp_path / "cpu") in cgroups._hierarchies()
