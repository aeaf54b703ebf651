"""An OCI container's layers as the host's kernel mounts them: overlayfs and copy-up, shown.

The kit gives every runc/crun/runsc instance an overlay (:mod:`kit.runtimes._rootfs` mounts it):
``lowerdir`` is the image's root filesystem, read-only and shared by every instance; ``upperdir``
is the instance's own writable layer; the ``merged`` mount point is what the container sees as
``/``. A write to a file that exists only in the image copies the whole file up into the upper
layer first (copy-on-write at file granularity): :func:`copy_up` changes one byte of an image file
from inside (only its modification time: ``touch``, allowed even on a program that is running) and
measures the upper layer's copy against the image's.

An image's kit id is a sha256 over its whole tree (content-addressed); Docker's image id is the
sha256 of the image's config JSON (which names its layers' diff ids), so the same bytes imported
into Docker get another id: :func:`docker_image_id` reads Docker's.

>>> overlay_options_of("rw,lowerdir=/a,upperdir=/s/overlay/upper,workdir=/s/overlay/work")["upperdir"]
'/s/overlay/upper'
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def overlay_options_of(super_options: str) -> dict[str, str]:
    """An overlay's super options (mountinfo's last field) as a dict; overlayfs escapes ',' in paths."""
    out = {}
    for part in super_options.replace("\\,", "\0").split(","):
        key, _, value = part.partition("=")
        out[key] = value.replace("\0", ",")
    return out


def overlay_of(state_dir: Path, mountinfo: str | None = None) -> dict[str, str]:
    """The overlay whose upper layer lies under ``state_dir``: its ``merged`` mount point, ``lower``
    and ``upper`` directories, read from this process's /proc/self/mountinfo.

    Raises:
        LookupError: no such overlay is mounted here (another runtime, or not running).
    """
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields, rest = pre.split(), post.split()
        if len(rest) < 3 or rest[0] != "overlay":
            continue
        opts = overlay_options_of(rest[2])
        if opts.get("upperdir", "").startswith(str(state_dir).rstrip("/") + "/"):
            merged = fields[4].encode().decode("unicode_escape")  # mountinfo octal-escapes spaces
            return {"merged": merged, "lower": opts.get("lowerdir", ""), "upper": opts["upperdir"]}
    raise LookupError(f"no overlay with its upper layer under {state_dir} is mounted here")


def copy_up(instance, path: str) -> dict:
    """Change only the modification time of ``path`` (a file of the image) from inside ``instance``
    (a running kit.Instance with a kit overlay) and measure what the upper layer holds for it.

    Returns:
        ``image_bytes`` (the file in the lower layer), ``upper_bytes`` and ``upper_allocated`` (its
        copy in the instance's upper layer), ``copied_before`` (it was there already), the three
        directories and whether the image's file is unchanged.
    """
    layers = overlay_of(instance.state.state_dir)
    lower, upper = Path(layers["lower"]) / path.lstrip("/"), Path(layers["upper"]) / path.lstrip("/")
    before = lower.stat().st_size
    had_copy = upper.exists()
    instance.exec(["touch", "-c", path], check=True)  # no byte of its content changes
    return {"path": path, "image_bytes": before, "upper_bytes": upper.stat().st_size if upper.exists() else 0,
            "copied_before": had_copy, "image_unchanged": lower.stat().st_size == before,
            "upper_allocated": upper.stat().st_blocks * 512 if upper.exists() else 0, **layers}


def largest_file(rootfs: Path) -> tuple[str, int]:
    """The image's largest regular file (its path inside, bytes): the one whose copy-up shows most."""
    best = ("", -1)
    for dirpath, _, files in os.walk(rootfs):
        for n in files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if os.path.isfile(p) and not os.path.islink(p) and st.st_size > best[1]:
                best = ("/" + os.path.relpath(p, rootfs), st.st_size)
    return best


def docker_image_id(ref: str) -> str:
    """Docker's id of image ``ref``: the sha256 of its config JSON ('' when Docker does not have it)."""
    r = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True,
                       timeout=60)
    return r.stdout.strip() if r.returncode == 0 else ""
