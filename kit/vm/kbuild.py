"""The kit's own guest kernel: built once from the distribution's kernel source, then cached.

Debian's ``linux-source-6.1`` package ships the source as a tarball
(``/usr/src/linux-source-6.1.tar.xz``). The kit unpacks it, configures it as
``make tinyconfig`` does plus the kit's fragment (``kernel.config`` beside this
file, read it for what a kit guest needs and why) with the kernel's own
``scripts/kconfig/merge_config.sh``, checks that every option the fragment asks for
made it into the final ``.config``, and builds ``bzImage`` (LZ4) and the
uncompressed ``vmlinux`` QEMU boots through its PVH entry point. Everything is
built in, so the kit's init loads no modules, and volumes (9p) need no second kernel.

Layout, under ``$KIT_HOME/kernels``::

    kit-<key>/vmlinuz      the bzImage
    kit-<key>/vmlinux      the uncompressed ELF kernel (PVH entry)
    kit-<key>/config       its .config
    kit-<key>/build.json   source package and version, fragment hash, build time, sizes
    kit-<key>.failed.json  why the last build of this key failed (the VM path then uses the
                           distribution's kernel and says why); a new build removes it
    kit-<key>.log          the last build's output
    .kit-<key>.lock        held while building: a second builder waits for the first

``<key>`` hashes the source package's version, the fragment and :data:`RECIPE`:
change any of them and the next build makes a new kernel; old ones stay until removed.

Build ahead of time (``make setup`` does; minutes on two cores)::

    python -m kit.vm.kernel build
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import KitError

#: The fragment the kit keeps in the repository.
FRAGMENT = Path(__file__).with_name("kernel.config")
#: Bump when the build steps change what comes out for the same source and fragment.
RECIPE = 1
#: Where Debian's linux-source-X.Y packages put their tarball.
SOURCE_DIR = Path("/usr/src")
#: The package the kit builds from (Makefile's SYSTEM_PACKAGES installs it).
SOURCE_PACKAGE = "linux-source-6.1"
#: What ``make tinyconfig`` merges on x86 (its Makefile target), before the kit's fragment.
TINY_FRAGMENTS = ("kernel/configs/tiny-base.config", "kernel/configs/tiny.config", "arch/x86/configs/tiny.config")
#: Fixed build identity, so that the same inputs give the same kernel wherever it is built. KCFLAGS:
#: GCC at -Os inlines memset/memcpy of a known size as ``rep stosb``/``rep movsb`` (3,400 places in
#: this kernel), which TCG emulates one byte per step: freeing the kernel's init memory alone (4 MB,
#: poisoned byte by byte) cost ~0.3 s of a boot under TCG here. As calls, they reach the kernel's own
#: memset/memcpy, which pick the CPU's best method at boot (``rep stosb`` where the CPU has fast
#: strings, e.g. under KVM; an unrolled loop under TCG's CPU model).
BUILD_ENV = {"ARCH": "x86_64", "KBUILD_BUILD_USER": "kit", "KBUILD_BUILD_HOST": "kit",
             "KBUILD_BUILD_TIMESTAMP": "1970-01-01", "KBUILD_BUILD_VERSION": "1", "LC_ALL": "C",
             "KCFLAGS": "-mstringop-strategy=libcall"}
HOW_TO_INSTALL = ("apt-get install linux-source-6.1 flex bison libelf-dev libssl-dev bc (or run 'make setup')")


class BuildFailed(KitError):
    """The kit's kernel could not be built (the reason is recorded beside the cache)."""


@dataclass(frozen=True)
class Source:
    """A kernel source tarball and the version of the package that installed it."""

    tarball: Path
    package: str
    version: str


def find_source(src_dir: Path | None = None, package: str = SOURCE_PACKAGE) -> Source | None:
    """The installed source of ``package`` (its tarball and package version), or None."""
    src_dir = src_dir or SOURCE_DIR
    tarball = src_dir / f"{package}.tar.xz"
    if not tarball.is_file():
        return None
    return Source(tarball, package, _package_version(package, tarball))


_versions: dict[tuple, str] = {}


def _package_version(package: str, tarball: Path) -> str:
    """dpkg's version of ``package``; without dpkg, the tarball's size and time stand in for it."""
    st = tarball.stat()
    ident = (package, str(tarball), st.st_size, st.st_mtime_ns)
    if ident not in _versions:
        version = ""
        if shutil.which("dpkg-query"):
            p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                               timeout=30)
            version = p.stdout.strip() if p.returncode == 0 else ""
        _versions[ident] = version or f"tarball-{st.st_size}-{st.st_mtime_ns}"
    return _versions[ident]


