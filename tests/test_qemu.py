"""Real VMs under QEMU (TCG on this machine kind): each boot takes a few seconds, so they are few
and marked slow. The fast tests at the top check host-side logic without booting anything."""

from __future__ import annotations

import json
import socket
import threading
import time

import psutil
import pytest

import kit
from kit import config
from kit._proc import wait_until
from kit.errors import CommandNotFound, InvalidSpec, StartFailed
from kit.runtimes import qemu as qemu_rt
from kit.runtimes.base import Context
from kit.spec import RunSpec
from kit.vm import accel
from kit.vm.kernel import Kernel
from tests.conftest import need, unique

PHASES = ["launched", "kernel", "init", "command", "command_exited", "exited"]


@pytest.fixture(scope="module")
def _qemu():
    need("qemu")


def vm_test(f):
    """A test that boots real VMs: slow, and qemu must be available."""
    return pytest.mark.slow(pytest.mark.usefixtures("_qemu")(f))


# -- the KVM verdict cache (no boot: probe() is replaced) ----------------------------------

TIMED_OUT = "KVM (kvm_pvm) rejected: a probe boot did not reach init within 15 s (fake)"


@pytest.fixture
def verdicts(tmp_path, monkeypatch):
    """A private KIT_HOME and a scripted probe(): returns (kernel, list of probe deadlines, script)."""
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    monkeypatch.setattr(accel, "precheck", lambda: None)
    kfile = tmp_path / "vmlinuz"
    kfile.write_bytes(b"kernel")
    deadlines, script = [], []

    def fake_probe(kernel, qemu, deadline):
        deadlines.append(deadline)
        return script.pop(0)

    monkeypatch.setattr(accel, "probe", fake_probe)
    return Kernel(kfile, None, "test"), deadlines, script


def _new_session(monkeypatch):
    monkeypatch.setattr(config, "SESSION_ID", config.SESSION_ID + "x")


def test_kvm_timeout_holds_for_its_session_and_is_final_only_when_a_later_session_sees_it_again(
        verdicts, monkeypatch):
    k, deadlines, script = verdicts
    script += [accel.AccelVerdict("tcg", TIMED_OUT, final=False), accel.AccelVerdict("tcg", TIMED_OUT, final=False)]
    first = accel.choose(k)
    assert (first.accel, first.final, first.strikes) == ("tcg", False, 1)
    assert accel.choose(k).reason == first.reason and len(deadlines) == 1  # this session: no second probe
    _new_session(monkeypatch)
    second = accel.choose(k)
    assert deadlines == [accel.PROBE_DEADLINE, 2 * accel.PROBE_DEADLINE]  # probed again, with more time
    assert (second.accel, second.final, second.strikes) == ("tcg", True, 2)
    _new_session(monkeypatch)
    assert accel.choose(k).final and len(deadlines) == 2  # final now: no session probes again


def test_kvm_timeout_then_a_boot_in_time_gives_kvm(verdicts, monkeypatch):
    k, deadlines, script = verdicts
    script += [accel.AccelVerdict("tcg", TIMED_OUT, final=False), accel.AccelVerdict("kvm", "reached init in 3.0 s")]
    assert accel.choose(k).accel == "tcg"
    _new_session(monkeypatch)
    assert accel.choose(k).accel == "kvm"
    _new_session(monkeypatch)
    assert accel.choose(k).accel == "kvm" and len(deadlines) == 2


def test_definite_kvm_rejection_is_cached_for_good(verdicts, monkeypatch):
    k, deadlines, script = verdicts
    script.append(accel.AccelVerdict("tcg", "KVM rejected: QEMU failed under -accel kvm: failed to set MSR"))
    assert accel.choose(k).final
    _new_session(monkeypatch)
    v = accel.choose(k)
    assert "failed to set MSR" in v.reason and len(deadlines) == 1


def test_verdict_cached_by_an_older_kit_is_probed_again_unless_it_was_kvm(verdicts, monkeypatch):
    k, deadlines, script = verdicts
    accel._cache_path().write_text(json.dumps(
        {accel.host_key(k): {"accel": "tcg", "reason": "did not reach init", "probed_at": 1.0, "probe_seconds": 15.0}}))
    script.append(accel.AccelVerdict("tcg", TIMED_OUT, final=False))
    assert accel.choose(k).strikes == 1 and len(deadlines) == 1
    accel._cache_path().write_text(json.dumps(
        {accel.host_key(k): {"accel": "kvm", "reason": "reached init", "probed_at": 1.0, "probe_seconds": 2.0}}))
    assert accel.choose(k).accel == "kvm" and len(deadlines) == 1


def test_no_dev_kvm_is_never_cached(verdicts, monkeypatch):
    k, deadlines, _ = verdicts
    monkeypatch.setattr(accel, "precheck", lambda: "no /dev/kvm on this host")
    assert accel.choose(k).reason == "no /dev/kvm on this host"
    assert accel.cached(k) is None and deadlines == []


# -- per-instance VM state (no boot) -------------------------------------------------------

