"""Debian images built with debootstrap: how real services (redis-server, mariadb-server) get in.

>>> import kit
>>> kit.images.debian("debian-redis", packages=["redis-server"])   # ~30 s the first time
<Image debian-redis ... from debootstrap:bookworm+redis-server>

The recipe (suite, packages, mirror, variant) is kept in the image's config;
asking again for the same name and recipe returns the stored image at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .._proc import Pumped, kill_group, wait_until
from ..errors import ImageError
from . import store

DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: debootstrap of minbase plus a server takes ~30 s here; a stalled mirror must not hang forever.
BUILD_TIMEOUT = 1800
_PACKAGE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789+-.:")


def recipe(packages=(), suite: str = "bookworm", mirror: str | None = None) -> dict:
    """What identifies a build: two calls with equal recipes give the same image."""
    return {"builder": "debootstrap", "variant": "minbase", "suite": suite,
            "packages": sorted(set(packages)), "mirror": mirror or DEFAULT_MIRROR}


def debian(name: str, packages=(), suite: str = "bookworm", mirror: str | None = None,
           rebuild: bool = False) -> store.Image:
    """Build (or return the cached) Debian image ``name`` with ``packages`` installed.

    Args:
        name: the image name, e.g. ``"debian-redis"``.
        packages: Debian package names, e.g. ``["redis-server"]``.
        suite: the Debian release (``bookworm``).
        mirror: the package mirror (default deb.debian.org).
        rebuild: build even if an image of that name and recipe exists.

    Raises:
        ImageError: debootstrap missing or failing (with the end of its log), or a bad package name.
    """
    packages = [str(p).strip() for p in packages]
    for p in packages:
        if not p or not set(p) <= _PACKAGE_CHARS or p[0] in "-.":
            raise ImageError(f"package name {p!r} is not a Debian package name: use e.g. redis-server")
    want = recipe(packages, suite, mirror)
    if not rebuild and _cached(name, want):
        return store.get(name)
    exe = _debootstrap()
    if not exe:
        raise ImageError("debootstrap is not installed: apt-get install debootstrap (or run 'make setup')")
    key = store.normalize(name).replace("/", "_")
    locks = store.root() / ".locks"
    locks.mkdir(exist_ok=True)
    # One build per name at a time: a second caller waits, then finds it cached.
    with _locked(locks / f"debian-{key}.lock"):
        if not rebuild and _cached(name, want):
            return store.get(name)
        return _build(name, exe, want)


def _cached(name: str, want: dict) -> bool:
    return store.exists(name) and store.get(name).config.get("recipe") == want


def _debootstrap() -> str | None:
    return shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _build(name: str, exe: str, want: dict) -> store.Image:
    tmp = Path(tempfile.mkdtemp(prefix=f".debootstrap-{store.normalize(name).replace('/', '_')}-", dir=store.root()))
    rootfs = tmp / "rootfs"
    argv = [exe, "--variant=minbase"]
    if want["packages"]:
        argv.append("--include=" + ",".join(want["packages"]))
    argv += [want["suite"], str(rootfs), want["mirror"]]
    try:
        proc = Pumped(argv, tmp, detach=True)  # output to tmp/stdout.log, stderr.log
        try:
            code = proc.proc.wait(BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_group(proc.proc)  # debootstrap's dpkg and friends too
            code = None
        if code != 0:
            what = "timed out after %d s" % BUILD_TIMEOUT if code is None else f"failed (exit {code})"
            raise ImageError(f"debootstrap {what} building {name!r}: {_tail(tmp, rootfs)}")
        _slim(rootfs)
        source = f"debootstrap:{want['suite']}" + "".join("+" + p for p in want["packages"])
        return store.add(name, rootfs, source=source, move=True,
                         config_={"cmd": ["bash"], "env": {}, "workdir": "/", "recipe": want})
    finally:
        _unmount_below(tmp)
        if not _mounts_below(tmp):  # never delete through a mount left behind (/proc, /sys, /dev)
            shutil.rmtree(tmp, ignore_errors=True)


def _tail(logs: Path, rootfs: Path, lines: int = 6) -> str:
    """The last lines of debootstrap's output, and of its detailed log inside the rootfs."""
    text = []
    for f in (logs / "stdout.log", logs / "stderr.log", rootfs / "debootstrap" / "debootstrap.log"):
        try:
            text += [ln for ln in f.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
        except OSError:
            pass
    return " | ".join(text[-lines * 2:]) or "no output"


def _slim(rootfs: Path) -> None:
    """Drop what only the build needed: downloaded .debs, package lists, apt's caches."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*",
                    "var/cache/debconf/*-old", "var/log/*.log"):
        for f in rootfs.glob(pattern):
            if f.is_file() or f.is_symlink():
                f.unlink()


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [ln.split()[1].replace("\\040", " ") for ln in lines if len(ln.split()) > 1]
    return [p for p in points if p.startswith(prefix)]


def _unmount_below(path: Path) -> None:
    # A failed debootstrap can leave proc/sys mounted inside the rootfs; deepest first.
    for point in sorted(_mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


class _locked:
    """An exclusive lock file, waited for with a deadline."""

    def __init__(self, path: Path, timeout: float = BUILD_TIMEOUT + 60):
        self.path, self.timeout = path, timeout

    def __enter__(self):
        self.f = open(self.path, "w")

        def take():
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            wait_until(take, self.timeout, interval=0.2, what=f"the build lock {self.path.name}")
        except BaseException:
            self.f.close()
            raise
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()
