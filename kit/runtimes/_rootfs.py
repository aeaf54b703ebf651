"""What the OCI and LXC backends share: a private root filesystem over a shared image,
the environment and working directory an image supplies, and the kit cgroup.

The image's rootfs is shared by every instance and must never change, so each
OCI instance gets an overlay (lower = image rootfs, upper/work in its state
directory) mounted at ``<state>/bundle/rootfs``. The mount is done with the
``mount(2)`` system call through ctypes: forking mount(8) would cost a few
milliseconds per start, which is the whole overhead budget of the kit.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from ..errors import StartFailed

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_RDONLY = 1
MNT_DETACH = 2


def _escape(path: Path) -> str:
    # overlayfs splits its options on ',' and lowerdir lists on ':'.
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def mount_overlay(lower: Path, state_dir: Path, target: Path) -> Path:
    """Mount ``lower`` + a fresh writable layer under ``state_dir`` at ``target``.

    Returns:
        ``target``, now the instance's root filesystem.

    Raises:
        StartFailed: the kernel refused the overlay (the message says why).
    """
    upper, work = state_dir / "overlay" / "upper", state_dir / "overlay" / "work"
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}"
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise StartFailed(
            f"cannot mount an overlay over image {lower}: {os.strerror(err)}; "
            "the kit needs root and a kernel with overlayfs (modprobe overlay)"
        )
    return target


def unmount(target: Path) -> None:
    """Unmount ``target`` if mounted (lazily when busy); idempotent."""
    path = str(target).encode()
    if _libc.umount2(path, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY:
        # A process we no longer control still holds it: detach now, the kernel frees it later.
        _libc.umount2(path, MNT_DETACH)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` (as /proc/mounts spells them)."""
    prefix = str(path)
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    found = [ln.split()[1].replace("\\040", " ") for ln in lines if len(ln.split()) > 1]
    return [m for m in found if m == prefix or m.startswith(prefix.rstrip("/") + "/")]


# -- what the image supplies, shared by the OCI and LXC backends ------------------
def environment(spec, image) -> dict[str, str]:
    """The instance's environment: kit defaults, then the image's, then the user's."""
    env = spec.environment()
    img_env = (image.config or {}).get("env") or {} if image is not None else {}
    if isinstance(img_env, list):  # OCI image configs spell it ["K=V", ...]
        img_env = dict(e.split("=", 1) for e in img_env if "=" in e)
    for k, v in img_env.items():
        if k not in spec.env:
            env[k] = str(v)
    return env


def workdir(spec, image) -> str:
    """The working directory inside: the user's, else the image's, else /."""
    return spec.workdir or ((image.config or {}).get("workdir") if image is not None else None) or "/"


def kit_cgroup(inst):
    """The kit-owned cgroup the instance is placed below, limited as the spec asks.

    Made even without limits, so every container has a cgroup to measure
    (working set, PIDs). None when this host gives the kit no cgroups (not root).
    """
    from .. import cgroups, config

    if cgroups.writable() is not None:
        if inst.spec.memory or inst.spec.cpus:
            raise StartFailed(f"cannot apply memory/cpu limits: {cgroups.writable()}")
        return None
    return cgroups.for_instance(config.SESSION_ID, inst.name).create(inst.spec.memory, inst.spec.cpus)
