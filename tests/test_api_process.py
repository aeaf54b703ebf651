"""The Python API on the bare-process runtime: results, limits, errors, lifecycle."""

import os
import sys

import psutil
import pytest

import kit
from kit import api
from kit.errors import CommandNotFound, ExitError, InstanceNotFound, InvalidSpec, KitError, NameInUse
from kit._proc import wait_until
from tests.conftest import unique


def test_echo_and_exit_codes():
    r = kit.run(None, ["echo", "hello"], runtime="process")
    assert (r.stdout, r.exit_code, r.ok) == ("hello\n", 0, True)
    assert kit.run(None, ["sh", "-c", "exit 3"], runtime="process").exit_code == 3
    assert r.started_at <= r.ended_at and r.duration < 10


def test_stdout_and_stderr_separate():
    r = kit.run(None, ["sh", "-c", "echo out; echo err >&2"], runtime="process")
    assert (r.stdout, r.stderr) == ("out\n", "err\n")


def test_metacharacters_reach_argv_literally(tmp_path):
    args = ["$(touch " + str(tmp_path / "pwned") + ")", "; rm -rf /", "`id`", "a|b", "*", "'\""]
    r = kit.run(None, ["printf", "%s\\n", *args], runtime="process")
    assert r.stdout.splitlines() == args
    assert not (tmp_path / "pwned").exists()


def test_binary_and_non_utf8_output():
    r = kit.run(None, [sys.executable, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"],
                runtime="process")
    assert r.stdout_bytes == bytes(range(256))
    assert "\ufffd" in r.stdout  # undecodable bytes are replaced, not fatal


def test_ten_megabytes_of_output():
    seen = []
    r = kit.run(None, ["head", "-c", str(10 * 1024 * 1024), "/dev/zero"], runtime="process",
                stream=lambda label, chunk: seen.append(len(chunk)))
    assert len(r.stdout_bytes) == 10 * 1024 * 1024
    assert sum(seen) == 10 * 1024 * 1024
    assert len(repr(r)) < 5000  # the repr clips


def test_memory_limit_kills_and_says_oom():
    r = kit.run(None, [sys.executable, "-c", "b = bytearray(100 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"],
                runtime="process", memory="32m")
    assert r.oom_killed and r.exit_code == 137
    assert "out of memory" in repr(r)


def test_timeout_kills_and_reports():
    r = kit.run(None, ["sleep", "30"], runtime="process", timeout=0.5)
    assert r.timed_out and r.exit_code == 124
    assert r.duration < 10


def test_check_raises_exit_error():
    with pytest.raises(ExitError, match="exited with 3"):
        kit.run(None, ["sh", "-c", "echo boom >&2; exit 3"], runtime="process", check=True)


def test_detached_lifecycle_leaves_nothing(names):
    name = unique("napper")
    names.append(name)
    r = kit.start(None, ["sleep", "300"], runtime="process", name=name)
    assert isinstance(r, kit.Instance) and r.status == "running" and kit.api.get(name) is r
    assert r.result().detached and r.result().exit_code is None
    inst = r.state
    pid = inst.proc.pid
    assert psutil.pid_exists(pid)
    ps = kit.ps()
    assert name in set(ps.name) and ps.set_index("name").loc[name, "status"] == "running"
    with pytest.raises(NameInUse):
        kit.start(None, ["sleep", "1"], runtime="process", name=name)
    with pytest.raises(KitError, match="running"):
        kit.rm(name)
    stopped = kit.stop(name, timeout=2)
    assert stopped.exit_code is not None
    kit.rm(name)
    assert name not in set(kit.ps().name)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not inst.state_dir.exists()
    with pytest.raises(InstanceNotFound):
        kit.logs(name)


def test_logs_of_detached(names):
    name = unique("talker")
    names.append(name)
    kit.start(None, ["sh", "-c", "echo started; sleep 300"], runtime="process", name=name)
    wait_until(lambda: "started" in kit.logs(name).stdout, timeout=10, what="log line")
    assert kit.logs(name).stdout == "started\n"


@pytest.mark.parametrize("kwargs,err,match", [
    ({"memory": "12zz"}, InvalidSpec, "memory"),
    ({"cpus": "lots"}, InvalidSpec, "cpus"),
    ({"ports": ["99999:1"]}, InvalidSpec, "port"),
    ({"env": ["NOPE"]}, InvalidSpec, "environment"),
    ({"name": "no/slash"}, InvalidSpec, "name"),
    ({"runtime": "nope"}, KitError, "unknown runtime"),
])
def test_bad_input_is_refused_before_anything_starts(kwargs, err, match):
    before = set(os.listdir(kit.api.default_session().state_dir))
    listed = set(kit.ps().name)
    kw = {"runtime": "process", **kwargs}
    with pytest.raises(err, match=match):
        kit.run(None, ["true"], **kw)
    assert set(os.listdir(kit.api.default_session().state_dir)) == before
    assert set(kit.ps().name) == listed


def test_missing_command():
    with pytest.raises(CommandNotFound, match="no-such-command"):
        kit.run(None, ["no-such-command-xyz"], runtime="process")


def test_port_in_use_is_refused():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidSpec, match="already in use"):
            kit.run(None, ["true"], runtime="process", ports=[f"{port}:80"])


def test_resolve_in_rootfs_follows_symlinks_inside_the_image():
    img = kit.images.get("busybox")
    assert kit.session.resolve_in_rootfs(img.rootfs, "echo", "/bin:/usr/bin") == "/bin/echo"
    assert kit.session.resolve_in_rootfs(img.rootfs, "/bin/sh", "") == "/bin/sh"
    assert kit.session.resolve_in_rootfs(img.rootfs, "python3", "/bin:/usr/bin") is None
    assert kit.session.resolve_in_rootfs(img.rootfs, "../../../../usr/bin/python3", "/bin") is None


def test_resolve_in_rootfs_keeps_hidden_directories(tmp_path):
    # A link into a dot-directory: the leading dot is part of the name, not "./".
    (tmp_path / ".tools").mkdir()
    tool = tmp_path / ".tools" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").symlink_to("/.tools/tool")
    (tmp_path / "bin" / "dir").symlink_to("/.tools")
    assert kit.session.resolve_in_rootfs(tmp_path, "tool", "/bin") == "/bin/tool"
    assert kit.session.resolve_in_rootfs(tmp_path, "/bin/dir/tool", "") == "/bin/dir/tool"


def test_a_finished_foreground_run_is_not_listed_while_it_is_torn_down(monkeypatch):
    """Its result is returned, so it is gone for the user: ps never shows it, whatever the
    background teardown's progress (it used to, until the teardown thread had finished)."""
    import threading

    rt = kit.runtimes.get("process")
    release = threading.Event()
    real_remove = rt.remove

    def slow_remove(inst):  # the teardown is held until the test has looked
        release.wait(10)
        real_remove(inst)

    monkeypatch.setattr(rt, "remove", slow_remove)
    try:
        r = kit.run(None, ["true"], runtime="process", name=unique("fg"))
        assert r.name not in set(kit.ps()["name"])
    finally:
        release.set()
        api.wait_for_teardown()
