"""What a set of host processes, a cgroup or a directory uses: the measurement primitives.

Low in the layers so that an :class:`kit.Instance` handle (``.memory()``), the volume store
(a volume's size) and :mod:`kit.bench` all read the same figures the same way.

Memory: PSS, USS and RSS per process (:func:`read`). A figure is never silently smaller: a
process that exists but cannot be read (psutil's AccessDenied, e.g. another user's process for
a rootless user, or no PSS figure from the kernel) is listed in :attr:`Reading.unreadable`, and
:meth:`Reading.checked` raises :class:`PartialMemory` for it. A process that has ended meanwhile
uses no memory and is not counted. A cgroup's usage and working set: :func:`cgroup_memory`.
A figure over time: :func:`steady` (once it has settled) and :func:`peak` (the highest while
something runs).

Disk: apparent and allocated bytes under a path, each inode once (:func:`disk_usage`).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import psutil

from . import cgroups, mounts
from .errors import KitError

T = TypeVar("T")


class PartialMemory(KitError):
    """Some processes of a memory figure could not be read: the figure would be too small."""


@dataclass
class Reading:
    """The memory of a set of processes: those read (``procs``: pid, name, pss, uss, rss) and those
    that exist but could not be read (``unreadable``: pid, name, why)."""

    procs: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)

    def total(self, metric: str) -> int:
        return sum(p[metric] for p in self.procs)

    @property
    def pss(self) -> int:
        return self.total("pss")

    @property
    def status(self) -> str:
        """``ok``, or ``partial: ...`` naming the processes left out and why."""
        if not self.unreadable:
            return "ok"
        who = ", ".join(f"{u['pid']} {u['name']} ({u['why']})" for u in self.unreadable[:5])
        more = f" and {len(self.unreadable) - 5} more" if len(self.unreadable) > 5 else ""
        return (f"partial: {len(self.unreadable)} of {len(self.procs) + len(self.unreadable)} processes could not "
                f"be read: {who}{more}")

    def checked(self) -> "Reading":
        """This reading, or :class:`PartialMemory` when a process could not be read."""
        if self.unreadable:
            raise PartialMemory(self.status.replace("partial: ", "memory figure incomplete: ", 1)
                                + " (run as their owner or as root to measure them)")
        return self


def read(pids) -> Reading:
    """PSS, USS and RSS of each of ``pids``: a process that has ended is left out (it holds no memory),
    one that cannot be read is listed in ``unreadable`` with why."""
    out = Reading()
    for pid in sorted(set(pids)):
        try:
            p = psutil.Process(pid)
            name = label(p)
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied as e:
            out.unreadable.append({"pid": pid, "name": _name_or_pid(pid), "why": f"access denied: {e.msg or 'smaps'}"})
            continue
        if not hasattr(info, "pss"):  # no PSS from this kernel/platform: never stand in USS for it
            out.unreadable.append({"pid": pid, "name": name, "why": "no PSS reported"})
            continue
        out.procs.append({"pid": pid, "name": name, "pss": info.pss, "uss": info.uss, "rss": info.rss})
    return out


def _name_or_pid(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return f"pid {pid}"


def label(p: psutil.Process) -> str:
    """A process's name for a breakdown: its command name, or for a re-executed ``/proc/self/exe``
    (runsc's gofer and sandbox) its argv[0]; a child without argv (gVisor's ptrace stubs) is
    named after its parent."""
    name = p.name()
    if name != "exe":
        return name
    try:
        argv = p.cmdline()
        if argv:
            return argv[0].rsplit("/", 1)[-1]
        parent = p.parent()
        if parent is None:
            return name
        up = label(parent)
        return up if up.endswith(" child") else f"{up} child"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return name


def memory_group(path) -> cgroups.Cgroup | None:
    """The kit's Cgroup view of an absolute memory-cgroup directory (None for None or a path outside)."""
    if path is None:
        return None
    p = Path(path)
    base = cgroups.ROOT if cgroups.version() == 2 else cgroups.ROOT / "memory"
    try:
        return cgroups.Cgroup(str(p.relative_to(base)))
    except ValueError:
        return None


def cgroup_memory(path) -> tuple[int | None, int | None]:
    """(usage, working set) of the memory cgroup at ``path``; (None, None) without one."""
    group = memory_group(path)
    if group is None or not group.exists():
        return None, None
    return group.memory_usage(), group.working_set()


