"""What each runtime declares about its instances is true of them (issue 21).

Measurement reads these declarations instead of testing runtime names (kit.bench: a service's port,
a load's scratch directory, where CPU is read from, what is shared on disk, which daemons cost
memory), so a wrong one would put a figure in the wrong place. Each is checked here against a live
instance, from inside it: its network namespace, its root directory, its cgroup.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import psutil
import pytest

import kit
from kit import runtimes

from tests.conftest import need, unique

RUNTIMES = ("process", "runc", "runsc", "lxc", "docker")


def _inside(name: str, argv: list[str]) -> str:
    r = kit.exec(name, argv)
    assert r.exit_code == 0, (argv, r.stderr)
    return r.stdout.strip()


def _cgroup(text: str) -> str:
    """The cpuacct group (cgroup v1) or the unified one of a /proc/PID/cgroup text."""
    lines = [ln.split(":", 2) for ln in text.splitlines() if ln.count(":") >= 2]
    for _, controllers, path in lines:
        if "cpuacct" in controllers.split(","):
            return path
    return next(path for hid, _, path in lines if hid == "0")


def _host_pid(name: str, seconds: str) -> int:
    """The host process of ``sleep SECONDS`` in instance ``name`` (gVisor's: its sandbox)."""
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if argv == ["sleep", seconds] or (argv[:1] == ["runsc-sandbox"] and name in " ".join(argv)):
            return p.pid
    raise AssertionError(f"no host process of {name}")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_declared_host_sharing_is_what_an_instance_sees(runtime, names):
    need(runtime)
    rt = runtimes.get(runtime)
    name = unique(f"traits-{runtime}")
    names.append(name)
    seconds = str(300_000 + secrets.randbelow(100_000))  # finds its process on the host
    kit.start("busybox", ["sleep", seconds], runtime=runtime, name=name)
    net = _inside(name, ["readlink", "/proc/self/ns/net"])
    assert (net == os.readlink("/proc/self/ns/net")) is rt.host_network, (runtime, net)
    root = _inside(name, ["stat", "-c", "%d:%i", "/"])
    host_root = os.stat("/")
    assert (root == f"{host_root.st_dev}:{host_root.st_ino}") is rt.shares_host_files, (runtime, root)
    # Seen from the host (inside, a cgroup namespace shows "/"): the command's group is one of the
    # instance's own, not the kit's (gVisor's command lives in the Sentry; its sandbox is the host's process).
    group = _cgroup(Path(f"/proc/{_host_pid(name, seconds)}/cgroup").read_text())
    assert (group != _cgroup(Path("/proc/self/cgroup").read_text())) is rt.cgroup_accounting, (runtime, group)


def test_declared_daemons_run_and_image_formats_are_stored_forms():
    """A runtime's daemons (whose memory kit.bench.footprint reports) are running processes; its image
    formats are forms the image store makes or an engine's own copy."""
    need("docker")
    running = {p.info["name"] for p in psutil.process_iter(["name"])}
    assert set(runtimes.get("docker").daemons) <= running
    known = {"rootfs", "oci", "lxc", "qemu", "kernel", "docker", "podman"}
    for name in runtimes.names():
        assert set(runtimes.get(name).image_formats) <= known, name
    assert runtimes.get("process").image_formats == ()  # the host's files: nothing of the image


def test_of_kind_names_the_runtime_the_magics_run():
    assert runtimes.get(runtimes.of_kind("vm")).kind == "vm"
    assert runtimes.get(runtimes.of_kind("process")).kind == "process"
    with pytest.raises(kit.errors.RuntimeUnavailable, match="no runtime of kind 'pod'"):
        runtimes.of_kind("pod")
