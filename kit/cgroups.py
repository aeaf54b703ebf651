"""Kit-owned cgroups: limits, OOM counts and membership, on cgroup v1 or v2.

Every limited instance gets a group ``kit/<session>-<name>`` that the kit
creates, limits and removes. Runtimes place their container *below* it (runc's
``cgroupsPath``, LXC's ``lxc.cgroup.dir``) or move a bare process into it. Because the
limit and its OOM counter live in the kit's own group, they survive the
runtime tearing down its own sub-group, and read the same for every runtime.

An ordinary user's groups go in the cgroup v2 subtree systemd delegates to the user
(:func:`delegated_cgroup`); where there is none, :func:`limits_refusal` says why a limit
cannot be had and how to get one.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "pids")


@lru_cache(maxsize=None)
def version() -> int:
    """2 on a pure cgroup v2 host, 1 on v1 or hybrid (memory is then v1)."""
    if (ROOT / "cgroup.controllers").exists():
        return 2
    return 1


def describe() -> str:
    if version() == 2:
        return "v2 (unified)"
    return "v1 (hybrid)" if (ROOT / "unified").exists() else "v1"


class Cgroup:
    """One kit-owned cgroup; ``rel`` is its path below the hierarchy root."""

    def __init__(self, rel: str):
        self.rel = rel.strip("/")
        self._oom_fd: int | None = None
        self._oom_events = 0

    def dirs(self) -> list[Path]:
        if version() == 2:
            return [ROOT / self.rel]
        return [ROOT / c / self.rel for c in V1_CONTROLLERS if (ROOT / c).is_dir()]

    def _dir(self, controller: str) -> Path:
        return ROOT / self.rel if version() == 2 else ROOT / controller / self.rel

    @property
    def path(self) -> Path:
        """The memory group: where usage and OOM counts are read."""
        return self._dir("memory")

    def create(self, memory: int | None = None, cpus: float | None = None) -> "Cgroup":
        if version() == 2:
            _enable_v2_controllers(self.rel)
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)
        if memory:
            if version() == 2:
                _write(self.path / "memory.max", memory)
                _write(self.path / "memory.swap.max", 0, missing_ok=True)
            else:
                _write(self.path / "memory.limit_in_bytes", memory)
                # Without swap accounting the limit alone is the cap; with it, forbid swap.
                _write(self.path / "memory.memsw.limit_in_bytes", memory, missing_ok=True)
                self._watch_oom_v1()
        if cpus:
            period = 100_000
            quota = max(1000, int(cpus * period))
            if version() == 2:
                _write(self._dir("cpu") / "cpu.max", f"{quota} {period}")
            else:
                _write(self._dir("cpu") / "cpu.cfs_period_us", period)
                _write(self._dir("cpu") / "cpu.cfs_quota_us", quota)
        return self

    def add(self, pid: int) -> None:
        for d in self.dirs():
            _write(d / "cgroup.procs", pid)

    def pids(self) -> list[int]:
        """Every process in the group and its sub-groups."""
        out: set[int] = set()
        base = self._dir("pids") if version() == 1 else self.path
        if not base.exists():
            base = self.path
        for root, _dirs, files in os.walk(base):
            if "cgroup.procs" in files:
                try:
                    out.update(int(x) for x in Path(root, "cgroup.procs").read_text().split())
                except OSError:
                    pass
        return sorted(out)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding this group's limit."""
        try:
            if version() == 2:
                text = (self.path / "memory.events").read_text()
            else:
                text = (self.path / "memory.oom_control").read_text()
        except OSError:
            text = ""
        count = 0
        for line in text.splitlines():
            key, _, val = line.partition(" ")
            if key == "oom_kill":
                count = int(val)
        return max(count, self._read_oom_events())

    def _watch_oom_v1(self) -> None:
        # On v1 the oom_kill counter is kept by the *victim's* group and is not
        # propagated up: a runtime's sub-group (runc's .../ctr, LXC's) takes it
        # away when the runtime deletes that group. An OOM notification
        # registered on this group fires for an OOM anywhere below it, and its
        # eventfd keeps the count until read.
        try:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            ofd = os.open(self.path / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _write(self.path / "cgroup.event_control", f"{efd} {ofd}")
            finally:
                os.close(ofd)
        except (OSError, AttributeError):
            return
        self._oom_fd = efd

    def _read_oom_events(self) -> int:
        if self._oom_fd is not None:
            try:
                self._oom_events += os.eventfd_read(self._oom_fd)
            except OSError:  # BlockingIOError: nothing new
                pass
        return self._oom_events

    def memory_usage(self) -> int | None:
        f = "memory.current" if version() == 2 else "memory.usage_in_bytes"
        try:
            return int((self.path / f).read_text())
        except OSError:
            return None

    def memory_stat(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in (ln.split() for ln in (self.path / "memory.stat").read_text().splitlines())}
        except OSError:
            return {}

    def working_set(self) -> int | None:
        """docker stats' figure: usage minus inactive file cache."""
        usage = self.memory_usage()
        if usage is None:
            return None
        stat = self.memory_stat()
        inactive = stat.get("inactive_file" if version() == 2 else "total_inactive_file", 0)
        return max(0, usage - inactive)

    def exists(self) -> bool:
        return any(d.exists() for d in self.dirs())

    def _all_dirs(self) -> list[Path]:
        # Runtimes (runc, LXC) also create the group in hierarchies the kit does
        # not limit (cpuset, freezer, devices, name=systemd, unified...).
        if version() == 2:
            return [ROOT / self.rel]
        # os.path on strings, not pathlib: this runs at every removal, over a dozen hierarchies, and
        # pathlib's objects cost more CPU than the stat calls themselves (a start storm, issue 24).
        found = [os.path.join(h, self.rel) for h in _hierarchies()]
        return [Path(d) for d in found if os.path.isdir(d)]

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill whatever is left inside, then remove the group and its sub-groups."""
        self._read_oom_events()
        if self._oom_fd is not None:
            os.close(self._oom_fd)
            self._oom_fd = None
        deadline = time.monotonic() + timeout
        while True:
            found = self._all_dirs()
            if not found:  # in no hierarchy (the runtime removed its group): no process, nothing to remove
                return
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            busy = False
            for d in found:
                for root, dirs, _files in os.walk(d, topdown=False):
                    try:
                        os.rmdir(root)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        busy = True
            if not busy or time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _enable_v2_controllers(rel: str) -> None:
    parts = rel.split("/")
    cur = ROOT
    for part in parts:
        try:
            avail = (cur / "cgroup.controllers").read_text().split()
            want = [c for c in ("memory", "cpu", "pids") if c in avail]
            if want:
                _write(cur / "cgroup.subtree_control", " ".join("+" + c for c in want))
        except OSError:
            pass
        cur = cur / part
        cur.mkdir(exist_ok=True)


def _write(path: Path, value, missing_ok: bool = False) -> None:
    try:
        path.write_text(str(value))
    except FileNotFoundError:
        if not missing_ok:
            raise
    except OSError:
        if not missing_ok:
            raise


# -- an ordinary user's groups ------------------------------------------------------------
def delegated_cgroup(self_cgroup: str | None = None, root: Path | None = None) -> str | None:
    """On cgroup v2, the writable subtree with the memory and cpu controllers that systemd delegates
    to the user (``user@UID.service``) and this process runs in, as a path below ``root``
    (/sys/fs/cgroup); else None. Only from inside it may the kit move processes into groups of its
    own there (a login session's scope is outside it: its common ancestor is root's).

    Args:
        self_cgroup, root: this process's /proc/self/cgroup text and the hierarchy's root (tests).
    """
    if root is None and version() != 2:
        return None
    root = root or ROOT
    try:
        text = self_cgroup if self_cgroup is not None else Path("/proc/self/cgroup").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("0::"))
    except (OSError, StopIteration):
        return None
    rel = line[3:].strip("/")
    parts = rel.split("/")
    # Go up to the delegated unit (user@UID.service): the kit's groups go beside the session's own.
    for i in range(len(parts), 0, -1):
        if parts[i - 1].startswith("user@") and parts[i - 1].endswith(".service"):
            base = "/".join(parts[:i])
            d = root / base
            try:
                ctrl = set((d / "cgroup.controllers").read_text().split())
            except OSError:
                return None
            if {"memory", "cpu"} <= ctrl and os.access(d, os.W_OK):
                return base
            return None
    return None


def limits_refusal() -> str:
    """Why an ordinary user's run cannot have a memory/CPU limit here, or "" when it can."""
    if os.geteuid() == 0:
        return ""
    if version() != 2:
        return (f"limits need a cgroup this user may write; cgroup {describe()} gives non-root users "
                "none: run as root, or use a cgroup v2 host with systemd (a delegated subtree)")
    if delegated_cgroup() is None:
        return ("limits need a cgroup this user may write: run the kit inside the subtree your systemd user "
                "manager is delegated (e.g. systemd-run --user --scope jupyter lab), or run as root")
    return ""


def _hierarchies() -> list[str]:
    """The v1 hierarchies' directories (every entry of :data:`ROOT`), listed again only when ROOT's
    modification time changes: an entry made or removed (a hierarchy's mount point) changes it, and a
    listing is five system calls where this is one, at every removal (issue 24)."""
    global _listed
    key = (str(ROOT), os.stat(ROOT).st_mtime_ns)
    if _listed is not None and _listed[0] == key:
        return _listed[1]
    with os.scandir(ROOT) as entries:
        paths = [e.path for e in entries]
    if time.time_ns() - key[1] > 1_000_000_000:  # a change within the same clock tick as the listing
        _listed = (key, paths)                    # would leave the time as it is: kept once a second old
    return paths


#: ((ROOT, its st_mtime_ns), its entries' paths) as :func:`_hierarchies` last listed them.
_listed: tuple[tuple[str, int], list[str]] | None = None


def kit_rel() -> str:
    """Where the kit's groups go, below the hierarchy root: ``kit``, or for an ordinary user on
    cgroup v2 ``<the subtree systemd delegated to the user>/kit`` (:func:`delegated_cgroup`)."""
    if os.geteuid() != 0 and version() == 2:
        base = delegated_cgroup()
        if base:
            return f"{base}/kit"
    return "kit"


def for_instance(session: str, name: str) -> Cgroup:
    return Cgroup(f"{kit_rel()}/{session}-{name}")


def writable() -> str | None:
    """None when the kit can create groups here, else the reason it cannot.

    A yes is kept for the process (asked on every start: a mkdir and an access check each time were
    tens of microseconds of a start's CPU, issue 24); a no is asked again, so a fix is seen."""
    global _writable_for
    if _writable_for == os.geteuid():
        return None
    try:
        base = ROOT / kit_rel() if version() == 2 else ROOT / "memory" / "kit"
        base.mkdir(parents=True, exist_ok=True)
        if not os.access(base, os.W_OK):  # made by root earlier: there, but not this user's to write
            return f"cannot create cgroups under {base} (permission denied); run as root for memory/cpu limits"
        _writable_for = os.geteuid()
        return None
    except OSError as e:
        return f"cannot create cgroups under {ROOT} ({e.strerror}); run as root for memory/cpu limits"


#: The user :func:`writable` said yes to (None: not yet).
_writable_for: int | None = None
