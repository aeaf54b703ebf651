"""Baseline hardening (issue 9): runc, crun and LXC refuse what Docker refuses by default.

The live tests run ``unshare -U true`` in busybox. Creating a user namespace needs no
capability, so without a seccomp filter it succeeds in every one of these containers; with
the baseline (and in Docker, whose default profile refuses ``unshare`` without CAP_SYS_ADMIN)
it fails with EPERM. ``Seccomp:`` in /proc/self/status says whether a filter is loaded (2).
"""

import errno
import json

import pytest

import kit
from kit.runtimes import hardening, lxc, oci
from kit.spec import RunSpec
from tests.conftest import need

PROBE = ["sh", "-c", "grep '^Seccomp:' /proc/self/status; unshare -U true && echo unshare-allowed"]


def test_oci_profile_allows_by_default_and_refuses_the_list_with_eperm():
    p = hardening.oci_seccomp()
    assert p["defaultAction"] == "SCMP_ACT_ALLOW"
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    plain = [r for r in p["syscalls"] if "args" not in r and r["errnoRet"] == errno.EPERM]
    assert len(plain) == 1 and plain[0]["action"] == "SCMP_ACT_ERRNO"
    assert {"kexec_load", "kexec_file_load", "keyctl", "add_key", "request_key", "unshare", "setns",
            "mount", "umount2", "pivot_root", "bpf", "perf_event_open", "open_by_handle_at",
            "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
            "settimeofday", "clock_settime", "userfaultfd"} <= set(plain[0]["names"])
    # What a program needs every day stays allowed.
    assert not {"read", "write", "execve", "clone", "ptrace", "chroot"} & set(plain[0]["names"])
    json.dumps(p)


def test_clone_is_refused_only_with_namespace_flags_and_clone3_gets_enosys():
    p = hardening.oci_seccomp()
    clone = [r for r in p["syscalls"] if r["names"] == ["clone"]]
    bits = {r["args"][0]["value"] for r in clone}
    assert bits == set(hardening.CLONE_NS_FLAGS.values())
    for r in clone:
        b = r["args"][0]["value"]
        assert r["args"] == [{"index": 0, "value": b, "valueTwo": b, "op": "SCMP_CMP_MASKED_EQ"}]
        assert r["errnoRet"] == errno.EPERM
    assert [r["errnoRet"] for r in p["syscalls"] if r["names"] == ["clone3"]] == [errno.ENOSYS]


def test_lxc_profile_is_a_version_2_denylist_of_the_same_calls():
    lines = hardening.lxc_seccomp().splitlines()
    assert lines[:3] == ["2", "denylist", "[all]"]
    plain = {ln.split()[0] for ln in lines[3:] if ln.endswith(" errno 1")}
    assert plain == set(hardening.DENIED_SYSCALLS)
    assert "clone errno 1 [0,0x10000000,SCMP_CMP_MASKED_EQ,0x10000000]" in lines
    assert "clone3 errno 38" in lines


def test_lxc_profile_file_is_written_once_by_content(tmp_path):
    a = hardening.lxc_profile_file(tmp_path)
    assert a.read_text() == hardening.lxc_seccomp()
    mtime = a.stat().st_mtime_ns
    assert hardening.lxc_profile_file(tmp_path) == a and a.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [a.name]  # no temporary file left


def test_oci_config_has_the_filter_only_when_hardened():
    on = oci.build_config(RunSpec(image="x", command=["true"], name="h"), None, oci.Path("/r"))
    off = oci.build_config(RunSpec(image="x", command=["true"], name="h", harden=False), None, oci.Path("/r"))
    assert on["linux"]["seccomp"] == hardening.oci_seccomp()
    assert "seccomp" not in off["linux"]
    assert on["process"]["capabilities"] == off["process"]["capabilities"]  # runc's three either way


def _lxc_inst(harden: bool):
    from pathlib import Path

    from kit.runtimes.base import Context, InstanceState

    class Img:
        rootfs, config = Path("/images/x/rootfs"), {}

    spec = RunSpec(image="x", command=["true"], name="h", harden=harden)
    return InstanceState(name="h", runtime="lxc", spec=spec, image=Img(), id="kit-s-h", state_dir=Path("/state/h"),
                    ctx=Context("s", "t", Path("/state")))


def test_lxc_config_keeps_dockers_capabilities_masks_proc_and_loads_the_profile():
    on = lxc.build_config(_lxc_inst(True), None).splitlines()
    off = lxc.build_config(_lxc_inst(False), None).splitlines()
    assert f"lxc.cap.keep = {' '.join(hardening.DOCKER_CAPS)}" in on
    assert not any(ln.startswith("lxc.cap.drop") for ln in on)  # LXC refuses keep and drop together
    profile = next(ln.split(" = ", 1)[1] for ln in on if ln.startswith("lxc.seccomp.profile = "))
    assert open(profile).read() == hardening.lxc_seccomp()
    assert "lxc.mount.entry = /dev/null proc/kcore none bind,optional 0 0" in on
    assert "lxc.mount.entry = tmpfs proc/acpi tmpfs ro,nosuid,nodev,noexec,optional 0 0" in on
    assert not any(ln.startswith(("lxc.seccomp", "lxc.cap.keep", "lxc.mount.entry = /dev/null")) for ln in off)
    assert f"lxc.cap.drop = {lxc.CAP_DROP}" in off


@pytest.mark.parametrize("runtime", ["runc", "crun", "lxc", "docker"])
def test_a_blocked_syscall_is_refused(runtime):
    need(runtime)
    r = kit.run("busybox", PROBE, runtime=runtime)
    assert r.stdout.split() == ["Seccomp:", "2"], (r.stdout, r.stderr)
    assert "unshare(0x10000000): Operation not permitted" in r.stderr, r.stderr
    assert r.exit_code != 0


@pytest.mark.parametrize("runtime", ["runc", "crun", "lxc", "docker"])
def test_without_hardening_the_same_call_succeeds(runtime):
    need(runtime)
    r = kit.run("busybox", PROBE, runtime=runtime, harden=False)
    assert r.stdout.split() == ["Seccomp:", "0", "unshare-allowed"], (r.stdout, r.stderr)
    assert r.exit_code == 0


def test_lxc_hardened_masks_proc_and_keeps_dockers_capabilities():
    need("lxc")
    script = "wc -c < /proc/keys; grep '^CapEff:' /proc/self/status"
    on = kit.run("busybox", ["sh", "-c", script], runtime="lxc").stdout.split()
    off = kit.run("busybox", ["sh", "-c", script], runtime="lxc", harden=False).stdout.split()
    # Docker's 14 capabilities: 0xa80425fb.
    assert on == ["0", "CapEff:", "00000000a80425fb"], on
    assert off[0] != "0" and off[2] != "00000000a80425fb", off