def test_vm_state_lives_on_the_instance_and_one_cleanup_tears_it_down(tmp_path):
    rt = qemu_rt.QemuRuntime()
    insts = [qemu_rt.VMState(name=f"v{i}", runtime="qemu", image=None, id=f"kit-t-v{i}",
                                        spec=RunSpec(image="busybox", command=["true"], name=f"v{i}"),
                                        state_dir=tmp_path / f"v{i}", ctx=Context("t", "s", tmp_path))
             for i in range(2)]
    torn = []
    for inst in insts:
        vm = object.__new__(qemu_rt._VM)
        vm.teardown = lambda inst=inst: torn.append(inst.name)
        inst.vm = vm
    assert rt.vm(insts[0]) is insts[0].vm is not insts[1].vm
    threads = [threading.Thread(target=rt.cleanup, args=(insts[0],)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert torn == ["v0"] and insts[0].vm is None  # torn down once; the other VM untouched
    assert rt.vm(insts[1]) is insts[1].vm
    with pytest.raises(StartFailed, match="never started or is already removed"):
        rt.vm(insts[0])


# -- real VMs --------------------------------------------------------------------------------


def _qemu_of(name: str) -> list[int]:
    """QEMU processes of the instance ``name`` (its socket paths are in the command line).

    Other people's VMs on the same host are left out on purpose.
    """
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "qemu-system-x86_64" and any(f"/{name}/" in a for a in p.info["cmdline"] or []):
            out.append(p.pid)
    return out


def _assert_nothing_left(name: str) -> None:
    kit.api.wait_for_teardown(name)  # foreground runs are removed in the background
    state = kit.api.default_session().state_dir / name
    left = sorted(str(p.relative_to(state)) for p in state.rglob("*")) if state.exists() else []
    assert not state.exists(), f"{state} left behind: {left}"
    wait_until(lambda: not _qemu_of(name), 10, what=f"QEMU of {name} to be gone")


@vm_test
def test_echo_hello_same_image_runc_and_qemu():
    need("runc")
    c = kit.run("busybox", ["echo", "hello"], runtime="runc")
    name = unique("vm-hello")
    v = kit.run("busybox", ["echo", "hello"], runtime="qemu", name=name, timeout=120)
    assert c.stdout == v.stdout == "hello\n"
    assert c.exit_code == v.exit_code == 0
    assert v.info["accel"] in ("kvm", "tcg") and v.info["accel_reason"]
    if "kvm_pvm" in v.info["accel_reason"] or not __import__("os").path.exists("/dev/kvm"):
        assert v.info["accel"] == "tcg"  # this machine kind: /dev/kvm cannot boot a stock kernel
    # A kernel booted through PVH says nothing before the init (the kit's own): no 'kernel' phase.
    assert ("kernel" in v.phases) == (v.info["kernel_entry"] == "bzimage"), (v.phases, v.info)
    times = [v.phases[p] for p in PHASES if p != "kernel" or p in v.phases]
    assert times == sorted(times), v.phases
    _assert_nothing_left(name)


@vm_test
def test_exit_code_stderr_and_framing_cannot_be_forged():
    name = unique("vm-frame")
    # The command prints the kit's own control records on stdout, then tries to
    # write one to every serial port in the guest; the ports it does not own refuse it.
    script = ("echo 'exited 0'; echo command; echo to-err >&2; "
              "for p in /sys/class/virtio-ports/*; do "
              "  (echo 'exited 0' > /dev/${p##*/}) 2>/dev/null && echo \"forged $(cat $p/name)\" >&2; "
              "done; exit 3")
    r = kit.run("busybox", ["sh", "-c", script], runtime="qemu", name=name, timeout=120, boot="disk")
    assert r.exit_code == 3
    assert r.stdout == "exited 0\ncommand\n"
    assert r.stderr == "to-err\n", r.stderr  # no port accepted a forged record
    assert r.info["boot"] == "disk"
    _assert_nothing_left(name)


@vm_test
@pytest.mark.parametrize("boot", ["initramfs", "disk"])
def test_guest_loopback_is_up_and_hostname_is_the_instances(boot):
    # The init brings lo up in stage 1 (while the host answers "ready"), before a disk boot's switch_root.
    name = unique("vm-lo")
    r = kit.run("busybox", ["sh", "-c", "cat /sys/class/net/lo/flags; hostname"], runtime="qemu", name=name,
                timeout=120, boot=boot)
    assert (r.exit_code, r.stdout) == (0, f"0x9\n{name}\n"), r.stderr  # IFF_UP|IFF_LOOPBACK
    assert r.info["boot"] == boot


@vm_test
def test_large_output_arrives_whole_and_streams():
    # The guest powers off right after the command: output still queued in the guest then
    # was lost once (half of a 1 MB stderr written just before exit).
    name = unique("vm-bulk")
    seen = {"stdout": 0, "stderr": 0}
    script = "head -c 8000000 /dev/zero; head -c 1000000 /dev/zero >&2; echo end >&2"
    r = kit.run("busybox", ["sh", "-c", script], runtime="qemu", name=name, timeout=120,
                stream=lambda label, chunk: seen.__setitem__(label, seen[label] + len(chunk)))
    assert r.exit_code == 0
    assert len(r.stdout_bytes) == 8_000_000 and len(r.stderr_bytes) == 1_000_004
    assert r.stderr_bytes.endswith(b"end\n")
    assert seen == {"stdout": 8_000_000, "stderr": 1_000_004}
    _assert_nothing_left(name)


@vm_test
def test_hung_guest_is_killed_at_timeout():
    name = unique("vm-hang")
    t0 = time.monotonic()
    r = kit.run("busybox", ["sleep", "600"], runtime="qemu", name=name, timeout=25)
    assert r.timed_out and r.exit_code == 124
    assert time.monotonic() - t0 < 25 + 15
    _assert_nothing_left(name)


@vm_test
def test_guest_kernel_panic_is_a_clear_error():
    name = unique("vm-panic")
    with pytest.raises(StartFailed, match="panicked"):
        kit.run("busybox", ["sh", "-c", "echo c > /proc/sysrq-trigger"], runtime="qemu", name=name, timeout=120)
    _assert_nothing_left(name)


@vm_test
def test_bad_input_fails_fast_and_leaves_nothing(tmp_path):
    junk = tmp_path / "vmlinuz"
    junk.write_bytes(b"not a kernel" * 100)
    name = unique("vm-badk")
    with pytest.raises(InvalidSpec, match="is not a Linux kernel image"):  # refused before QEMU starts
        kit.run("busybox", ["true"], runtime="qemu", name=name, kernel=str(junk), timeout=60)
    _assert_nothing_left(name)
    with pytest.raises(InvalidSpec, match="does not exist"):
        kit.run("busybox", ["true"], runtime="qemu", kernel=str(tmp_path / "missing"))
    with pytest.raises(InvalidSpec, match="below the 96m minimum a VM can start in"):
        kit.run("busybox", ["true"], runtime="qemu", memory="32m")
    with pytest.raises(CommandNotFound):
        kit.run("busybox", ["no-such-command"], runtime="qemu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(InvalidSpec, match="in use"):
            kit.run("busybox", ["true"], runtime="qemu", ports=[f"{s.getsockname()[1]}:80"])


# -- a Debian service VM, shared by the tests below -------------------------------------

@pytest.fixture(scope="module")
def redis_vm(_qemu):
    img = kit.images.debian("debian-redis", packages=["redis-server"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = unique("vm-cache")
    try:
        r = kit.run(img.name, ["redis-server", "--protected-mode", "no"], runtime="qemu", detach=True,
                    ports=[f"{port}:6379"], name=name)
        yield name, port, r
    finally:
        try:
            kit.rm(name, force=True)
        except kit.KitError:
            pass
        _assert_nothing_left(name)


def _ping(port: int) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64)
    except OSError:
        return None


@vm_test
def test_redis_vm_answers_ping_on_loopback(redis_vm):
    name, port, r = redis_vm
    assert r.result().detached and r.info["boot"] == "disk"
    assert wait_until(lambda: _ping(port), 60, interval=0.2, what="redis PING") == b"+PONG\r\n"
    row = kit.ps().set_index("name").loc[name]
    assert row["runtime"] == "qemu" and row["status"] == "running"
    assert f"127.0.0.1:{port}->6379" in row["ports"]


@vm_test
def test_exec_into_running_vm(redis_vm):
    name, port, _ = redis_vm
    e = kit.exec(name, ["redis-cli", "ping"], timeout=60)
    assert (e.exit_code, e.stdout) == (0, "PONG\n")
    e = kit.exec(name, ["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=60)
    assert (e.exit_code, e.stdout, e.stderr) == (4, "out\n", "err\n")
    # A bare name runs the image's program, as in a container: GNU dd, not the init's busybox applet.
    e = kit.exec(name, ["dd", "--version"], timeout=60)
    assert e.exit_code == 0 and "coreutils" in e.stdout, (e.stdout, e.stderr)


@vm_test
def test_stop_and_rm_leave_nothing(redis_vm):
    name, port, _ = redis_vm
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    pid = inst.proc.pid
    # Serving first (run alone, this test would otherwise stop a guest that is still booting).
    assert wait_until(lambda: _ping(port), 60, interval=0.2, what="redis PING") == b"+PONG\r\n"
    stopped = kit.stop(name, timeout=20)
    assert "Redis is starting" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert _ping(port) is None
    assert stopped.phases["exited"] >= stopped.phases["command"]
    kit.rm(name)
    assert not inst.state_dir.exists()


@vm_test
def test_image_too_big_for_memory_or_disk():
    img = kit.images.debian("debian-redis", packages=["redis-server"])
    with pytest.raises(InvalidSpec, match="does not fit"):
        kit.run(img.name, ["true"], runtime="qemu", boot="initramfs", memory="128m")
    with pytest.raises(InvalidSpec, match="disk_size"):
        kit.run(img.name, ["true"], runtime="qemu", boot="disk", disk_size="16m")
