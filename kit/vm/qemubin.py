"""The QEMU binary a VM runs: its version, read once per binary file.

The version decides what the command line may ask of it (:func:`kit.vm.machine.boot_image`:
PVH entry since 4.0) and is part of a VM template's key (:mod:`kit.vm.templates`).
"""

from __future__ import annotations

import os
import re
import subprocess

_lines: dict[tuple, str] = {}


def version_line(binary: str) -> str:
    """The first line of ``binary -version`` (cached while the binary's file is unchanged); "?" when it
    cannot be run (QEMU's own start then says why)."""
    try:
        st = os.stat(binary)
    except OSError:
        return "?"
    ident = (binary, st.st_size, st.st_mtime_ns, st.st_ino)
    if ident not in _lines:
        try:
            p = subprocess.run([binary, "-version"], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return "?"
        _lines[ident] = p.stdout.decode(errors="replace").splitlines()[0] if p.stdout else "?"
    return _lines[ident]


def version(binary: str) -> tuple[int, ...] | None:
    """QEMU's release as numbers, e.g. (7, 2, 19), or None when it does not say."""
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", version_line(binary))
    return tuple(int(g) for g in m.groups() if g is not None) if m else None
