"""What the OCI and LXC backends share: a private root filesystem over a shared image,
the environment and working directory an image supplies, and the kit cgroup.

The image's rootfs is shared by every instance and must never change, so each
OCI instance gets an overlay (lower = image rootfs, ``<state>/upper`` and ``<state>/work``)
mounted at ``<state>/rootfs``. The mount is done with the
``mount(2)`` system call through ctypes: forking mount(8) would cost a few
milliseconds per start, which is the whole overhead budget of the kit.

The layout is flat on purpose: every directory a start makes is an inode the host's filesystem
(ext4 here) allocates, journals and frees again at removal, in the kit's own CPU time; in a storm
of starts those were the largest part of it (issue 24). So no intermediate directories, and no
``mkdir(parents=True)`` whose first attempt fails.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from .. import mounts
from ..errors import StartFailed


def overlay_options(lower: Path, state_dir: Path, target: Path) -> str:
    """Make the upper, work and mount point directories of an instance's overlay over ``lower``
    (upper and work under ``state_dir``, the mount point ``target``); return the overlay's mount
    options. The overlay is then mounted here (:func:`mount_overlay`), or, for an ordinary user,
    in the kit's user namespace when the runtime is launched (:mod:`._rootless_oci`)."""
    upper, work = upper_dir(state_dir), state_dir / "work"
    for d in (upper, work, target):  # state_dir and target's parent exist: one mkdir each
        d.mkdir(exist_ok=True)
    return f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}"


def upper_dir(state_dir: Path) -> Path:
    """The writable layer of an instance's overlay (what the container wrote)."""
    return state_dir / "upper"


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
    opts = overlay_options(lower, state_dir, target)
    try:
        mounts.mount("overlay", target, "overlay", opts)
    except OSError as e:
        raise StartFailed(
            f"cannot mount an overlay over image {lower}: {e.strerror}; "
            "the kit needs root and a kernel with overlayfs (modprobe overlay)"
        ) from None
    return target


def shareable(rootfs: Path, mount_points, cwd: str) -> bool:
    """Whether a read-only run can use the image's ``rootfs`` as it is, with no overlay.

    Only when the runtime will not have to create anything in it: each top-level mount point
    (``/proc``, ``/dev``, ``/sys``) and the working directory are already there, as real
    directories (a runtime makes a missing one before it makes the root read-only, and that
    would write into the image every instance shares).
    """
    wanted = {"/" + m.strip("/").split("/", 1)[0] for m in mount_points} | {cwd}
    for rel in wanted:
        path = rootfs / rel.lstrip("/")
        if path.is_symlink() or not path.is_dir():
            return False
    return True


def image_shareable(image, mount_points, cwd: str) -> bool:
    """:func:`shareable` for ``image``'s rootfs, looked up once per image id (immutable content, the
    same answer every time) and working directory: eight stat calls and their paths are tens of
    microseconds of every read-only start (issue 24)."""
    key = (getattr(image, "id", None), str(image.rootfs), tuple(mount_points), cwd)
    if key[0] is None:  # no content id to cache by
        return shareable(image.rootfs, mount_points, cwd)
    if key not in _shareable:
        _shareable[key] = shareable(image.rootfs, mount_points, cwd)
    return _shareable[key]


_shareable: dict[tuple, bool] = {}


@contextmanager
def step(inst, name: str):
    """Time one preparation step of a start into ``inst.info["prepare_ms"][name]``.

    benchmarks/bench_overhead.py reads these to show where the kit's milliseconds go.
    """
    t0 = time.perf_counter()
    try:
        yield
    finally:
        inst.info.setdefault("prepare_ms", {})[name] = round((time.perf_counter() - t0) * 1e3, 3)


# -- what the image supplies, shared by the OCI and LXC backends ------------------
def kit_cgroup(inst):
    """The cgroup the instance is measured by, ``kit/<owner>-<session>-<name>``; None when this host
    gives the kit no cgroups (not root).

    With a memory or CPU limit the kit creates the group, limits it, and the runtime places the
    container *below* it (:func:`container_cgroup`), so the limit and its OOM count survive the
    runtime deleting its own group. Without limits the kit creates nothing: the runtime makes the
    group itself, as a plain ``runc run`` makes its own anyway, so a start pays no mkdirs of the
    kit's (about 0.35 ms on cgroup v1); usage and PIDs are read from it all the same, and
    whatever the runtime leaves of it goes at teardown.
    """
    from .. import cgroups

    if cgroups.writable() is not None:
        if inst.spec.memory or inst.spec.cpus:
            raise StartFailed(f"cannot apply memory/cpu limits: {cgroups.writable()}")
        return None
    group = inst.kit_cgroup()
    if inst.spec.memory or inst.spec.cpus:
        group.create(inst.spec.memory, inst.spec.cpus)
    return group


def container_cgroup(inst) -> str | None:
    """The runtime's cgroup path for the container (OCI ``cgroupsPath``): below the kit's limited
    group, or that group itself when there is no limit (the runtime then creates and removes it)."""
    if inst.cgroup is None:
        return None
    return f"/{inst.cgroup.rel}/ctr" if inst.spec.memory or inst.spec.cpus else f"/{inst.cgroup.rel}"


def monitor_pids(inst) -> list[int]:
    """The runtime's own processes that the kit keeps for ``inst`` outside its container: the
    launched process (``runc run``, ``runsc run``, ``lxc-execute``'s monitor) and any helper
    of it that is not in the container's cgroup. gVisor's sandbox and gofer, and LXC's
    ``lxc-init``, are inside that cgroup: they are the container, not its monitor.
    """
    if inst.proc is None or inst.proc.proc.poll() is not None:
        return []
    if inst.cgroup is None:  # no group to tell them apart: only the launched process is sure
        return [inst.proc.pid]
    import psutil

    try:
        tree = [inst.proc.pid, *(c.pid for c in psutil.Process(inst.proc.pid).children(recursive=True))]
    except psutil.Error:
        return []
    inside = set(inst.cgroup.pids())
    return sorted(p for p in tree if p not in inside)
