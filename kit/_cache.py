"""Cached build products (a VM's initramfs and disk, the LXC seccomp profile) appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def building(out: Path, prefix: str) -> Iterator[tuple[int, str]]:
    """Yield ``(fd, tmp)``: a temporary file beside ``out``, renamed onto it if the block succeeds.

    A concurrent builder or a crash never leaves a half-written ``out``; on failure the
    temporary file is removed. The block owns ``fd`` (close it, or wrap it with os.fdopen).
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=out.parent)
    try:
        yield fd, tmp
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
