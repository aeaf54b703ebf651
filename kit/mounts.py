"""Mounting, the mount table, and unmounting: what is mounted at or below a path, and taking it down.

One place for what the OCI backends (an instance's overlay), the Debian image builder (the
``/proc``, ``/sys`` and ``/dev`` a failed debootstrap leaves in its rootfs) and the sweeps of
:mod:`kit.lifetime` (whatever a dead session left under its run directory) all need. Unmounting
uses ``umount2(2)`` through ctypes: forking ``umount(8)`` would cost milliseconds on an instance's
teardown path, and ``umount -l`` is the same system call with ``MNT_DETACH``; an instance's
overlay is mounted with ``mount(2)`` the same way, for the same reason (on its start path).

This module sits at the bottom of the kit: it imports nothing of it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_OCTAL = re.compile(r"\\([0-7]{3})")
#: ``umount2`` flag: detach now, free when no longer busy (``umount -l``).
MNT_DETACH = 2


def mount(source: str, target: Path, fstype: str, options: str = "", flags: int = 0) -> None:
    """``mount(2)``: mount ``source`` of type ``fstype`` at ``target`` with ``options``.

    Raises:
        OSError: the kernel refused (its errno and message, and ``target``).
    """
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def below(path: Path) -> list[str]:
    """Mount points at or below ``path`` (symlinks resolved, as ``/proc/self/mounts`` spells
    them), deepest first: the order they can be unmounted in."""
    prefix = str(Path(path).resolve())
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    # The kernel escapes a blank, tab, newline or backslash in a path as octal (\040 for a space).
    found = [_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), ln.split()[1]) for ln in lines if len(ln.split()) > 1]
    inside = [m for m in found if m == prefix or m.startswith(prefix.rstrip("/") + "/")]
    return sorted(inside, key=len, reverse=True)


def unmount(target: Path) -> bool:
    """Unmount ``target`` if mounted, lazily when busy (a process the kit no longer controls still
    holds it: detach now, the kernel frees it later); idempotent.

    Returns:
        True when something was unmounted or detached.
    """
    path = str(target).encode()
    if _libc.umount2(path, 0) == 0:
        return True
    if ctypes.get_errno() == errno.EBUSY:
        return _libc.umount2(path, MNT_DETACH) == 0
    return False


def unmount_below(path: Path) -> list[str]:
    """Detach every mount at or below ``path``, deepest first (``umount -l`` of each).

    Returns:
        The mount points detached (one that could not be, e.g. not this user's, is left out).
    """
    return [m for m in below(path) if _libc.umount2(m.encode(), MNT_DETACH) == 0]
