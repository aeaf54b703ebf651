"""VM templates and snapshot restores (issue 14): kit.run(..., runtime="qemu", start="snapshot").

The boots are few: one template built by the module fixture and reused by every restore, one
rebuild after the corrupt-state path. The rest (keys, command lines, listing, prune) needs no boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import psutil
import pytest

import kit
from kit._proc import wait_until
from kit.errors import StartFailed
from kit.runtimes import qemu as qemu_rt
from kit.vm import machine, templates
from tests.conftest import need

MEMORY = "128m"  # a smaller guest than the default: its template is smaller on disk
PROBE = ["sh", "-c", "date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"]


def _cfg(tmp_path: Path, **kw) -> machine.VMConfig:
    for f in ("vmlinuz", "initrd"):
        if not (tmp_path / f).exists():
            (tmp_path / f).write_bytes(f.encode())
    base = dict(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", machine="microvm", accel="tcg",
                memory_mib=128)
    base.update(kw)
    return machine.VMConfig(**base)


def _after(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# -- no boot -------------------------------------------------------------------------------

def test_key_covers_every_input_and_no_per_run_part(tmp_path):
    base = _cfg(tmp_path)
    key = templates.key_of(base, machine.QEMU)
    run1 = _cfg(tmp_path, sockets={"kit.ctl": tmp_path / "a.sock"}, files={"kit.out": tmp_path / "a"},
                qmp=tmp_path / "a.qmp", ports=[(8080, 80)])
    run2 = _cfg(tmp_path, sockets={"kit.ctl": tmp_path / "b.sock"}, files={"kit.out": tmp_path / "b"},
                qmp=tmp_path / "b.qmp", ports=[(9999, 443)])
    with_ports = templates.key_of(run1, machine.QEMU)
    assert with_ports != key  # a template with a network device is another machine...
    assert templates.key_of(run2, machine.QEMU) == with_ports  # ...whatever its paths and ports
    (tmp_path / "vmlinux").write_bytes(b"another kernel")
    changed = [_cfg(tmp_path, memory_mib=256), _cfg(tmp_path, cpus=2), _cfg(tmp_path, machine="q35"),
               _cfg(tmp_path, accel="kvm"), _cfg(tmp_path, disk=tmp_path / "vmlinuz"),
               _cfg(tmp_path, kernel=tmp_path / "vmlinux"), _cfg(tmp_path, acpi=False)]
    keys = {templates.key_of(c, machine.QEMU) for c in changed}
    assert len(keys) == len(changed) and key not in keys
    # A rebuilt initramfs (new content, new mtime) is a new template.
    st = os.stat(tmp_path / "initrd")
    (tmp_path / "initrd").write_bytes(b"rebuilt initramfs")
    os.utime(tmp_path / "initrd", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert templates.key_of(base, machine.QEMU) != key


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_restore_command_line(tmp_path, accel):
    """The build and the restore differ only in the RAM file's sharing, -incoming and per-run parts;
    the KVM path is the same code with -accel kvm (this machine's /dev/kvm cannot run it)."""
    cfg = _cfg(tmp_path, accel=accel, mem_path=tmp_path / "memory", mem_shared=False, incoming="defer")
    a = machine.argv(cfg)
    assert _after(a, "-accel") == [accel]
    assert (_after(a, "-cpu") == ["host"]) == (accel == "kvm")
    assert _after(a, "-M")[0].endswith(",memory-backend=kitmem")
    assert _after(a, "-object") == [f"memory-backend-file,id=kitmem,size=128M,mem-path={tmp_path}/memory,share=off"]
    assert _after(a, "-incoming") == ["defer"] and _after(a, "-m") == ["128M"]
    build = machine.argv(templates._canonical(cfg))
    assert "share=on" in _after(build, "-object")[0] and "-incoming" not in build


def test_listing_and_prune_skip_a_template_in_use(tmp_path, monkeypatch, ip):
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    for key in ("aaaa", "bbbb"):
        d = templates.root() / key
        d.mkdir(parents=True)
        (d / "memory").write_bytes(b"\1" * 2**20)
        (d / "state").write_bytes(b"s")
        (d / "meta.json").write_text(json.dumps({"key": key, "machine": "microvm", "memory_mib": 128,
                                                 "state_bytes": 1}))
    (templates.root() / ".build-cccc-x1").mkdir()  # a dead builder's leftovers
    listed = {t["key"]: t for t in templates.ls()}
    assert set(listed) == {"aaaa", "bbbb"} and listed["aaaa"]["disk_bytes"] >= 2**20
    shown = ip.run_line_magic("container", "templates")
    assert list(shown["key"]) == ["aaaa", "bbbb"] and (shown["disk_mb"] > 0).all()
    hold = templates.InUse("aaaa")
    try:
        assert "template bbbb" in kit.prune(dead_sessions=False, templates=True)
    finally:
        hold.release()
    assert sorted(p.name for p in templates.root().iterdir() if not p.name.endswith(".lock")) == ["aaaa"]
    assert templates.prune() == ["aaaa"] and templates.ls() == []


def test_two_threads_build_a_template_once(tmp_path, monkeypatch):
    """The second caller waits on the first's lock (seen blocked in /proc/locks), then reuses."""
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    cfg, go, built = _cfg(tmp_path), threading.Event(), []

    def fake_build(key, cfg, binary):
        built.append(key)
        assert go.wait(30)
        d = templates.root() / key
        d.mkdir()
        (d / "meta.json").write_text(json.dumps({"key": key}))
        return templates.Template(key, d, {"key": key})

    monkeypatch.setattr(templates, "_build", fake_build)
    got = []
    first = threading.Thread(target=lambda: got.append(templates.ensure(cfg, machine.QEMU)))
    first.start()
    wait_until(lambda: built, 10, what="the first build")
    second = threading.Thread(target=lambda: got.append(templates.ensure(cfg, machine.QEMU)))
    second.start()
    inode = os.stat(templates.root() / f"{built[0]}.lock").st_ino
    wait_until(lambda: any("->" in line and line.split()[-3].endswith(f":{inode}")
                           for line in open("/proc/locks")), 10, what="the second caller waiting on the lock")
    go.set()
    first.join(30)
    second.join(30)
    assert len(built) == 1 and len(got) == 2
    assert sorted(b is None for _, b in got) == [False, True]  # one built it, the other reused it


# -- boots ---------------------------------------------------------------------------------

def _run(**kw):
    return kit.run("busybox", PROBE, runtime="qemu", start="snapshot", memory=MEMORY, timeout=120, **kw)


def _qemus_of(path: Path) -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(path) in a for a in (p.info["cmdline"] or [])):
            found.append(p.pid)
    return found


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The first snapshot run: it builds the template, in a store of this module's own (other
    processes' snapshot runs of the same guest neither rebuild nor remove it meanwhile)."""
    need("qemu")
    with pytest.MonkeyPatch.context() as mp:
        store = tmp_path_factory.mktemp("templates")
        mp.setattr(templates, "root", lambda: store)
        r = _run()
        assert r.exit_code == 0, (r.stderr, r.info)
        assert r.info["template_build_s"] > 0
        # A snapshot miss, as a pool miss: the template's build is inside its startup clock.
        assert r.info["pool"] == "miss"
        assert r.phases["launched"] - r.phases["requested"] >= r.info["template_build_s"]
        yield r
        shutil.rmtree(store, ignore_errors=True)  # tens of MB of guest RAM


