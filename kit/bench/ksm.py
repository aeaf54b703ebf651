"""Kernel samepage merging (KSM) for the length of a measurement, and when its merging has settled.

KSM (``/sys/kernel/mm/ksm``, see the kernel's ``admin-guide/mm/ksm``) merges identical pages of
memory that a process has marked mergeable (``madvise(MADV_MERGEABLE)``): QEMU marks its guests'
RAM so (``-machine mem-merge=on``); a container's processes do not mark theirs, so KSM leaves
them alone. :func:`enabled` turns it on for a ``with`` block only and puts every setting back
afterwards, also after an interrupt; the first settings are written to a file before they change,
so that a study killed in the middle leaves them for the next one to put back (:func:`restore_left`).

:func:`settle` waits until merging has settled, by this rule (:data:`SETTLE_SCANS`,
:data:`SETTLE_TOLERANCE`): ``pages_sharing`` read after each of KSM's full scans of the mergeable
memory, settled once at least two full scans ended after the call and the last two readings
differ by at most 2 % (or 16 pages). ksmd scans nothing while no process has mergeable memory
(``full_scans`` stays put): when that lasts :data:`IDLE_SECONDS` with no page counted (shared,
sharing, unshared or volatile), there is nothing to merge, and that is settled too. At the
deadline the reading is what it is, and says so.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from .. import config
from ..errors import KitError

ROOT = Path("/sys/kernel/mm/ksm")
#: Pages ksmd scans per wake-up while a study has it on (the kernel's default is 100: 1 GiB of guest
#: RAM would take about a minute per full scan; this takes seconds, at more of ksmd's CPU).
PAGES_TO_SCAN = 2000
#: Milliseconds ksmd sleeps between scans while a study has it on (the kernel's default).
SLEEP_MS = 20
#: Full scans after which merging may count as settled: KSM merges a page on its second scan.
SETTLE_SCANS = 2
#: pages_sharing is settled when two readings, a full scan apart, differ by at most this share...
SETTLE_TOLERANCE = 0.02
#: ...or by at most this many pages (a few pages come and go on an idle host).
SETTLE_PAGES = 16
#: Seconds :func:`settle` waits at most.
SETTLE_DEADLINE = 120.0
#: Seconds without a full scan and without a page counted after which nothing is mergeable.
IDLE_SECONDS = 2.0


def available() -> str | None:
    """None when KSM can be switched on here, else why not."""
    if not (ROOT / "run").exists():
        return f"{ROOT} is missing: this kernel has no KSM (CONFIG_KSM)"
    try:
        with open(ROOT / "run", "r+"):
            return None
    except OSError as e:
        return f"{ROOT / 'run'} cannot be written by this user: {e.strerror}"


def read(name: str) -> int:
    """One of KSM's counters or settings (``pages_sharing``, ``full_scans``, ``run``, ...)."""
    return int((ROOT / name).read_text().split()[0])


def counters() -> dict[str, int]:
    """``run``, ``pages_shared``, ``pages_sharing``, ``pages_unshared``, ``full_scans`` now."""
    return {k: read(k) for k in ("run", "pages_shared", "pages_sharing", "pages_unshared", "full_scans")}


def state() -> dict[str, str]:
    """The settings :func:`enabled` changes, as their files hold them (to check they are back)."""
    return {k: (ROOT / k).read_text().strip() for k in ("run", "pages_to_scan", "sleep_millisecs")}


#: The settings :func:`enabled` changes, in the order it changes them (``run`` last: ksmd starts once
#: its pace is set).
SETTINGS = ("pages_to_scan", "sleep_millisecs", "run")
_lock = threading.Lock()


def _record() -> Path:
    """Where :func:`enabled` writes the first settings before it changes them: a study that ended
    without putting them back (killed) left this file, and the next :func:`enabled` puts them back."""
    return config.home() / "ksm-settings.json"


def restore_left() -> str | None:
    """Put back the settings a study that did not end cleanly (its process is gone) left changed; what
    was done, or None when nothing was left."""
    try:
        left = json.loads(_record().read_text())
    except (OSError, ValueError):
        return None
    if psutil.pid_exists(left.get("pid", -1)) and left.get("pid") != os.getpid():
        return None  # another live process has KSM on for its study: not ours to end
    _put_back(left["first"])
    _record().unlink(missing_ok=True)
    return f"KSM settings {left['first']} put back (left by process {left.get('pid')})"


