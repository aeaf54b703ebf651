"""Small files written, read and removed in few system calls.

Every start writes its bundle's ``config.json``, reads its output back and removes its state
directory. Python's ``open()`` adds an fstat, an isatty ioctl and lseeks to each file it opens, and
``shutil.rmtree`` a dozen calls to walk a directory safely; each call releases the GIL, and in a
start storm of 16 threads each release is a chance to hand it round (a context switch: issue 24).
"""

from __future__ import annotations

import os

_CHUNK = 1 << 16


def write_file(path, data: bytes, mode: int = 0o644) -> None:
    """Create or truncate ``path`` and write ``data`` to it (open, write, close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def open_append(path) -> int:
    """A descriptor that appends to ``path`` (made if missing): a log's."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_file(path) -> bytes:
    """The bytes of ``path``; b"" when it is missing or cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def remove_files_and_dir(path) -> bool:
    """Remove ``path`` if it holds only files (a list, an unlink each, an rmdir); True when it is
    gone. False as soon as anything else is met (a directory, a mount, a refusal): what is left is
    the caller's, for a full walk."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        for name in names:
            os.unlink(os.path.join(path, name))  # a directory: EISDIR
        os.rmdir(path)
    except OSError:
        return False
    return True
