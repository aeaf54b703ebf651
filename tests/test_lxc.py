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
from kit import cgroups, config
from kit._proc import wait_until
from kit.errors import StartFailed
from kit.runtimes import _rootfs
from kit.runtimes.base import Instance
from kit.runtimes.lxc import build_config
from kit.spec import RunSpec


class _Img:
    name = "img"
    rootfs = Path("/images/abc/rootfs")
    config = {"env": {"FROM_IMAGE": "yes"}, "workdir": "/srv"}


class _Group:
    rel = "kit/sess-web"


def _inst(**kw) -> Instance:
    spec = RunSpec(image="img", command=["sh"], name="web", **kw)
    return Instance(name="web", runtime="lxc", spec=spec, image=_Img(), id="kit-sess-web",
                    state_dir=Path("/state/web"))


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


@pytest.fixture
def lxc():
    need("lxc")


def test_container_below_kit_cgroup_monitor_beside_it(lxc, names):
    name = unique("lxcg")
    names.append(name)
    kit.start("busybox", ["sleep", "300"], runtime="lxc", name=name, memory="48m")
    rt, inst = kit.api.instance(name)
    by_name = {psutil.Process(p).name(): p for p in rt.pids(inst)}
    group = f"/kit/{config.SESSION_ID}-{name}"

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
    rt, inst = kit.api.instance(name)
    upper = inst.state_dir / "overlay" / "upper"
    wait_until(lambda: (upper / "written").exists(), 10, what="the write to land in the instance's upper layer")
    assert _rootfs.mounts_below(inst.state_dir) == []  # nothing on the host's mount table
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
