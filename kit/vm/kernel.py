"""The guest kernel a VM boots: the kit's own, the distribution's, or the user's.

* ``kit``: the kit's own minimal kernel, built once from the distribution's kernel source
  (:mod:`kit.vm.kbuild`; everything built in, booted uncompressed through PVH where QEMU can).
  The default once built.
* ``distro``: the distribution's cloud kernel, fetched once (its virtio drivers are modules
  the kit's init loads). The default until the kit's kernel is built, or when its build failed:
  :func:`select` then says why.
* a path: the user's bzImage (and ``modules=`` its ``lib/modules/<version>``).

Layout::

    $KIT_HOME/kernels/<version>/vmlinuz
    $KIT_HOME/kernels/<version>/config            (the kernel's .config, when known)
    $KIT_HOME/kernels/<version>/modules/           (lib/modules/<version>/ of the package)
    $KIT_HOME/kernels/kit-<key>/                   the kit's own (see kit.vm.kbuild)

Fetch and build ahead of time (``make setup`` does)::

    python -m kit.vm.kernel fetch
    python -m kit.vm.kernel build
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import config
from .._proc import run
from ..errors import InvalidSpec, RuntimeUnavailable
from . import kbuild

#: Debian's meta-package that always depends on the current cloud kernel.
META_PACKAGE = "linux-image-cloud-amd64"

_HOW_TO_FETCH = (
    "run 'python -m kit.vm.kernel fetch' (or 'make setup') on a Debian/Ubuntu host with apt, "
    "or pass kernel=/path/to/vmlinuz (and modules=/path/to/lib/modules/VERSION)"
)


@dataclass(frozen=True)
class Kernel:
    """A bootable guest kernel.

    Attributes:
        vmlinuz: the bzImage QEMU loads with ``-kernel``.
        modules: the ``lib/modules/<version>`` directory, or None (everything built in).
        version: the kernel release, e.g. ``6.1.0-56-cloud-amd64``; ``kit-<key>`` for the kit's own,
            ``user-<content hash>`` for a user's.
        config: the kernel's ``.config``, or None when unknown.
        vmlinux: the uncompressed ELF kernel with a PVH entry point, or None (QEMU then boots vmlinuz).
    """

    vmlinuz: Path
    modules: Path | None
    version: str
    config: Path | None = None
    vmlinux: Path | None = None

    @property
    def kind(self) -> str:
        """``kit``, ``user`` or ``distro``: where this kernel came from."""
        return self.version.split("-", 1)[0] if self.version.startswith(("kit-", "user-")) else "distro"

    def option(self, name: str) -> str | None:
        """The value of ``CONFIG_<name>`` (``y``, ``m``, ...), or None when unset or unknown."""
        if self.config is None:
            return None
        try:
            text = self.config.read_text(errors="replace")
        except OSError:
            return None
        m = re.search(rf"^CONFIG_{re.escape(name)}=(\S+)$", text, re.M)
        return m.group(1) if m else None

    def supports_microvm(self) -> bool:
        """Whether QEMU's microvm machine can find its devices under this kernel.

        microvm has no PCI: its virtio devices are virtio-mmio, announced through
        ACPI, or without ACPI on the command line (QEMU adds ``virtio_mmio.device=``
        words when the machine's ACPI is off). Unknown config: assume not.
        """
        mmio = self.option("VIRTIO_MMIO") in ("y", "m")
        announced = self.option("ACPI") == "y" or self.option("VIRTIO_MMIO_CMDLINE_DEVICES") == "y"
        return mmio and announced

    @property
    def acpi(self) -> bool:
        """Whether this kernel reads ACPI tables (unknown config: assume so, as distributions build it)."""
        return self.config is None or self.option("ACPI") == "y"

    @property
    def key(self) -> str:
        """Identifies this kernel for caches (accelerator verdict, initramfs)."""
        st = self.vmlinuz.stat()
        return f"{self.version}-{st.st_size}-{int(st.st_mtime)}"


def kernels_dir() -> Path:
    return config.home() / "kernels"


def version_key(version: str) -> tuple:
    """Order kernel releases as versions: ``6.1.0-9`` before ``6.1.0-57`` (not as strings)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|[^\d.\-+~_]+", version))


def check_bzimage(path: Path) -> None:
    """Refuse, before QEMU starts, a file that is not a Linux x86 kernel image.

    A bzImage carries the boot sector signature 0xAA55 at offset 0x1FE and the
    setup header magic ``HdrS`` at 0x202 (Documentation/arch/x86/boot.rst).

    Raises:
        InvalidSpec: it is not one.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x206)
    except OSError as e:
        raise InvalidSpec(f"kernel {str(path)!r} cannot be read ({e.strerror}): give the path of a bzImage (vmlinuz)") from None
    if len(head) < 0x206 or head[0x1FE:0x200] != b"\x55\xaa" or head[0x202:0x206] != b"HdrS":
        raise InvalidSpec(f"kernel {str(path)!r} is not a Linux kernel image (bzImage): give the path of a "
                          f"vmlinuz, e.g. /boot/vmlinuz-$(uname -r)")


def _content_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _cached() -> list[Kernel]:
    out = []
    base = kernels_dir()
    if not base.is_dir():
        return out
    dirs = [d for d in base.iterdir() if not d.name.startswith(("user-", "kit-", "."))]
    for d in sorted(dirs, key=lambda d: version_key(d.name), reverse=True):
        if (d / "vmlinuz").is_file():
            mods = d / "modules"
            conf = d / "config"
            out.append(Kernel(d / "vmlinuz", mods if mods.is_dir() else None, d.name,
                              conf if conf.is_file() else None))
    return out


def latest_version(timeout: float = 30) -> str:
    """The cloud kernel release the distribution currently names (via ``apt-cache depends``)."""
    if not shutil.which("apt-cache"):
        raise RuntimeUnavailable(f"no guest kernel cached and no apt-cache to find one: {_HOW_TO_FETCH}")
    p = run(["apt-cache", "depends", META_PACKAGE], timeout=timeout, check=False)
    m = re.search(r"Depends:\s*linux-image-(\S+-cloud-amd64)", p.stdout.decode(errors="replace"))
    if not m:
        raise RuntimeUnavailable(
            f"apt does not know {META_PACKAGE} (try 'apt-get update' first): {_HOW_TO_FETCH}"
        )
    return m.group(1)


def fetch(version: str | None = None, timeout: float = 300, base: Path | None = None,
          keep: set[str] | None = None) -> Kernel:
    """Download and unpack the Debian cloud kernel into the cache; return it.

    Args:
        version: a release such as ``6.1.0-56-cloud-amd64``; default: the current one.
        base: where to cache it (default :func:`kernels_dir`, where the default kernel is chosen).
        keep: keep only these modules (names as ``modprobe`` takes them), not the whole tree.

    Raises:
        RuntimeUnavailable: apt cannot find or download it (the message says what to do).
    """
    version = version or latest_version()
    base = base or kernels_dir()
    dest = base / version
    if (dest / "vmlinuz").is_file():
        return _load(dest)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base))
    try:
        # The directory stays private (mkdtemp: 0700). apt then downloads as root rather than
        # as _apt, and says so in a warning; no one else can place a file here meanwhile.
        package = f"linux-image-{version}"
        p = run(["apt-get", "download", package], timeout=timeout, check=False, cwd=tmp)
        # Exactly the package asked for (name_version_arch.deb), never whatever .deb came first.
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if p.returncode or len(debs) != 1:
            why = p.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no package"]
            raise RuntimeUnavailable(f"could not download linux-image-{version} ({why[0]}): {_HOW_TO_FETCH}")
        run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "x")], timeout=timeout)
        stage = tmp / "k"
        stage.mkdir()
        shutil.move(str(tmp / "x" / "boot" / f"vmlinuz-{version}"), stage / "vmlinuz")
        conf = tmp / "x" / "boot" / f"config-{version}"
        if conf.exists():
            shutil.move(str(conf), stage / "config")
        mods = tmp / "x" / "lib" / "modules" / version
        if mods.is_dir():
            if keep is not None:
                _prune_modules(mods, keep)
            shutil.move(str(mods), stage / "modules")
        try:
            os.rename(stage, dest)
        except OSError:  # fetched meanwhile by another process: theirs is as good
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(dest)


def _prune_modules(mods: Path, keep: set[str]) -> None:
    wanted = {k.replace("-", "_") for k in keep}
    for ko in list(mods.rglob("*.ko")) + list(mods.rglob("*.ko.xz")):
        if ko.name.split(".ko")[0].replace("-", "_") not in wanted:
            ko.unlink()


#: The modules a kit guest loads, by group: the initramfs packs them (kit.vm.initramfs) and a
#: kernel fetched for volumes keeps only them (:func:`with_9p`), so they live with the kernel.
#: Load order (see /work/shared/MACHINE.md): each module needs the ones before it.
#: The init loads the group of its machine's virtio transport (kernel argument
#: ``kit_bus``: q35 has PCI, microvm only virtio-mmio), then ``disk`` or ``net`` when
#: the run needs them. Each insmod costs a fork and the module's init, about 10 ms
#: under TCG, so a machine loads only its own transport.
MODULES = {
    "pci": ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
            "virtio_console"],
    "mmio": ["virtio_ring", "virtio", "virtio_mmio", "virtio_console"],
    # ext4 and what it needs are built into the cloud kernel (skipped), modules in the generic one.
    "disk": ["crc16", "mbcache", "jbd2", "crc32c_generic", "ext4", "virtio_blk", "overlay"],
    "net": ["failover", "net_failover", "virtio_net"],
    # Volumes: QEMU's 9p server over virtio (kit.volumes). Optional: a kernel without it gets no group.
    "9p": ["netfs", "fscache", "9pnet", "9pnet_virtio", "9p"],
}
OPTIONAL_GROUPS = {"9p"}


def module_names() -> set[str]:
    """Every module the initramfs may pack (what a fetched kernel must keep)."""
    return {m for names in MODULES.values() for m in names}


#: What a VM's volumes need (QEMU's own 9p server, virtio-9p): 9p over virtio, in or beside the kernel.
NINEP_OPTIONS = ("NET_9P", "NET_9P_VIRTIO", "9P_FS")


def has_9p(k: Kernel) -> bool:
    return all(k.option(o) in ("y", "m") for o in NINEP_OPTIONS)


def with_9p(k: Kernel, keep: set[str]) -> Kernel:
    """``k`` if it has 9p, else the distribution's generic kernel of the same release (fetched once,
    only the modules in ``keep`` kept, under ``kernels/9p``, never chosen as the default kernel).

    Debian's cloud kernel builds no 9p (``# CONFIG_NET_9P is not set``); its generic kernel
    builds it as modules.

    Raises:
        InvalidSpec: a user's kernel without 9p.
    """
    if has_9p(k):
        return k
    if not k.version.endswith("-cloud-amd64"):
        raise InvalidSpec(f"kernel {k.version} has no 9p file system (CONFIG_9P_FS, CONFIG_NET_9P_VIRTIO), which "
                          f"a VM's volumes need: give a kernel that has it, or run without -v")
    return fetch(k.version[: -len("-cloud-amd64")] + "-amd64", base=kernels_dir() / "9p", keep=keep)


def _load(d: Path) -> Kernel:
    mods = d / "modules"
    conf = d / "config"
    elf = d / "vmlinux"
    return Kernel(d / "vmlinuz", mods if mods.is_dir() else None, d.name, conf if conf.is_file() else None,
                  elf if elf.is_file() else None)


#: The words ``kernel=`` takes besides a path.
CHOICES = ("kit", "distro")
_HOW_TO_BUILD = "run 'python -m kit.vm.kernel build' (or 'make setup')"


def kit_kernel() -> tuple[Kernel | None, str]:
    """The kit's own kernel when it is built (this never builds it), else None and why not."""
    base = kernels_dir()
    fragment = kbuild.FRAGMENT.read_bytes()
    source = kbuild.find_source()
    d = kbuild.cached_build(base, source, fragment)
    if d is not None:
        return _load(d), ""
    if source is None:
        return None, f"the kit's kernel is not built and its source is not installed: {kbuild.HOW_TO_INSTALL}"
    key = kbuild.cache_key(source.version, fragment)
    if kbuild.building(base, key):
        return None, f"the kit's kernel is being built now (log: {base / (key + '.log')})"
    failed = kbuild.failure(base, key)
    if failed:
        return None, (f"the kit's kernel failed to build: {failed.get('reason')} (log: {failed.get('log')}; to "
                      f"retry, run 'python -m kit.vm.kernel build')")
    return None, f"the kit's kernel is not built yet: {_HOW_TO_BUILD}"