@pytest.mark.slow
def test_template_built_then_reused(first):
    key = first.info["template"]
    t = templates._load(key)
    assert t is not None and t.meta["memory_mib"] == 128 and t.meta["accel"] == first.info["accel"]
    assert key in {x["key"] for x in templates.ls()}
    again = _run()
    assert again.exit_code == 0 and again.info["template"] == key
    assert "template_build_s" not in again.info and again.info["pool"] == "hit"  # reused, not rebuilt
    phases = again.phases
    for name in ("restore", "resumed", "command", "command_exited", "exited"):
        assert name in phases, phases
    assert phases["restore"] <= phases["resumed"] <= phases["command"] <= phases["command_exited"] <= phases["exited"]
    assert "kernel" not in phases or phases["kernel"] >= phases["command"]  # no boot happened
    assert again.info["accel"] in ("kvm", "tcg") and again.info["accel_reason"]


@pytest.mark.slow
def test_each_kernel_has_its_own_template(first):
    """The first run booted the default kernel (the kit's own); the distribution's kernel gets a
    template of its own, and both restore."""
    assert first.info["kernel_kind"] == "kit"
    distro = _run(kernel="distro")
    assert distro.exit_code == 0 and distro.info["kernel_kind"] == "distro"
    assert distro.info["template"] != first.info["template"]
    kernels = {t["key"]: t["kernel"] for t in templates.ls()}
    assert kernels[first.info["template"]] == first.info["kernel"]
    assert kernels[distro.info["template"]] == distro.info["kernel"]
    assert _run(kernel="distro").info["pool"] == "hit"


