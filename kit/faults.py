"""Faults of the disk under ``$KIT_HOME``, said once per boundary as one :class:`~kit.errors.KitError` line.

The image store, volumes, VM templates and instances' state directories all live under
``$KIT_HOME``. A write there that fails because its filesystem is full or read-only is said as
:class:`~kit.errors.NoSpace` (the path, the free and the needed space, and ``KIT_HOME``) or
:class:`~kit.errors.ReadOnlyStorage`, never as a raw ``OSError``. Each boundary that writes there
(storing an image, a pull, a volume, a template, an instance's start) wraps its writes once:

>>> with faults.writing(store.root(), f"storing image {name!r}", needed=size):
...     shutil.copytree(src, dst)

A tool that fails for lack of space says so in its own words (skopeo's ``no space left on device``,
QEMU dying of SIGBUS on a full RAM file): :func:`said_no_space` reads the words, :func:`full` looks
at the filesystem itself, and :func:`no_space` makes the error.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import config
from .errors import NoSpace, ReadOnlyStorage, StorageError

#: The errnos of a full filesystem (or a full quota).
SPACE = (errno.ENOSPC, errno.EDQUOT)
#: The errnos of a filesystem this user cannot write: mounted read-only, or denied.
READ_ONLY = (errno.EROFS, errno.EACCES)
#: Below this many free bytes, a filesystem counts as full (a tool's failure there is the disk's).
FULL_BELOW = 1 << 20


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes (for this user) on the filesystem holding ``path`` or its nearest existing parent."""
    p = Path(path)
    while True:
        try:
            return shutil.disk_usage(p).free
        except OSError:
            if p.parent == p:
                return None
            p = p.parent


def full(path: str | os.PathLike, needed: int | None = None) -> bool:
    """Whether the filesystem holding ``path`` has less than ``needed`` (or :data:`FULL_BELOW`) bytes free."""
    free = free_bytes(path)
    return free is not None and free < max(needed or 0, FULL_BELOW)


def said_no_space(text: str | bytes) -> bool:
    """Whether a tool's message says the disk is full (``no space left on device``, ENOSPC, quota)."""
    low = (text.decode(errors="replace") if isinstance(text, bytes) else text).lower()
    return "no space left" in low or "enospc" in low or "disk quota exceeded" in low


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024 ** 3:.1f} GiB" if n >= 1024 ** 3 else f"{n / 1024 ** 2:.1f} MiB"


def _home() -> str:
    return f"KIT_HOME={config.home()}"


def no_space(path: str | os.PathLike, what: str, needed: int | None = None,
             code: int = errno.ENOSPC, at_least: bool = False) -> NoSpace:
    """The one line for a full filesystem under ``path`` while doing ``what`` (``needed``: bytes the step
    needed, if known; ``at_least``: only its lower bound is known, e.g. a pull's download before unpacking)."""
    need = f", {'at least ' if at_least else ''}{_size(needed)} needed" if needed else ""
    err = NoSpace(f"no space left on the filesystem of {path} while {what} ({_size(free_bytes(path))} free{need}): "
                   f"free some (kit.prune(templates=True), kit.images.remove(NAME), kit.volumes.rm(NAME)) "
                   f"or point KIT_HOME at a larger disk ({_home()})", code, str(path))
    err.needed = needed
    return err


def read_only(path: str | os.PathLike, what: str, why: str = "read-only file system",
              code: int = errno.EROFS) -> ReadOnlyStorage:
    """The one line for a path under ``$KIT_HOME`` that cannot be written while doing ``what``."""
    return ReadOnlyStorage(f"cannot write {path} while {what}: {why}; make it writable or point KIT_HOME at a "
                           f"writable directory ({_home()})", code, str(path))


def of_disk(e: OSError) -> bool:
    """Whether ``e`` is a full or read-only filesystem's (ENOSPC, EDQUOT, EROFS, EACCES)."""
    return e.errno in SPACE or e.errno in READ_ONLY


def translate(e: OSError, path: str | os.PathLike, what: str, needed: int | None = None,
              at_least: bool = False) -> StorageError | None:
    """``e`` as :class:`~kit.errors.NoSpace` / :class:`~kit.errors.ReadOnlyStorage`, or None when it is
    another fault (not the disk's: it stays as it is)."""
    where = e.filename or path
    if e.errno in SPACE:
        return no_space(path, what, needed, e.errno, at_least)
    if e.errno == errno.EROFS or (e.errno == errno.EACCES and _below(where, config.home())):
        return read_only(where, what, (e.strerror or "not writable").lower(), e.errno)
    return None


def _below(path, root: Path) -> bool:
    try:
        Path(os.fsdecode(path)).resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, TypeError):
        return False


@contextmanager
def writing(path: str | os.PathLike, what: str, needed: int | None = None, at_least: bool = False):
    """Say a full or read-only filesystem met by the block's writes under ``path`` as one
    :class:`~kit.errors.StorageError` line (``what`` says what was being written); other errors pass.

    Raises:
        NoSpace: the filesystem is full (``needed``: the bytes the block would have needed, if known).
        ReadOnlyStorage: it is read-only, or this user may not write under ``$KIT_HOME``.
    """
    try:
        yield
    except OSError as e:
        err = translate(e, path, what, needed, at_least)
        if err is None:
            raise
        raise err from None
    except NoSpace as e:  # said by an inner boundary: this one knows what the whole needed
        if needed and not e.needed:
            raise no_space(path, what, needed, e.errno, at_least) from None
        raise