def build_kit(progress: kbuild.Progress | None = None, jobs: int | None = None) -> Kernel:
    """Build the kit's own kernel (at once if cached; waits for a build already running) and return it.

    Raises:
        kbuild.BuildFailed: the build failed; the reason is recorded, and the default kernel is the
            distribution's until a build succeeds.
    """
    return _load(kbuild.build(kernels_dir(), jobs=jobs, progress=progress))


def _say(msg: str) -> None:
    print(f"kit kernel: {msg}", file=sys.stderr, flush=True)


def distro() -> Kernel:
    """The newest cached distribution kernel, else fetched now.

    Raises:
        RuntimeUnavailable: none is cached and none can be fetched.
    """
    cached_ = _cached()
    if cached_:
        return cached_[0]
    try:
        return fetch()
    except (subprocess.SubprocessError, OSError) as e:
        raise RuntimeUnavailable(f"no guest kernel: fetching one failed ({e}): {_HOW_TO_FETCH}") from None


def select(kernel: str | os.PathLike | None = None, modules: str | os.PathLike | None = None,
           progress: kbuild.Progress | None = _say) -> tuple[Kernel, str]:
    """The kernel a VM boots, and why that one.

    Args:
        kernel: None (the default: the kit's own kernel when built, else the distribution's, and the
            reason says why), ``"kit"`` (built now if it never was, with ``progress`` told each step),
            ``"distro"``, or the path of a bzImage.
        modules: with a path, its ``lib/modules/<version>`` directory.

    Raises:
        InvalidSpec: the given kernel or modules path does not exist, or ``modules`` without a path.
        RuntimeUnavailable: the kernel asked for cannot be had (the message says what to do).
    """
    if modules and (not kernel or str(kernel) in CHOICES):
        raise InvalidSpec("modules= goes with kernel=/path/to/vmlinuz (the kit's and the distribution's "
                          "kernels bring their own)")
    if not kernel:
        k, why = kit_kernel()
        if k is not None:
            return k, "the kit's own kernel (the default)"
        return distro(), f"the distribution's kernel, because {why}"
    if kernel == "distro":
        return distro(), "asked for (kernel='distro')"
    if kernel == "kit":
        k, why = kit_kernel()
        if k is not None:
            return k, "asked for (kernel='kit')"
        if "failed" in why or "not installed" in why:
            raise RuntimeUnavailable(f"kernel='kit': {why}")
        try:
            return build_kit(progress), "asked for (kernel='kit'); built for this run"
        except kbuild.BuildFailed as e:
            raise RuntimeUnavailable(f"kernel='kit': the build failed: {e}") from None
    return _user_kernel(kernel, modules), "given by path"