# -- the fragment ---------------------------------------------------------------

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


def parse_fragment(text: str) -> dict[str, str | None]:
    """``CONFIG_NAME`` -> its value (``y``, a number, a quoted string), or None for "is not set".

    Comments and blank lines are skipped; a later line for the same option wins (as in Kconfig).

    Raises:
        BuildFailed: a line is neither (the fragment would be misread by Kconfig too).
    """
    out: dict[str, str | None] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _SET.match(line) or _UNSET.match(line)
        if m:
            out[m.group(1)] = m.group(2) if m.re is _SET else None
        elif line and not line.startswith("#"):
            raise BuildFailed(f"kernel config fragment line {n} is not CONFIG_NAME=value or a comment: {raw!r}")
    return out


def missing_options(wanted: dict[str, str | None], config_text: str) -> list[str]:
    """The fragment's settings the final ``.config`` does not have (a dependency or a symbol missing in
    this source), as ``CONFIG_X=y (got: ...)``; an unset option counts as unset when it is absent."""
    final = parse_fragment("\n".join(line for line in config_text.splitlines()
                                     if _SET.match(line) or _UNSET.match(line)))
    missing = []
    for name, value in wanted.items():
        got = final.get(name)
        if got != value:
            asked = f"{name}={value}" if value is not None else f"{name} unset"
            missing.append(f"{asked} (got: {got if got is not None else 'unset'})")
    return missing


def cache_key(source_version: str, fragment: bytes, recipe: int = RECIPE) -> str:
    """``kit-<hash>`` of what decides the kernel: the source package's version, the fragment, the recipe
    (its number, the base fragments and the build environment)."""
    h = hashlib.sha256()
    h.update(f"recipe {recipe} {TINY_FRAGMENTS} {sorted(BUILD_ENV.items())}\nsource {source_version}\n".encode())
    h.update(fragment)
    return "kit-" + h.hexdigest()[:16]


def fragment_sha(fragment: bytes) -> str:
    return hashlib.sha256(fragment).hexdigest()


# -- what is cached -----------------------------------------------------------------

def _is_build(d: Path) -> bool:
    return (d / "vmlinuz").is_file() and (d / "build.json").is_file()


def cached_build(base: Path, source: Source | None, fragment: bytes) -> Path | None:
    """The cached build for ``source`` and ``fragment``; without a source (removed since), the newest
    cached build of the same fragment."""
    if source is not None:
        d = base / cache_key(source.version, fragment)
        return d if _is_build(d) else None
    want = fragment_sha(fragment)
    found = []
    for d in base.glob("kit-*"):
        if d.is_dir() and _is_build(d):
            try:
                meta = json.loads((d / "build.json").read_text())
            except (OSError, ValueError):
                continue
            if meta.get("fragment_sha256") == want and meta.get("recipe") == RECIPE:
                found.append((meta.get("built_at", 0), d))
    return max(found)[1] if found else None


def failure(base: Path, key: str) -> dict | None:
    """The recorded failure of ``key``'s last build, or None."""
    try:
        return json.loads((base / f"{key}.failed.json").read_text())
    except (OSError, ValueError):
        return None


def building(base: Path, key: str) -> bool:
    """Whether a build of ``key`` is running now (in any process)."""
    lock = base / f".{key}.lock"
    if not lock.exists():
        return False
    with _lock(lock, wait=False) as held:
        return not held


@contextlib.contextmanager
def _lock(path: Path, wait: bool = True) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- building -----------------------------------------------------------------------

Progress = Callable[[str], None]