def _put_back(first: dict) -> None:
    """Every page KSM merged unmerged (``run`` 2) unless KSM was on before, then each setting's first value."""
    if first["run"] != "1":
        (ROOT / "run").write_text("2")
    for k in SETTINGS:
        (ROOT / k).write_text(first[k])


@contextmanager
def enabled(on: bool = True):
    """KSM on (``run`` 1, ksmd scanning :data:`PAGES_TO_SCAN` pages every :data:`SLEEP_MS` ms) inside
    the block, its first settings back after it, whatever ends it (an exception, an interrupt); with
    ``on`` False, nothing changes.

    The first settings are written to a file before anything changes (:func:`restore_left`), so a
    process killed inside the block leaves them for the next study to put back. Leaving, every page
    KSM merged is unmerged (``run`` 2) before ``run`` gets its first value back. One block at a time
    per process.

    Raises:
        KitError: KSM cannot be switched on here (:func:`available` says why), or another process has
            it on for its own study.
    """
    if not on:
        yield
        return
    why = available()
    if why:
        raise KitError(f"cannot turn KSM on: {why}")
    with _lock:
        restore_left()
        if _record().exists():
            raise KitError(f"another study has KSM on ({_record()}): run one KSM study at a time")
        first = state()
        _record().parent.mkdir(parents=True, exist_ok=True)
        _record().write_text(json.dumps({"pid": os.getpid(), "first": first}))
        try:
            (ROOT / "pages_to_scan").write_text(str(PAGES_TO_SCAN))
            (ROOT / "sleep_millisecs").write_text(str(SLEEP_MS))
            (ROOT / "run").write_text("1")
            yield
        finally:
            _put_back(first)
            _record().unlink(missing_ok=True)


@dataclass
class Settled:
    """What :func:`settle` saw: the counters at the end, the seconds it waited, the full scans it
    waited for, and whether the rule was met before the deadline."""

    counters: dict
    waited: float
    scans: int
    settled: bool

    @property
    def status(self) -> str:
        """``ok``, or why a figure read now is partial."""
        return "ok" if self.settled else f"partial: KSM still merging after {self.waited:.0f} s (pages_sharing " \
                                         f"{self.counters['pages_sharing']})"


def settle(deadline: float = SETTLE_DEADLINE, poll: float = 0.2) -> Settled:
    """Wait until ``pages_sharing`` has settled (the module's rule) or ``deadline`` seconds pass."""
    t0 = time.monotonic()
    start_scans = read("full_scans")
    last_scan, readings, moved = start_scans, [], t0
    while True:
        scans = read("full_scans")
        if scans != last_scan:  # a full scan ended: one reading per scan
            last_scan, moved = scans, time.monotonic()
            readings.append(read("pages_sharing"))
        done = scans - start_scans >= SETTLE_SCANS and len(readings) >= 2 and \
            abs(readings[-1] - readings[-2]) <= max(SETTLE_PAGES, SETTLE_TOLERANCE * readings[-2])
        done = done or (time.monotonic() - moved >= IDLE_SECONDS and not _pages())
        waited = time.monotonic() - t0
        if done or waited >= deadline:
            return Settled(counters(), waited, scans - start_scans, done)
        time.sleep(poll)


def _pages() -> int:
    """Every page KSM counts at all: none while no process has mergeable memory."""
    return sum(read(k) for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile"))


def merging_pages(pids) -> int:
    """Pages of these processes that KSM has merged (``/proc/PID/ksm_merging_pages``, Linux 6.1 and
    later; a process that has ended counts none)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())
        except (OSError, ValueError):
            continue
    return total


def rows(s: Settled, n: int, pids) -> list[dict]:
    """The density rows of one reading with KSM on (see METRICS): the host's counters, the pages
    merged of the instances' own processes ``pids``, and the wait."""
    page = os.sysconf("SC_PAGE_SIZE")
    base = {"part": "density", "component": "", "n": n, "repeat": 0, "status": s.status}
    return [{**base, "metric": "ksm_pages_shared", "value": float(s.counters["pages_shared"])},
            {**base, "metric": "ksm_pages_sharing", "value": float(s.counters["pages_sharing"])},
            {**base, "metric": "ksm_merged", "value": float(merging_pages(pids) * page)},
            {**base, "metric": "ksm_settle", "value": float(s.waited), "status": "ok"}]


def measure(n: int, pids) -> list[dict]:
    """Wait until merging has settled (:func:`settle`), then its rows with ``n`` instances running
    (:func:`rows`; ``pids()``: their own host processes, read after the wait)."""
    return rows(settle(), n, pids())
