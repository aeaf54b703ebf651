"""The run options beyond the basics (user, cap_add/cap_drop, sysctls, tmpfs, init, stop_signal, labels,
kit.spec.EXTRAS): each checked once in the spec, each honoured by every runtime that can (seen from inside
the instance), and refused by name, before anything starts, by a runtime that cannot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import kit
from kit.errors import InvalidSpec
from kit.runtimes import oci
from kit.spec import RunSpec, Tmpfs, parse_caps, parse_signal, parse_sysctls, parse_tmpfs, resolve_user
from tests.conftest import need


# ---- the spec ------------------------------------------------------------------------------

def test_each_option_is_checked_once_in_the_spec():
    assert parse_caps(["net_admin", "CAP_CHOWN", "all"], "cap_add") == ["CAP_NET_ADMIN", "CAP_CHOWN", "ALL"]
    assert parse_sysctls(["net.core.somaxconn=1024"]) == {"net.core.somaxconn": "1024"}
    assert parse_tmpfs("/run:size=64m,mode=1777") == Tmpfs("/run", 64 * 2**20, 0o1777)
    assert parse_tmpfs("/run").options() == [] and parse_tmpfs("/t:mode=700").options() == ["mode=700"]
    assert parse_signal("quit") == parse_signal("SIGQUIT") == parse_signal(3) == "SIGQUIT"
    for bad, said in [(dict(cap_add=["NET_WIZARD"]), "not a Linux capability"),
                      (dict(sysctls={"vm.swappiness": "1"}), "not namespaced"),
                      (dict(sysctls={"kernel.panic": "1"}), "not namespaced"),
                      (dict(tmpfs=["run"]), "absolute path"), (dict(tmpfs=["/run:uid=5"]), "tmpfs option"),
                      (dict(stop_signal="SIGNOPE"), "not a signal"), (dict(user="a b"), "user .a b. is not valid"),
                      (dict(tmpfs=["/d"], volumes=["/tmp:/d"]), "two mounts are at")]:
        with pytest.raises(InvalidSpec, match=said):
            RunSpec(image="x", command=["true"], **bad)
    s = RunSpec(image="x", command=["true"], cap_drop=["ALL"], cap_add=["CHOWN"], labels={"a": "b"})
    assert s.capabilities(oci.CAPABILITIES) == ["CAP_CHOWN"] and s.asked() == ["cap_add", "cap_drop", "labels"]
    assert RunSpec(image="x", command=["true"], cap_drop=["KILL"]).capabilities(oci.CAPABILITIES) == \
        ["CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"]
    assert RunSpec(image="x", command=["true"]).asked() == []


def test_a_user_is_looked_up_in_the_images_own_files(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nmysql:x:101:102::/nonexistent:/bin/false\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nmysql:x:102:\nssl:x:110:mysql\n")
    assert resolve_user("mysql", tmp_path) == (101, 102, [110])
    assert resolve_user("101:ssl", tmp_path) == (101, 110, [])
    assert resolve_user("4000", tmp_path) == (4000, 0, [])   # a bare uid with no entry: gid 0, as docker run
    with pytest.raises(InvalidSpec, match="not in the image's /etc/passwd"):
        resolve_user("postgres", tmp_path)
    with pytest.raises(InvalidSpec, match="not in the image's /etc/group"):
        resolve_user("mysql:wheel", tmp_path)


def test_the_oci_config_carries_every_option(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("app:x:1000:1000::/home/app:/bin/sh\n")

    class Img:
        rootfs, config = tmp_path, {}

    spec = RunSpec(image="x", command=["serve"], user="app", cap_add=["NET_ADMIN"], cap_drop=["KILL"],
                   sysctls={"net.core.somaxconn": "512"}, tmpfs=["/run:size=1m"], init=True, labels={"tier": "db"})
    cfg = oci.build_config(spec, Img(), Path("/r"))
    assert cfg["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert cfg["process"]["capabilities"]["bounding"] == ["CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"]
    assert cfg["linux"]["sysctl"] == {"net.core.somaxconn": "512"} and cfg["annotations"] == {"tier": "db"}
    assert cfg["process"]["args"] == [oci.INIT_TARGET, "--", "serve"]
    by_dest = {m["destination"]: m for m in cfg["mounts"]}
    assert by_dest["/run"]["type"] == "tmpfs" and "size=1048576" in by_dest["/run"]["options"]
    assert by_dest[oci.INIT_TARGET]["source"] == oci.init_binary()
    json.dumps(cfg)


@pytest.mark.parametrize("runtime, option, value", [
    ("process", "user", "1000"), ("process", "tmpfs", ["/x"]), ("qemu", "cap_drop", ["ALL"]),
    ("qemu", "stop_signal", "SIGQUIT"), ("lxc", "stop_signal", "SIGQUIT"), ("runsc", "sysctls", {"net.core.somaxconn": "9"}),
])
def test_a_runtime_that_cannot_honour_an_option_refuses_it_before_anything_starts(runtime, option, value):
    before = set(kit.ps().name)
    with pytest.raises(InvalidSpec) as e:
        kit.run("busybox", ["true"], runtime=runtime, **{option: value})
    assert f"runtime {runtime!r} cannot honour {option}:" in str(e.value) and "\n" not in str(e.value)
    assert set(kit.ps().name) == before


# ---- seen from inside ----------------------------------------------------------------------

PROBE = ("id -u; id -g; grep CapBnd /proc/self/status | cut -f2; echo $(cat /proc/sys/net/core/somaxconn); "
         "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; tr '\\0' ' ' </proc/1/cmdline; echo")


@pytest.mark.parametrize("runtime", ["runc", "runsc", "lxc", "docker"])
def test_every_container_runtime_honours_the_options(runtime):
    need(runtime)
    sysctls = {} if "sysctls" in kit.runtimes.get(runtime).cannot else {"net.core.somaxconn": "1000"}
    r = kit.run("busybox", ["sh", "-c", PROBE], runtime=runtime, user="65534:65534", cap_drop=["ALL"],
                cap_add=["NET_ADMIN"], sysctls=sysctls, tmpfs=["/scratch:size=8m"], init=True, timeout=60)
    uid, gid, capbnd, somaxconn, fstype, pid1 = r.stdout.splitlines()
    assert (uid, gid, fstype) == ("65534", "65534", "tmpfs"), r.stderr
    assert int(capbnd, 16) == 1 << 12   # the bounding set: CAP_NET_ADMIN alone
    if sysctls:
        assert somaxconn == "1000"
    # PID 1 is an init that runs the command: tini (the kit's bind mount, or Docker's docker-init) or lxc-init
    assert pid1.split()[0] in (oci.INIT_TARGET, "/sbin/docker-init", "init"), pid1


@pytest.mark.parametrize("runtime", ["runc", "runsc", "docker"])
def test_stop_sends_the_stop_signal_and_waits_the_stop_timeout(runtime):
    need(runtime)
    script = "trap 'echo got-quit; exit 7' QUIT; trap 'echo got-term; exit 8' TERM; echo up; while :; do sleep 0.1; done"
    with kit.start("busybox", ["sh", "-c", script], runtime=runtime, stop_signal="QUIT", stop_timeout=20) as inst:
        inst.wait_until(lambda: "up" in inst.logs().stdout, 30, what="the trap to be set")
        t = time.monotonic()
        r = inst.stop()
        assert (r.exit_code, r.stdout.split()[-1]) == (7, "got-quit") and time.monotonic() - t < 15


def test_a_vm_honours_user_sysctls_and_tmpfs_in_its_own_kernel():
    need("qemu")
    r = kit.run("debian-redis", ["sh", "-c", PROBE], runtime="qemu", user="redis", init=True, cap_add=["NET_ADMIN"],
                sysctls={"net.core.somaxconn": "1000"}, tmpfs=["/scratch:size=8m"], timeout=300)
    uid, gid, _, somaxconn, fstype, _ = r.stdout.splitlines()
    img = kit.images.get("debian-redis").rootfs
    assert (int(uid), int(gid)) == resolve_user("redis", img)[:2] and (somaxconn, fstype) == ("1000", "tmpfs"), r.stderr
    with pytest.raises(InvalidSpec, match="needs setpriv in the image"):
        kit.run("busybox", ["true"], runtime="qemu", user="nobody", timeout=120)
