"""Debian images built with debootstrap: how real services (redis-server, mariadb-server) get in.

>>> import kit
>>> kit.images.debian("debian-redis", packages=["redis-server"])   # ~30 s the first time
<Image debian-redis ... from debootstrap:bookworm+redis-server>

The packages come from the mirror this host's own apt sources name (see :func:`choose_mirror`),
so a build uses the mirror, proxy or local copy the machine is set up for; ``mirror=`` or
``$KIT_DEBIAN_MIRROR`` override it, deb.debian.org is the last resort.

The recipe (suite, packages, variant, and the mirror it came from) is kept in the image's
config. Asking again for the same name, suite and packages returns the stored image at once:
the mirror is where the packages came from, not what they are (every Debian mirror carries
the same archive, signed with the same keys, which debootstrap checks), so moving to another
mirror does not rebuild.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from .. import mounts
from .._proc import Pumped, kill_group, wait_until, which
from ..errors import ImageError
from . import store

FALLBACK_MIRROR = "http://deb.debian.org/debian"
#: The setting that overrides the host's mirror (a ``mirror=`` argument overrides both).
MIRROR_ENV = "KIT_DEBIAN_MIRROR"
#: debootstrap of minbase plus a server takes ~30 s here; a stalled mirror must not hang forever.
BUILD_TIMEOUT = 1800
_PACKAGE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789+-.:")
#: What identifies an image; the rest of the recipe (the mirror) is where it came from.
_IDENTITY = ("builder", "variant", "suite", "packages")
_SCHEMES = ("http", "https", "ftp", "file")  # what debootstrap can fetch from
_ONE_LINE = re.compile(r"deb\s+(?:\[(?P<options>[^\]]*)\]\s*)?(?P<uri>\S+)\s+(?P<suite>\S+)(?P<components>.*)")


def apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[dict]:
    """The ``deb`` entries of the host's apt sources, in apt's order.

    Reads ``sources.list`` and ``sources.list.d/*.list`` (one-line format) and
    ``sources.list.d/*.sources`` (deb822); other files there are ignored, as apt does.

    Returns:
        One dict per URI: ``uri``, ``suites``, ``components``, ``signed_by`` and ``file``.
    """
    files = [etc_apt / "sources.list"] + sorted(p for p in (etc_apt / "sources.list.d").glob("*")
                                                 if p.suffix in (".list", ".sources"))
    entries = []
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue  # absent or unreadable: apt would complain, the kit falls back
        parse = _parse_deb822 if f.suffix == ".sources" else _parse_one_line
        entries += [dict(e, file=str(f)) for e in parse(text)]
    return entries


def _parse_one_line(text: str) -> list[dict]:
    """``deb [key=value ...] URI SUITE [COMPONENT...]`` lines."""
    out = []
    for line in text.splitlines():
        m = _ONE_LINE.match(line.split("#", 1)[0].strip())
        if m:
            options = dict(o.split("=", 1) for o in (m["options"] or "").split() if "=" in o)
            out.append({"uri": m["uri"], "suites": [m["suite"]], "components": m["components"].split(),
                        "signed_by": options.get("signed-by", "")})
    return out


def _parse_deb822(text: str) -> list[dict]:
    """deb822 stanzas (``Types:``, ``URIs:``, ``Suites:``, ``Components:``; ``Enabled: no`` skipped)."""
    out = []
    for stanza in _stanzas(text):
        if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes").lower() == "no":
            continue
        for uri in stanza.get("uris", "").split():
            out.append({"uri": uri, "suites": stanza.get("suites", "").split(),
                        "components": stanza.get("components", "").split(), "signed_by": stanza.get("signed-by", "")})
    return out


def _stanzas(text: str) -> list[dict]:
    stanzas, cur, key = [], {}, None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()  # a continuation (Signed-By may hold a whole key)
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            cur[key] = value.strip()
    return stanzas


def host_mirror(suite: str = "bookworm", etc_apt: Path = Path("/etc/apt")) -> tuple[str, str] | None:
    """The Debian mirror the host's apt sources name, and the file that names it; None if none does.

    An entry counts when it is a ``deb`` source with the ``main`` component, fetchable by
    debootstrap (http, https, ftp, file), and names ``suite`` itself, or, on a Debian host,
    the host's own release (a Debian mirror carries every release). Entries signed with
    Debian's archive key (or with no key named, as Debian's own lines are) come before
    third-party repositories that happen to name the same suite.
    """
    release = _os_release(etc_apt.parent / "os-release")
    wanted = [suite] + ([release["VERSION_CODENAME"]] if release.get("ID") == "debian"
                        and release.get("VERSION_CODENAME") else [])
    usable = [e for e in apt_sources(etc_apt)
              if "main" in e["components"] and urlsplit(e["uri"]).scheme in _SCHEMES]
    for want in wanted:
        hits = [e for e in usable if want in e["suites"]]
        hits.sort(key=lambda e: not (not e["signed_by"] or "debian-archive" in e["signed_by"]))
        if hits:
            return hits[0]["uri"].rstrip("/"), hits[0]["file"]
    return None


def _os_release(path: Path) -> dict:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("#"))
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def choose_mirror(explicit: str | None = None, suite: str = "bookworm", etc_apt: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The package mirror a build uses, and where that choice came from.

    In order: ``explicit`` (the ``mirror=`` argument), ``$KIT_DEBIAN_MIRROR``, the mirror the
    host's apt sources name (:func:`host_mirror`), then deb.debian.org.

    >>> choose_mirror("http://ftp.de.debian.org/debian")
    ('http://ftp.de.debian.org/debian', 'argument')
    """
    if explicit:
        return _checked(explicit, "mirror="), "argument"
    if os.environ.get(MIRROR_ENV):
        return _checked(os.environ[MIRROR_ENV], MIRROR_ENV), MIRROR_ENV
    return host_mirror(suite, etc_apt) or (FALLBACK_MIRROR, "fallback (the host's apt sources name no Debian mirror)")


def _checked(uri: str, where: str) -> str:
    parts = urlsplit(uri.strip())
    if parts.scheme not in _SCHEMES or not (parts.netloc or parts.path.strip("/")):
        raise ImageError(f"{where} {uri!r} is not a mirror debootstrap can use: give an http(s), ftp or file URL, "
                         f"e.g. {FALLBACK_MIRROR}")
    return uri.strip().rstrip("/")


def recipe(packages=(), suite: str = "bookworm", mirror: str | None = None) -> dict:
    """What a build is made of. Two recipes that agree on :data:`_IDENTITY` give the same image;
    ``mirror`` only records where the packages came from."""
    return {"builder": "debootstrap", "variant": "minbase", "suite": suite,
            "packages": sorted(set(packages)), "mirror": mirror or FALLBACK_MIRROR}


def debian(name: str, packages=(), suite: str = "bookworm", mirror: str | None = None,
           rebuild: bool = False) -> store.Image:
    """Build (or return the cached) Debian image ``name`` with ``packages`` installed.

    Args:
        name: the image name, e.g. ``"debian-redis"``.
        packages: Debian package names, e.g. ``["redis-server"]``.
        suite: the Debian release (``bookworm``).
        mirror: the package mirror; default ``$KIT_DEBIAN_MIRROR``, else the one the host's apt
            sources name, else deb.debian.org (see :func:`choose_mirror`). Not part of the cache key.
        rebuild: build even if an image of that name and recipe exists.

    Raises:
        ImageError: debootstrap missing or failing (with the end of its log), or a bad package name.
    """
    packages = [str(p).strip() for p in packages]
    for p in packages:
        if not p or not set(p) <= _PACKAGE_CHARS or p[0] in "-.":
            raise ImageError(f"package name {p!r} is not a Debian package name: use e.g. redis-server")
    uri, origin = choose_mirror(mirror, suite)
    want = dict(recipe(packages, suite, uri), mirror_from=origin)
    if not rebuild and _cached(name, want):
        return store.get(name)
    exe = _debootstrap()
    if not exe:
        raise ImageError("debootstrap is not installed: apt-get install debootstrap (or run 'make setup')")
    if os.geteuid() != 0:
        raise ImageError(f"building {name!r} needs root: debootstrap runs only as root, and the kit builds no "
                         "Debian image rootless yet; as an ordinary user use busybox, or an image from a registry "
                         "or Docker (kit.images.pull, kit.images.import_docker)")
    key = store.normalize(name).replace("/", "_")
    locks = store.root() / ".locks"
    locks.mkdir(exist_ok=True)
    # One build per name at a time: a second caller waits, then finds it cached.
    with _locked(locks / f"debian-{key}.lock"):
        if not rebuild and _cached(name, want):
            return store.get(name)
        return _build(name, exe, want)


def _cached(name: str, want: dict) -> bool:
    if not store.exists(name):
        return False
    have = store.get(name).config.get("recipe") or {}
    return all(have.get(k) == want[k] for k in _IDENTITY)


def _debootstrap() -> str | None:
    return which("debootstrap")


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
        # A failed debootstrap can leave proc/sys mounted inside the rootfs.
        mounts.unmount_below(tmp)
        if not mounts.below(tmp):  # never delete through a mount left behind (/proc, /sys, /dev)
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
