"""The image's VM disk: a read-only ext4 file made with ``mkfs.ext4 -d`` (no loop mount).

One disk per image id, cached in the image's ``qemu`` format directory. QEMU
opens it read-only and the guest mounts it read-only under a tmpfs overlay, so
the disk never changes and any number of VMs share it. Writes made inside a VM
land in its tmpfs (guest memory) and vanish with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._proc import run, which
from ..errors import ImageError, InvalidSpec
from ..images import Image
from .._cache import building

_MIB = 1024 * 1024


def _usage(rootfs: Path) -> tuple[int, int]:
    """Bytes (rounded up to 4 KiB blocks) and inode count the tree needs."""
    blocks, inodes = 0, 0
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for n in dirnames + filenames:
            inodes += 1
            st = os.lstat(os.path.join(dirpath, n))
            blocks += (st.st_size + 4095) // 4096
    return blocks * 4096, inodes


def needed_size(image: Image) -> int:
    """A disk size that fits the image: its blocks plus room for ext4's own metadata."""
    used, inodes = _usage(image.rootfs)
    # Inode tables (256 B each, twice the count for headroom) and 10% + 8 MiB for
    # bitmaps, directories' blocks and rounding.
    size = used + inodes * 512 + used // 10 + 8 * _MIB
    return (size + _MIB - 1) // _MIB * _MIB


def base_disk(image: Image, size: int | None = None) -> Path:
    """The cached read-only ext4 disk of ``image``, made on first use.

    Args:
        size: a disk size in bytes asked for by the user (option ``disk_size``);
            default: just what the image needs.

    Raises:
        InvalidSpec: the image does not fit in ``size``.
        ImageError: mkfs.ext4 is missing or failed.
    """
    need = needed_size(image)
    if size is not None and size < need:
        raise InvalidSpec(
            f"image {image.name!r} needs a {need // _MIB} MiB disk but disk_size is {size // _MIB} MiB: "
            f"give disk_size of at least {need // _MIB}m, or leave it out"
        )
    size = size or need
    out = image.format_dir("qemu") / f"rootfs-{size // _MIB}m.ext4"
    if out.is_file():
        return out
    mkfs = which("mkfs.ext4")
    if not mkfs:
        raise ImageError("mkfs.ext4 is missing, so no VM disk can be made: install e2fsprogs (or run 'make setup')")
    _, inodes = _usage(image.rootfs)
    with building(out, ".disk-") as (fd, tmp):
        os.close(fd)
        # No journal: the guest only ever mounts it read-only. Fixed UUID and hash
        # seed from the image id, so one image gives one disk.
        uid = image.id.split(":", 1)[-1]
        uuid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}"
        p = run([mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-N", str(inodes * 2 + 1024),
                 "-L", "kit-root", "-U", uuid, "-E", f"root_owner=0:0,hash_seed={uuid}",
                 "-d", str(image.rootfs), tmp, f"{size // 1024}k"], timeout=600, check=False,
                env={**os.environ, "E2FSPROGS_FAKE_TIME": "1"})
        if p.returncode:
            msg = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise ImageError(f"mkfs.ext4 could not make a disk of image {image.name!r}: {msg[0]}")
        os.chmod(tmp, 0o444)
    return out