@pytest.mark.slow
def test_two_restores_at_once_see_a_fresh_clock_and_their_own_random_bytes(first):
    created = templates._load(first.info["template"]).meta["created"]
    # An uncorrected guest clock would read the template's save time: let it fall behind first.
    wait_until(lambda: time.time() - created > 5, 10, what="the template aging")
    results: list = [None, None]

    def go(i):
        results[i] = _run()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    outs = []
    for r in results:
        assert r is not None and r.exit_code == 0, r
        clock, rand = r.stdout.split()
        # The host's time (rounded to the second) reaches the guest before its command runs.
        assert r.phases["command"] - 2 <= int(clock) <= r.phases["exited"] + 2, (clock, r.phases)
        outs.append(rand)
    assert outs[0] != outs[1] and len(outs[0]) == 32  # siblings do not share RNG state
    # The two ran at the same time.
    a, b = (r.phases for r in results)
    assert a["restore"] < b["exited"] and b["restore"] < a["exited"]


@pytest.mark.slow
def test_corrupt_state_gives_one_line_and_a_rebuild(first, tmp_path):
    key = first.info["template"]
    t = templates._load(key)
    keep = tmp_path / "good"
    shutil.copytree(t.path, keep)
    # A state of the right size whose bytes QEMU cannot load: QEMU fails, within the deadline.
    state = bytearray(t.state.read_bytes())
    state[len(state) // 2:] = os.urandom(len(state) - len(state) // 2)
    t.state.write_bytes(bytes(state))
    meta = dict(t.meta, state_sha256=hashlib.sha256(state).hexdigest())
    (t.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StartFailed) as e:
        _run()
    msg = str(e.value)
    assert "\n" not in msg and f"restoring VM template {key} failed" in msg and "rebuilds" in msg, msg
    assert not t.path.exists() and _qemus_of(t.path) == []
    # A truncated state is caught before QEMU starts.
    shutil.copytree(keep, t.path)
    with open(t.state, "r+b") as f:
        f.truncate(100)
    with pytest.raises(StartFailed) as e:
        _run()
    msg = str(e.value)
    assert "\n" not in msg and "corrupt" in msg and "rebuilds" in msg, msg
    assert not t.path.exists() and _qemus_of(t.path) == []
    # The next run rebuilds it (same key: no input changed) and works.
    r = _run()
    assert r.exit_code == 0 and r.info["template"] == key and r.info["template_build_s"] > 0


def test_snapshot_is_offered_by_qemu_only():
    assert qemu_rt.QemuRuntime.start_modes == ("cold", "snapshot")
