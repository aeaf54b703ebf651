"""What only the LXC backend does: its generated config, cgroup placement, overlay, exec environment.

The behaviour shared with runc and runsc (exit codes, OOM, ports, cleanup...) is tested in test_oci.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from conftest import need, unique

import kit
from kit import cgroups, config, mounts
from kit._proc import wait_until
from kit.errors import StartFailed
from kit.runtimes import lxc as lxc_mod
from kit.runtimes.base import Context, InstanceState
from kit.runtimes.lxc import build_config
from kit.spec import RunSpec


class _Img:
    name = "img"
    rootfs = Path("/images/abc/rootfs")
    config = {"env": {"FROM_IMAGE": "yes"}, "workdir": "/srv"}


class _Group:
    rel = "kit/sess-web"


def _inst(**kw) -> InstanceState:
    spec = RunSpec(image="img", command=["sh"], name="web", **kw)
    return InstanceState(name="web", runtime="lxc", spec=spec, image=_Img(), id="kit-sess-web",
                    state_dir=Path("/state/web"), ctx=Context("sess", "t", Path("/state")))


def test_config_has_empty_network_overlay_rootfs_and_kit_cgroup():
    inst = _inst(hostname="box", env={"A": "b c"})
    inst.cgroup = _Group()
    text = build_config(inst, "kit/sess-web-lxcmon")
    lines = set(text.splitlines())
    assert {"lxc.net.0.type = empty", "lxc.net.0.flags = up", "lxc.uts.name = box",
            "lxc.rootfs.path = overlay:/images/abc/rootfs:/state/web/overlay/upper",
            "lxc.cgroup.dir.container = kit/sess-web/ctr", "lxc.cgroup.dir.monitor = kit/sess-web-lxcmon",
            "lxc.environment = A=b c", "lxc.environment = FROM_IMAGE=yes", "lxc.init.cwd = /srv"} <= lines
    assert not any(ln.startswith("lxc.rootfs.options") for ln in lines)


def test_config_without_cgroup_and_read_only():
    text = build_config(_inst(read_only=True, workdir="/tmp"), None)
    assert "lxc.cgroup" not in text
    assert "lxc.rootfs.options = ro" in text.splitlines()
    assert "lxc.init.cwd = /tmp" in text.splitlines()


def test_a_newline_cannot_smuggle_config_keys():
    with pytest.raises(StartFailed, match="newline"):
        build_config(_inst(env={"X": "1\nlxc.cap.drop ="}), None)


def _image_dir(tmp_path, *dirs) -> Path:
    root = tmp_path / "rootfs"
    for d in dirs:
        (root / d).mkdir(parents=True)
    return root


def test_a_read_only_run_shares_the_image_without_cap_sys_admin(tmp_path, monkeypatch):
    monkeypatch.setattr(_Img, "rootfs", _image_dir(tmp_path, "proc", "sys", "dev", "srv"))
    text = build_config(_inst(read_only=True, harden=False), None)
    lines = text.splitlines()
    assert f"lxc.rootfs.path = dir:{_Img.rootfs}" in lines and "lxc.rootfs.options = ro" in lines
    # Shared by every instance: no remounting it writable.
    assert [ln for ln in lines if ln.startswith("lxc.cap.drop")] == [f"lxc.cap.drop = {lxc_mod.CAP_DROP} sys_admin"]
    hardened = build_config(_inst(read_only=True), None).splitlines()
    assert f"lxc.rootfs.path = dir:{_Img.rootfs}" in hardened
    assert not any("sys_admin" in ln for ln in hardened if ln.startswith("lxc.cap.keep"))


@pytest.mark.parametrize("why", ["writable", "workdir-missing", "dev-missing", "volume"])
def test_an_overlay_whenever_lxc_would_write_into_the_image(tmp_path, monkeypatch, why):
    monkeypatch.setattr(_Img, "rootfs", _image_dir(tmp_path, "proc", "sys", *(["dev"] if why != "dev-missing" else []),
                                                   *(["srv"] if why != "workdir-missing" else [])))
    inst = _inst(read_only=why != "writable", harden=False)
    if why == "volume":
        inst.mounts = [object()]
    text = build_config(inst, None) if why != "volume" else None
    assert not lxc_mod.shares_image(inst)
    if text is not None:
        assert f"lxc.rootfs.path = overlay:{_Img.rootfs}:/state/web/overlay/upper" in text.splitlines()
        assert f"lxc.cap.drop = {lxc_mod.CAP_DROP}" in text.splitlines()


@pytest.fixture
def lxc():
    need("lxc")


@pytest.mark.parametrize("harden", [False, True])
def test_a_read_only_run_on_the_shared_image_cannot_write_to_it(lxc, harden):
    img = kit.images.get("busybox")
    before = sorted(p.name for p in img.rootfs.iterdir())
    r = kit.run("busybox", ["sh", "-c", "mount -o remount,rw / ; touch /kit-probe /bin/kit-probe; "
                                        "cat /proc/self/status"],
                runtime="lxc", read_only=True, harden=harden)
    assert r.info["rootfs"] == "image, read-only"
    assert "Read-only file system" in r.stderr and "permission denied" in r.stderr  # the remount was refused
    cap_eff = int(next(ln for ln in r.stdout.splitlines() if ln.startswith("CapEff:")).split()[1], 16)
    assert not cap_eff & (1 << 21)  # CAP_SYS_ADMIN
    kit.api.wait_for_teardown()
    assert sorted(p.name for p in img.rootfs.iterdir()) == before  # no probe, no .lxc_keep left
    assert not (img.rootfs / "bin" / "kit-probe").exists()


def test_container_below_kit_cgroup_monitor_beside_it(lxc, names):
    name = unique("lxcg")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime="lxc", name=name, memory="48m")
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    by_name = {psutil.Process(p).name(): p for p in rt.pids(inst)}
    group = f"/kit/{inst.tag}"

    def memcg(pid):
        return [ln for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in ln
                or ln.startswith("0::")][0].split(":", 2)[2]

    assert memcg(by_name["sleep"]) == group + "/ctr"
    assert memcg(inst.proc.pid) == group + "-lxcmon"  # lxc-execute's monitor is not charged to the container
    limit_file = "memory.max" if cgroups.version() == 2 else "memory.limit_in_bytes"
    assert int((inst.cgroup.path / limit_file).read_text()) == 48 * 2**20


def test_overlay_is_mounted_only_inside_the_container(lxc, names):
    name = unique("lxov")
    names.append(name)
    kit.start("busybox", ["sh", "-c", "echo x > /written && exec sleep 300"], runtime="lxc", name=name)
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    upper = inst.state_dir / "overlay" / "upper"
    wait_until(lambda: (upper / "written").exists(), 10, what="the write to land in the instance's upper layer")
    assert mounts.below(inst.state_dir) == []  # nothing on the host's mount table
    assert not (kit.images.get("busybox").rootfs / "written").exists()


def test_exec_sees_the_containers_environment_not_the_hosts(lxc, names):
    name = unique("lxenv")
    names.append(name)
    os.environ["KIT_TEST_HOST_ONLY"] = "leak"
    try:
        kit.start("busybox", ["sleep", "300"], runtime="lxc", name=name, env={"MINE": "1"})
        r = kit.exec_(name, ["env"])
    finally:
        del os.environ["KIT_TEST_HOST_ONLY"]
    env = dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)
    assert env["MINE"] == "1" and env["PATH"].startswith("/usr/local/sbin")
    assert "KIT_TEST_HOST_ONLY" not in env
    assert kit.logs(name).stderr == ""  # lxc-execute's complaint about lxc-attach's query is filtered out


def test_config_and_log_are_memory_files_the_container_cannot_reach(lxc, names):
    name = unique("lxmem")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime="lxc", name=name)
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    argv = psutil.Process(inst.proc.pid).cmdline()
    for flag in ("-f", "-o"):  # LXC opened them by the kit's /proc path; nothing is on disk
        assert argv[argv.index(flag) + 1].startswith(f"/proc/{os.getpid()}/fd/")
    assert not (inst.state_dir / "lxc.conf").exists() and not (inst.state_dir / "lxc.log").exists()
    assert b"started with pid" in rt._log(inst)
    # Close-on-exec: neither the command nor a process exec'd later holds them (it could forge the log).
    seen = kit.exec_(name, ["sh", "-c", "ls -l /proc/1/fd/ /proc/self/fd/; for p in /proc/[0-9]*; do "
                                        "ls -l $p/fd/ 2>/dev/null; done"]).stdout
    assert "memfd" not in seen and "lxc." not in seen
    for pid in rt.pids(inst):  # and on the host: only LXC's monitor holds them (the log it writes)
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not any("memfd:lxc" in h for h in held) or pid == inst.proc.pid, (pid, held)


def test_a_start_failure_quotes_lxcs_error_from_the_memory_log(lxc):
    # LXC's first ERROR line, read from its log in memory.
    with pytest.raises(StartFailed, match=r"could not start 'sh': .*Could not change directory to \"/no/such/dir\""):
        kit.run("busybox", ["sh"], runtime="lxc", workdir="/no/such/dir", read_only=True)
