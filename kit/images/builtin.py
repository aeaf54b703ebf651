"""Built-in images that need no network: ``busybox`` from the host's static busybox."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ImageError
from . import store

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def static_busybox() -> Path:
    """The host's statically linked busybox (a dynamically linked one cannot run in an empty root).

    Raises:
        ImageError: there is none, with how to install it.
    """
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.exists():
            out = subprocess.run(["file", "-L", str(p)], capture_output=True, text=True).stdout \
                if shutil.which("file") else "statically linked"
            if "dynamically linked" not in out:
                return p
    raise ImageError(
        "no static busybox on this host to build the 'busybox' image from: "
        "install it (Debian/Ubuntu: apt-get install busybox-static), or run 'make setup'"
    )


def populate_busybox(root: Path, busybox: Path | None = None) -> None:
    """Write a minimal busybox root filesystem into ``root``."""
    busybox = busybox or static_busybox()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
              "root", "var/tmp", "run", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/tmp", 0o1777)
    shutil.copy2(busybox, root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for rel in applets:
        link = root / rel
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n")
    for f in ("etc/passwd", "etc/group", "etc/hosts"):
        os.utime(root / f, (0, 0))
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (0, 0), follow_symlinks=False)
    os.utime(root, (0, 0))


def busybox() -> store.Image:
    """The ``busybox`` image, built from the host's static busybox on first use."""
    if store.exists("busybox"):
        return store.get("busybox")
    tmp = Path(tempfile.mkdtemp(prefix=".busybox-", dir=store.root()))
    try:
        rootfs = tmp / "rootfs"
        populate_busybox(rootfs)
        return store.add("busybox", rootfs, source=f"builtin:busybox ({static_busybox()})",
                         config_={"cmd": ["sh"], "env": {}, "workdir": "/"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


store.register_builtin("busybox", busybox)