# -- a figure over time --------------------------------------------------------------
def steady(read: Callable[[], float], timeout: float = 20.0, tolerance: float = 0.02, gap: float = 0.5) -> float:
    """``read()`` once it has settled: two readings ``gap`` seconds apart within ``tolerance`` (a fraction)
    of each other, e.g. an instance's PSS once its start-up is over::

        idle = kit.usage.steady(lambda: web.memory()["pss"])

    A figure that keeps moving is taken as it is at ``timeout``; an error of ``read`` propagates.
    """
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(gap)  # the readings' spacing is what 'settled' means, not a wait for something
        now = read()
        if now > 0 and abs(now - last) <= tolerance * max(now, last):
            return now
        last = now
    return last


def peak(read: Callable[[], float], during: Callable[[], T], interval: float = 0.1) -> tuple[float, T]:
    """The highest ``read()`` while ``during()`` runs, and what ``during()`` returned, e.g. a service's
    PSS under a load a host tool makes::

        top, out = kit.usage.peak(lambda: db.memory()["pss"], lambda: subprocess.run(argv, ...).stdout)

    ``read`` runs before ``during`` starts, every ``interval`` seconds from a thread while it runs, and
    once as it returns. A reading that fails ends the sampling; its error is raised once ``during`` has
    returned (a figure that could not be read is no peak).
    """
    highest, failed, done = [read()], [], threading.Event()

    def sample():
        while not done.wait(interval):
            try:
                highest[0] = max(highest[0], read())
            except Exception as e:  # noqa: BLE001  (raised below, in the caller's thread)
                failed.append(e)
                return

    sampler = threading.Thread(target=sample, name="kit-usage-peak", daemon=True)
    sampler.start()
    try:
        result = during()
    finally:
        done.set()
        sampler.join()
    if failed:
        raise failed[0]
    return max(highest[0], read()), result


# -- disk ---------------------------------------------------------------------------
@dataclass
class DiskUsage:
    """A set of counted files: (device, inode) -> (apparent, allocated) bytes.

    Keeping the inodes makes unions exact: a file two sets share counts once.
    """

    files: dict = field(default_factory=dict)

    @property
    def apparent(self) -> int:
        return sum(a for a, _ in self.files.values())

    @property
    def allocated(self) -> int:
        return sum(b for _, b in self.files.values())

    @property
    def inodes(self) -> set:
        return set(self.files)

    def add(self, other: "DiskUsage") -> "DiskUsage":
        """The union of two sets, shared files counted once."""
        return DiskUsage({**self.files, **other.files})

    @classmethod
    def opaque(cls, key: str, size: int) -> "DiskUsage":
        """Bytes known only as a total (e.g. the Docker daemon's figures), under a unique key."""
        return cls({key: (int(size), int(size))})


def mount_points() -> set[str]:
    """Every mount point of this mount namespace."""
    return set(mounts.below("/"))


def disk_usage(path, exclude: set | None = None, mounts: set | None = None) -> DiskUsage:
    """Apparent and allocated bytes under ``path``, each inode once, skipping ``exclude`` inodes.

    Regular files, symlinks and directories count; device nodes and sockets
    do not. Nothing below another mount point is counted.
    """
    path = Path(os.path.realpath(path))  # mount points are listed by their real paths
    exclude = exclude or set()
    mounts = mount_points() if mounts is None else mounts
    u = DiskUsage()
    if not path.exists() and not path.is_symlink():
        return u

    def count(st) -> None:
        key = (st.st_dev, st.st_ino)
        if key in u.files or key in exclude:
            return
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
            u.files[key] = (st.st_size, st.st_blocks * 512)

    root_st = os.lstat(path)
    count(root_st)
    if stat.S_ISDIR(root_st.st_mode):
        for dirpath, dirnames, filenames in os.walk(path):
            keep = []
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if full in mounts:
                    continue
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                count(st)
                if not stat.S_ISLNK(st.st_mode) and st.st_dev == root_st.st_dev:
                    keep.append(d)
            dirnames[:] = keep
            for n in filenames:
                try:
                    count(os.lstat(os.path.join(dirpath, n)))
                except OSError:
                    continue
    return u