def _user_kernel(kernel: str | os.PathLike, modules: str | os.PathLike | None) -> Kernel:
    k = Path(kernel).expanduser()
    if not k.is_file():
        raise InvalidSpec(f"kernel {str(kernel)!r} does not exist: give the path of a bzImage (vmlinuz), "
                          f"or kernel='kit' or 'distro'")
    check_bzimage(k)
    m = Path(modules).expanduser() if modules else None
    if m is not None and not m.is_dir():
        raise InvalidSpec(f"modules {str(modules)!r} is not a directory: give lib/modules/<version>")
    conf = None
    if m is not None:
        # Debian ships the config beside the kernel: /boot/config-<version>.
        cand = k.parent / f"config-{m.name}"
        conf = cand if cand.is_file() else None
    # Cached build products (initramfs) of a user's kernel are keyed by its content, never by its
    # file name: two different files called vmlinuz must not share a folder.
    return Kernel(k, m, f"user-{_content_id(k)}" + (f"-{m.name}" if m else ""), conf)


def resolve(kernel: str | os.PathLike | None = None, modules: str | os.PathLike | None = None) -> Kernel:
    """:func:`select`'s kernel, without the reason."""
    return select(kernel, modules)[0]


def cached() -> Kernel | None:
    """The kernel a VM boots by default, without fetching or building (for probes, which must stay
    quick): the kit's own when built, else the newest cached distribution kernel, else None."""
    k, _ = kit_kernel()
    if k is not None:
        return k
    found = _cached()
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.vm.kernel", description="Manage the kit's guest kernels.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and cache the distribution's cloud kernel")
    f.add_argument("--version", help="e.g. 6.1.0-56-cloud-amd64 (default: what apt names now)")
    f.add_argument("--with-9p", action="store_true",
                   help="also fetch the kernel a VM with volumes boots when this one has no 9p")
    b = sub.add_parser("build", help="build the kit's own guest kernel from the distribution's kernel source "
                                     "(minutes; cached)")
    b.add_argument("--jobs", "-j", type=int, help="parallel compile jobs (default: every CPU)")
    sub.add_parser("list", help="list cached kernels, and which one a VM boots by default and why")
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        k = fetch(args.version)
        print(f"{k.version}: {k.vmlinuz}")
        if args.with_9p:
            k9 = with_9p(k, module_names())
            print(f"{k9.version} (for volumes, 9p): {k9.vmlinuz}")
    elif args.cmd == "build":
        try:
            k = build_kit(_say, args.jobs)
        except kbuild.BuildFailed as e:
            print(f"kit kernel: {e}", file=sys.stderr)
            return 1
        print(f"{k.version}: {k.vmlinux or k.vmlinuz}")
    else:
        kit_k, why = kit_kernel()
        for k in ([kit_k] if kit_k else []) + _cached():
            print(f"{k.version}: {k.vmlinux or k.vmlinuz}")
        print(f"default: {kit_k.version}" if kit_k else f"default: the distribution's kernel, because {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