def build(base: Path, source: Source | None = None, fragment_path: Path | None = None, jobs: int | None = None,
          progress: Progress | None = None) -> Path:
    """Build the kit's kernel into ``base/kit-<key>`` (at once if it is cached) and return that directory.

    A second caller waits for a build already running (in any process) and then uses its result.
    On failure the reason is recorded (``kit-<key>.failed.json``, read by :func:`failure`) and raised.

    Raises:
        BuildFailed: no source installed, the fragment asks for what this source cannot give, or a
            step failed (the message names it and ends with the last lines of its output).
    """
    say = progress or (lambda msg: None)
    fragment_path = fragment_path or FRAGMENT
    fragment = fragment_path.read_bytes()
    source = source or find_source()
    if source is None:
        raise BuildFailed(f"no kernel source: {SOURCE_DIR}/{SOURCE_PACKAGE}.tar.xz is missing: {HOW_TO_INSTALL}")
    key = cache_key(source.version, fragment)
    dest = base / key
    with _lock(base / f".{key}.lock", wait=False) as free:
        if not free:
            say(f"another process is building {key}: waiting for it")
    with _lock(base / f".{key}.lock"):
        if _is_build(dest):
            return dest
        (base / f"{key}.failed.json").unlink(missing_ok=True)
        log = base / f"{key}.log"
        t0 = time.monotonic()
        try:
            _build_into(dest, source, fragment_path, log, jobs or os.cpu_count() or 1, say)
        except BuildFailed as e:
            _record_failure(base, key, str(e), log)
            raise
        except (OSError, subprocess.SubprocessError) as e:
            _record_failure(base, key, f"{type(e).__name__}: {e}", log)
            raise BuildFailed(f"building the kit kernel failed: {e}") from None
        say(f"built {key} in {time.monotonic() - t0:.0f} s")
        return dest


def _record_failure(base: Path, key: str, reason: str, log: Path) -> None:
    data = {"key": key, "reason": reason, "log": str(log), "failed_at": time.time()}
    tmp = base / f".{key}.failed.{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, base / f"{key}.failed.json")


def _build_into(dest: Path, source: Source, fragment_path: Path, log: Path, jobs: int, say: Progress) -> None:
    base = dest.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{dest.name}-", dir=base))
    try:
        with open(log, "w") as out:
            tree = tmp / "src"
            tree.mkdir()
            say(f"unpacking {source.package} {source.version} ({source.tarball.stat().st_size / 1e6:.0f} MB)")
            _step(["tar", "-xf", str(source.tarball), "-C", str(tree), "--strip-components=1"], out, log, "unpack")
            say("configuring: tinyconfig + " + fragment_path.name)
            _step(["sh", "scripts/kconfig/merge_config.sh", "-n", *TINY_FRAGMENTS, str(fragment_path)], out, log,
                  "merge_config.sh", cwd=tree)
            config = (tree / ".config").read_text()
            missing = missing_options(parse_fragment(fragment_path.read_text()), config)
            if missing:
                raise BuildFailed(f"{source.package} {source.version} cannot give what {fragment_path.name} asks "
                                  f"for: {'; '.join(missing)}")
            t0 = time.monotonic()
            _compile(tree, jobs, out, log, say)
            stage = tmp / "out"
            stage.mkdir()
            shutil.copy2(tree / "arch/x86/boot/bzImage", stage / "vmlinuz")
            shutil.copy2(tree / "vmlinux", stage / "vmlinux")
            (stage / "config").write_text(config)
            release = (tree / "include/config/kernel.release").read_text().strip()
            meta = {"key": dest.name, "recipe": RECIPE, "package": source.package, "source_version": source.version,
                    "release": release, "fragment": str(fragment_path),
                    "fragment_sha256": fragment_sha(fragment_path.read_bytes()), "jobs": jobs,
                    "compile_s": round(time.monotonic() - t0, 1), "built_at": time.time(),
                    "vmlinuz_bytes": (stage / "vmlinuz").stat().st_size,
                    "vmlinux_bytes": (stage / "vmlinux").stat().st_size}
            (stage / "build.json").write_text(json.dumps(meta, indent=1))
            shutil.rmtree(dest, ignore_errors=True)  # a half-made one without build.json
            os.rename(stage, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _step(argv: list[str], out, log: Path, what: str, cwd: Path | None = None) -> None:
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    p = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **BUILD_ENV})
    if p.returncode:
        raise BuildFailed(f"{what} failed (exit {p.returncode}): {_tail(log)}")


def _compile(tree: Path, jobs: int, out, log: Path, say: Progress) -> None:
    """``make bzImage`` (which links vmlinux first), saying every 20 s how many files it compiled."""
    argv = ["make", f"-j{jobs}", "bzImage"]
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    say(f"compiling with {jobs} job(s) (a few minutes; output in {log})")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tree,
                         env={**os.environ, **BUILD_ENV})
    compiled, t0, last = 0, time.monotonic(), time.monotonic()
    for line in p.stdout:
        out.write(line.decode(errors="replace"))
        if line.startswith(b"  CC "):
            compiled += 1
        if time.monotonic() - last >= 20:
            last = time.monotonic()
            say(f"compiling: {compiled} files in {last - t0:.0f} s")
    if p.wait():
        out.flush()
        raise BuildFailed(f"make bzImage failed (exit {p.returncode}): {_tail(log)}")


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return " | ".join(text[-lines:]) or "no output"
