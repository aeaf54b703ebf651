"""Disk: image bytes per format, bytes each instance adds, and totals with sharing accounted.

Sharing is accounted by inode: a file hard-linked (or the same file seen
twice) counts once, and an instance's files that are the image's own inodes
count as the image's. Walks never cross into mount points, so a bind or
overlay mount of the image inside an instance's directory is not counted
again.

A VM's shared bytes are the files QEMU boots it from, read from its own
command line (:func:`boot_paths`): its kernel, its initramfs (which carries the
modules its init loads) and its read-only disk, never every kernel cached
under ``$KIT_HOME/kernels`` (other versions, whole module trees, the 9p kernel).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .. import runtimes
from ..images import engine
from ..usage import DiskUsage as Usage  # noqa: F401  (this module's figures are these)
from ..usage import disk_usage as usage
from ..usage import mount_points
from ..vm import kernel, machine, qemubin


def default_kernel() -> Path | None:
    """The kernel file a VM boots when no kernel is given (:func:`kit.vm.kernel.cached`; the kit's own
    is its vmlinux where QEMU boots it through PVH), or None: nothing built or fetched."""
    k = kernel.cached()
    if k is None:
        return None
    return machine.boot_image(k.vmlinuz, k.vmlinux, qemubin.version(shutil.which(machine.QEMU) or machine.QEMU))


def format_paths(image) -> dict[str, Path]:
    """Every on-disk format of ``image`` that exists: rootfs, formats/<name>, and ``kernel``: the one
    guest kernel file a VM boots by default (not the kernels directory: other versions and module
    trees are no VM's; the initramfs a VM boots is counted from the VM itself, :func:`boot_usage`)."""
    out = {"rootfs": Path(image.rootfs)}
    fdir = Path(image.dir) / "formats"
    if fdir.is_dir():
        for d in sorted(fdir.iterdir()):
            if d.is_dir() and any(d.iterdir()):
                out[d.name] = d
    k = default_kernel()
    if k is not None:
        out["kernel"] = k
    return out


def docker_image_size(image) -> int | None:
    """Size of the daemon's copy of ``image`` (the SDK's ``Size``), or None if it has none."""
    try:
        with engine.connected(timeout=10) as client:
            for img in client.images.list():
                labels = img.labels or {}
                tags = " ".join(img.tags)
                if labels.get("kit.image.id") == image.id or image.short_id in tags:
                    return int(img.attrs.get("Size", 0))
    except Exception:  # no SDK, no daemon: nothing to report
        return None
    return None


def image_rows(image) -> tuple[list[dict], dict[str, Usage]]:
    """Rows of image_apparent/image_allocated per format, and each format's Usage."""
    rows, usages = [], {}
    mounts = mount_points()
    for fmt, path in format_paths(image).items():
        u = usage(path, mounts=mounts)
        usages[fmt] = u
        rows += [{"metric": "image_apparent", "component": fmt, "value": float(u.apparent)},
                 {"metric": "image_allocated", "component": fmt, "value": float(u.allocated)}]
    size = docker_image_size(image)
    if size is not None:
        # The daemon keeps its own copy under its data root: apparent size only is known.
        usages["docker"] = Usage.opaque(f"docker-image:{image.id}", size)
        rows += [{"metric": "image_apparent", "component": "docker", "value": float(size)},
                 {"metric": "image_allocated", "component": "docker", "value": float(size)}]
    return rows, usages


def shared_usage(runtime: str, usages: dict[str, Usage], inst=None) -> Usage:
    """What every instance of ``runtime`` shares on disk: the image formats it reads
    (:attr:`~kit.runtimes.base.Runtime.image_formats`; a live VM's own boot files replace these),
    each inode once.

    Args:
        inst: a live instance of ``runtime``. For a VM its own boot files are counted
            (:func:`boot_usage`: its kernel, initramfs and disk) instead of every derivation of
            the image and the default kernel, which is all that is known without one.
    """
    if inst is not None and runtime_kind(runtime) == "vm":
        total = Usage()
        for u in boot_usage(runtime, inst).values():
            total = total.add(u)
        return total
    total = Usage()
    for fmt in _runtime(runtime).image_formats:
        if fmt in usages:
            total = total.add(usages[fmt])
    return total


def runtime_kind(runtime) -> str:
    """The kind (process, container, sandbox, vm) of a runtime given by name or object."""
    return _runtime(runtime).kind


def _runtime(runtime):
    """The runtime object of ``runtime``, a name or the object itself."""
    return runtimes.get(runtime) if isinstance(runtime, str) else runtime


def _qemu_file(value: str) -> str | None:
    """The ``file=`` of a QEMU option value (``a=b,file=PATH,c=d``; a comma in PATH is doubled)."""
    for part in re.split(r"(?<!,),(?!,)", value):
        if part.startswith("file="):
            return part[len("file="):].replace(",,", ",")
    return None


def boot_paths(argv: list[str]) -> dict[str, list[Path]]:
    """The files a QEMU command line boots from: ``kernel`` (``-kernel``), ``initrd`` (``-initrd``) and
    ``disk`` (every ``-drive file=``).

    >>> boot_paths(["qemu", "-kernel", "/k/vmlinuz", "-initrd", "/i.cpio", "-drive", "file=/a,,b.img,format=raw"])
    {'kernel': [PosixPath('/k/vmlinuz')], 'initrd': [PosixPath('/i.cpio')], 'disk': [PosixPath('/a,b.img')]}
    """
    out: dict[str, list[Path]] = {"kernel": [], "initrd": [], "disk": []}
    for flag, value in zip(argv, argv[1:]):
        if flag == "-kernel":
            out["kernel"].append(Path(value))
        elif flag == "-initrd":
            out["initrd"].append(Path(value))
        elif flag == "-drive":
            f = _qemu_file(value)
            if f:
                out["disk"].append(Path(f))
    return out


def boot_usage(runtime, inst) -> dict[str, Usage]:
    """The files a live VM booted from, from its own QEMU command line, as ``kernel`` (its kernel, and
    an initramfs of the kernel's: the kit's init and the modules it loads) and ``qemu`` (the image's
    own: its initramfs with the image, or its disk).

    Raises:
        KitError: ``inst`` is not a live VM of ``runtime`` (its command line is gone).
    """
    paths = boot_paths(_runtime(runtime).vm(inst).argv)
    image_dir = Path(os.path.realpath(inst.image.dir)) if inst.image is not None else None
    out = {"kernel": Usage(), "qemu": Usage()}
    mounts = mount_points()
    for p in paths["kernel"] + paths["initrd"] + paths["disk"]:
        real = Path(os.path.realpath(p))
        own = p not in paths["kernel"] and image_dir is not None and image_dir in real.parents
        fmt = "qemu" if own else "kernel"
        out[fmt] = out[fmt].add(usage(real, mounts=mounts))
    return out


def docker_container_size(inst) -> int | None:
    """A Docker container's own bytes: its writable layer (``SizeRw``) plus the daemon's
    per-container directory (config, hosts, resolv.conf, logs), or None without a daemon."""
    cid = inst.info.get("container_id") or inst.id
    try:
        client = inst.ctx.docker()  # the instance's session's
        # the list endpoint is the SDK's public way to ask for sizes (inspect has no size flag)
        found = client.api.containers(all=True, size=True, filters={"id": cid})
        if not found:
            return None
        meta = usage(Path(client.info()["DockerRootDir"]) / "containers" / found[0]["Id"])
        return int(found[0].get("SizeRw") or 0) + meta.allocated
    except Exception:
        return None


def instance_usage(rt, inst, shared: Usage) -> Usage:
    """Bytes one live instance adds: its state directory (and Docker writable layer), shared inodes excluded."""
    u = usage(inst.state_dir, exclude=shared.inodes)
    if "docker" in rt.image_formats:  # made from the daemon's copy: its writable layer is the daemon's too
        rw = docker_container_size(inst)
        if rw:
            u = u.add(Usage.opaque(f"docker-rw:{inst.id}", rw))
    return u


def volume_rows(inst) -> list[dict]:
    """volume_apparent/volume_allocated of each volume ``inst`` mounts (component: its name or host
    directory). Never part of the instance's own bytes: volumes live outside its state directory."""
    rows = []
    for m in inst.mounts:
        u = usage(m.host)
        rows += [{"metric": "volume_apparent", "component": m.source, "value": float(u.apparent)},
                 {"metric": "volume_allocated", "component": m.source, "value": float(u.allocated)}]
    return rows


def instance_rows(rt, inst, shared: Usage) -> tuple[list[dict], Usage]:
    """The instance's own bytes (and the Usage behind them), then its volumes' bytes apart."""
    u = instance_usage(rt, inst, shared)
    return [{"metric": "instance_apparent", "component": "", "value": float(u.apparent)},
            {"metric": "instance_allocated", "component": "", "value": float(u.allocated)}] + volume_rows(inst), u
