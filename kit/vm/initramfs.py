"""The kit's initramfs: static busybox, the virtio modules (none for a kernel that builds them in,
as the kit's own does) and the kit init.

Written directly as a ``newc`` cpio (the format the kernel unpacks), so entries
can be placed under any prefix, with fixed owners and times: the same inputs
give the same bytes. Cached per kernel under ``$KIT_HOME/kernels/<version>/``.

Tiny images can ride along: :func:`with_image` appends the image's root
filesystem as a second cpio archive (the kernel unpacks concatenated archives
in order), cached in the image's ``qemu`` format directory.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import stat
import subprocess
from pathlib import Path

from ..errors import RuntimeUnavailable
from ..images import Image
from ..images.builtin import static_busybox
from .._cache import building
from .kernel import MODULES, OPTIONAL_GROUPS, Kernel, kernels_dir

INIT_SCRIPT = Path(__file__).with_name("init.sh")

class Cpio:
    """A newc cpio archive writer (what ``cpio -o -H newc`` makes)."""

    def __init__(self, f):
        self.f = f
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: int = 0, nlink: int = 1,
               uid: int = 0, gid: int = 0) -> None:
        name_b = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = [self.ino, mode, uid, gid, nlink, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev),
                  len(name_b), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.f.write(hdr + name_b + b"\0" * (-(110 + len(name_b)) % 4))
        self.f.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode("utf-8", "surrogateescape"))

    def node(self, name: str, mode: int, rdev: int) -> None:
        self._entry(name, mode, rdev=rdev)

    def tree(self, root: Path, prefix: str = "") -> None:
        """Add everything under ``root`` (modes and owners kept; hard links as copies)."""
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            for n in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, n)
                rel = os.path.normpath(os.path.join(prefix, rel_dir, n)).lstrip("/")
                st = os.lstat(full)
                own = {"uid": st.st_uid, "gid": st.st_gid}
                if stat.S_ISDIR(st.st_mode):
                    self._entry(rel, st.st_mode, nlink=2, **own)
                elif stat.S_ISLNK(st.st_mode):
                    self._entry(rel, st.st_mode, os.readlink(full).encode("utf-8", "surrogateescape"), **own)
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as fh:
                        self._entry(rel, st.st_mode, fh.read(), **own)
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                    self._entry(rel, st.st_mode, rdev=st.st_rdev, **own)
                # sockets are skipped: they mean nothing in a fresh boot

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
        self.f.write(b"\0" * (-self.f.tell() % 512))


def _module_file(kernel: Kernel, name: str) -> Path | None:
    if kernel.modules is None:
        return None
    for ext in (".ko", ".ko.xz"):
        hits = sorted(kernel.modules.rglob(name + ext)) or sorted(kernel.modules.rglob(name.replace("_", "-") + ext))
        if hits:
            return hits[0]
    return None


def _builtin(kernel: Kernel, name: str) -> bool:
    if kernel.modules is None:
        return True
    try:
        text = (kernel.modules / "modules.builtin").read_text()
    except OSError:
        return False
    return any(line.rsplit("/", 1)[-1] in (name + ".ko", name.replace("_", "-") + ".ko")
               for line in text.splitlines())


#: What the init mounts with one ``mount -a -T`` each: stage 1 (initramfs), stage 2 (image root), and for
#: a disk boot the image's disk (read-only, no journal replay) and the tmpfs its writes go to.
FSTABS = {
    "fstab.1": "proc /proc proc defaults 0 0\nsys /sys sysfs defaults 0 0\ndev /dev devtmpfs defaults 0 0\n",
    "fstab.2": "devpts /dev/pts devpts defaults 0 0\nshm /dev/shm tmpfs defaults 0 0\n",
    "fstab.disk": "/dev/vda /mnt/lower ext4 ro,noload 0 0\nrw /mnt/rw tmpfs mode=0755 0 0\n",
}
#: Appended to a signed module: the signature, its 12-byte descriptor, then this.
_SIG_MAGIC = b"~Module signature appended~\n"
#: Bump when the archive's layout changes, so cached archives are rebuilt.
LAYOUT = "2: modules per bus, unsigned"


def unsigned(module: bytes) -> bytes:
    """``module`` without its appended signature (as is when it has none).

    Checking a signature (SHA-256 over the module, then RSA) costs each insmod a few
    milliseconds of emulated CPU under TCG. The kernel does not require signatures
    (CONFIG_MODULE_SIG_FORCE is off in distribution kernels): an unsigned module
    loads and marks the kernel tainted 'E', which tells nothing here, since the
    modules came from the kernel's own package and the initramfs is the kit's own.
    """
    if not module.endswith(_SIG_MAGIC) or len(module) < len(_SIG_MAGIC) + 12:
        return module
    info = module[-len(_SIG_MAGIC) - 12:-len(_SIG_MAGIC)]
    sig_len = int.from_bytes(info[8:12], "big")
    end = len(module) - len(_SIG_MAGIC) - 12 - sig_len
    return module[:end] if end > 0 else module


def _inputs_digest(kernel: Kernel, busybox: Path) -> str:
    h = hashlib.sha256()
    h.update(LAYOUT.encode())
    h.update(INIT_SCRIPT.read_bytes())
    h.update(repr(MODULES).encode())
    h.update(repr(FSTABS).encode())
    h.update(kernel.key.encode())
    st = busybox.stat()
    h.update(f"{busybox}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def base(kernel: Kernel) -> Path:
    """The kit initramfs for ``kernel`` (built on first use, then cached)."""
    busybox = static_busybox()
    out = kernels_dir() / kernel.version / f"initramfs-{_inputs_digest(kernel, busybox)}.cpio"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.split()
    with building(out, ".initramfs-") as (fd, _tmp), os.fdopen(fd, "wb") as f:
        c = Cpio(f)
        for d in ("dev", "proc", "sys", "mnt", "newroot", ".kit", ".kit/bin", ".kit/lib", ".kit/run"):
            c.dir(d)
        # The kernel opens /dev/console for init's stdin/stdout before devtmpfs is mounted.
        c.node("dev/console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
        c.file(".kit/busybox", busybox.read_bytes(), 0o755)
        c.file(".kit/init", INIT_SCRIPT.read_bytes(), 0o755)
        for name, text in FSTABS.items():
            c.file(f".kit/{name}", text.encode())
        c.symlink("init", ".kit/init")
        for a in applets:
            c.symlink(f".kit/bin/{a}", "/.kit/busybox")
        packed: set[str] = set()
        for group, names in MODULES.items():
            if group in OPTIONAL_GROUPS and not all(_module_file(kernel, n) or _builtin(kernel, n) for n in names):
                continue
            listed = []
            for name in names:
                if name in packed:
                    listed.append(f"lib/{name}.ko")
                    continue
                path = _module_file(kernel, name)
                if path is None:
                    if _builtin(kernel, name):
                        continue
                    raise RuntimeUnavailable(
                        f"kernel {kernel.version} has no module {name} and does not build it in: "
                        f"give modules=/path/to/lib/modules/{kernel.version}, or use the default kernel"
                    )
                data = path.read_bytes()
                if path.suffix == ".xz":  # busybox insmod takes plain ELF objects
                    data = lzma.decompress(data)
                data = unsigned(data)
                c.file(f".kit/lib/{name}.ko", data)
                packed.add(name)
                listed.append(f"lib/{name}.ko")
            if listed:  # none for a kernel that builds them in (the kit's own): the init loads nothing
                c.file(f".kit/modules.{group}", ("\n".join(listed) + "\n").encode())
        c.close()
    return out


def with_image(kernel: Kernel, image: Image) -> Path:
    """The kit initramfs followed by the image's root filesystem (initramfs-only boot)."""
    kit_part = base(kernel)
    out = image.format_dir("qemu") / f"initramfs-{kit_part.stem.split('-', 1)[1]}.cpio"
    if out.is_file():
        return out
    with building(out, ".initramfs-") as (fd, _tmp), os.fdopen(fd, "wb") as f:
        f.write(kit_part.read_bytes())
        c = Cpio(f)
        c.tree(image.rootfs)
        c.close()
    return out
