"""What an instance's writes survive: ``stop``, ``rm``, and a named volume, seen from the host.

A container's writable layer is a directory of its state on the host's disk: ``stop`` ends its
processes and leaves the layer there (``docker start`` would find it again), ``rm`` deletes it.
A kit VM's writable layer is guest memory (its root is a tmpfs over the shared read-only base), so
its writes are gone once it powers off. A named volume is a directory apart from every instance:
``rm`` leaves it, and the next instance that mounts it reads what the last one wrote.

Each write is a value the instance computes (``kit-$((a*b))``), so the text of the command, which
a runtime keeps in its state (a VM's spec, an OCI config), never passes for the data.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from .. import api, volumes

_MIB = 2**20

#: Files larger than this in an instance's state are not searched (a VM's disk image is not its writes).
_MAX_SEARCH = 64 * 2**20


def _marker() -> tuple[str, str]:
    """A shell expression and the value it prints: ``kit-$((a*b))`` and ``kit-<a*b>``."""
    a, b = 1000 + secrets.randbelow(9000), 1000 + secrets.randbelow(9000)
    return f"kit-$(({a}*{b}))", f"kit-{a * b}"


def holds(directory: Path, value: bytes) -> bool:
    """Whether any regular file under ``directory`` (up to :data:`_MAX_SEARCH` bytes) contains ``value``."""
    for dirpath, _, files in os.walk(directory):
        for n in files:
            p = os.path.join(dirpath, n)
            try:
                if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) <= _MAX_SEARCH:
                    if value in Path(p).read_bytes():
                        return True
            except OSError:
                continue  # a socket or a file removed meanwhile
    return False


def _engine_layers(h) -> list[Path]:
    """The writable layer a container engine keeps outside the kit's state (Docker's overlay2 upper directory)."""
    if h.runtime != "docker":
        return []
    r = subprocess.run(["docker", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", h.id],
                       capture_output=True, text=True, timeout=60)
    return [Path(r.stdout.strip())] if r.returncode == 0 and r.stdout.strip().startswith("/") else []


def after_stop(runtime: str, image: str = "busybox", timeout: float = 300) -> dict:
    """Write a file into the instance's own root, ``stop`` it, and look for the data in its state
    on the host; then ``rm`` it and say whether its state is gone.

    Returns:
        runtime, ``kept_after_stop`` (the data is on the host's disk, in the stopped instance's
        state) and ``state_left_after_rm``.
    """
    expr, value = _marker()
    h = api.start(image, ["sh", "-c", f"echo {expr} > /root/written; sync; echo done; exec sleep 600"], runtime=runtime)
    try:
        h.wait_until(lambda: "done" in h.logs().stdout, timeout, what=f"{runtime} to write")
        h.stop(timeout=2)  # its sleep ignores SIGTERM as PID 1: the kill that follows is what stop does
        state = h.state.state_dir
        kept = any(holds(d, value.encode()) for d in [state, *_engine_layers(h)])
    finally:
        h.rm(force=True)
    return {"runtime": runtime, "kept_after_stop": kept, "state_left_after_rm": state.exists()}


def volume_keeps(runtime: str, volume: str, image: str = "busybox", timeout: float = 300) -> dict:
    """Write into named volume ``volume`` (made for this, removed after) from one instance, ``rm``
    it, and read the file back from a new instance of the same image.

    Returns:
        runtime, ``written`` (the value), ``read_after_rm`` (what the new instance read) and ``kept``.
    """
    expr, value = _marker()
    volumes.create(volume)
    try:
        api.run(image, ["sh", "-c", f"echo {expr} > /data/written"], runtime=runtime, volumes=[f"{volume}:/data"],
                check=True, timeout=timeout)
        read = api.run(image, ["cat", "/data/written"], runtime=runtime, volumes=[f"{volume}:/data"],
                       check=True, timeout=timeout).stdout.strip()
    finally:
        volumes.rm(volume)
    return {"runtime": runtime, "written": value, "read_after_rm": read, "kept": read == value}


def where_writes_went(handle, usages, idle_own: float, sibling: str | None = None) -> dict:
    """How much an instance that wrote grew on the host's disk against an idle one of its runtime
    (``idle_own`` bytes; ``usages``: kit.bench.disk.image_rows' second value), and for a VM what its
    guest saw against an idle ``sibling`` VM: its root's type, its tmpfs (Shmem) and used memory
    growth. The instance is removed after, and ``state_left_after_rm`` says whether its state went.

    Returns:
        One row (its runtime's ``kind`` on it), in MiB (2^20 bytes) as notebook 03 shows them.
    """
    from . import disk, footprint

    rt, inst = handle.backend, handle.state
    grown = disk.instance_usage(rt, inst, disk.shared_usage(rt.name, usages, inst)).allocated
    guest = {}
    if rt.kind == "vm" and sibling:
        mine, other = footprint.guest_meminfo(handle.name), footprint.guest_meminfo(sibling)
        mounts = [line.split() for line in handle.exec(["cat", "/proc/mounts"]).stdout.splitlines()]
        used = (mine["MemTotal"] - mine["MemAvailable"]) - (other["MemTotal"] - other["MemAvailable"])
        guest = {"guest_root_fs": next(m[2] for m in mounts if m[1] == "/"),
                 "guest_tmpfs_growth_mib": (mine["Shmem"] - other["Shmem"]) / _MIB,
                 "guest_used_growth_mib": used / _MIB}
    handle.rm(force=True)
    return {"runtime": rt.name, "kind": rt.kind, "idle_instance_mib": idle_own / _MIB,
            "writer_instance_mib": grown / _MIB, "growth_mib": (grown - idle_own) / _MIB, "state_left_after_rm": inst.state_dir.exists(), **guest}
