"""Images from a directory, a tar archive, or an OCI / ``docker save`` archive.

>>> import kit
>>> kit.images.import_tar("mybox", "/tmp/rootfs.tar.gz")
>>> kit.images.import_archive("redis:7", "/tmp/redis.tar")    # docker save / OCI layout (tar or directory)

Extraction is safe by construction: a member with an absolute path or a ``..``
component, a link whose target leaves the archive, or a path that would go
through a symlink is refused with :class:`~kit.errors.ImageError`, before it
is written. Owners, modes, symlinks and device nodes are kept (the kit runs as
root), so a tar made from a stored image imports back to the same id.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import posixpath
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import IO

from .. import faults
from ..errors import ImageError, InvalidSpec
from . import store

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def import_dir(name: str, path: str | os.PathLike, config: dict | None = None) -> store.Image:
    """Store a copy of the root filesystem at ``path`` as image ``name``.

    Args:
        name: the image name, e.g. ``"mybox"``.
        path: a directory holding a root filesystem (left untouched).
        config: default ``cmd``/``env``/``workdir``, if known.

    Raises:
        ImageError: ``path`` is not a directory.
    """
    path = Path(path)
    if not path.is_dir():
        raise ImageError(f"cannot import {str(path)!r}: not a directory; give the root filesystem's directory")
    return store.add(name, path, source=f"dir:{path.resolve()}", config_=config, move=False)


def import_tar(name: str, src: str | os.PathLike | IO[bytes], config: dict | None = None) -> store.Image:
    """Store the root filesystem in a tar archive (plain, gzip, bzip2 or xz) as image ``name``.

    Args:
        name: the image name.
        src: a path, or a binary file object (read as a stream).
        config: default ``cmd``/``env``/``workdir``, if known.

    Raises:
        ImageError: unreadable archive, or an unsafe member (absolute path, ``..``, link escaping).
    """
    label = str(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<stream>")
    with faults.writing(store.root(), f"importing image {name!r}"), _staging() as rootfs:
        with _open_tar(src, label) as tar:
            _apply_layer(tar, rootfs, label, whiteouts=False)
        return store.add(name, rootfs, source=f"tar:{label}", config_=config, move=True)


def import_archive(name: str, path: str | os.PathLike, source: str | None = None) -> store.Image:
    """Store an OCI image layout (a tar, or a directory) or a ``docker save`` tar as image ``name``.

    Layers are applied bottom first with their whiteouts (``.wh.NAME`` deletes,
    ``.wh..wh..opq`` empties a directory of what lower layers put there). Each
    layer's digest and size go to ``Image.layers``; the image's entrypoint, cmd,
    env and workdir to ``Image.config``.

    Raises:
        ImageError: not an OCI or ``docker save`` archive, a missing blob, an unsafe member,
            an image for another architecture.
    """
    path = Path(path)
    if path.is_dir():
        return _import_from(_DirSource(path), name, source or f"oci:{path}")
    try:
        outer = tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as e:
        raise ImageError(f"cannot read image archive {str(path)!r}: {e}; give a 'docker save' or OCI layout tar") from None
    with outer:
        return _import_from(_TarSource(outer, path), name, source or f"archive:{path}")


def _import_from(src: "_TarSource | _DirSource", name: str, source: str) -> store.Image:
    path = src.path
    if src.has("manifest.json"):
        layers, cfg = _docker_save_manifest(src)
    elif src.has("index.json"):
        layers, cfg = _oci_manifest(src)
    else:
        raise ImageError(f"{str(path)!r} has neither manifest.json nor index.json: "
                         f"it is not a 'docker save' or OCI layout archive (for a plain rootfs tar use import_tar)")
    check_platform(cfg, str(path))
    with faults.writing(store.root(), f"importing image {name!r}"), _staging() as rootfs:
        recorded = []
        for layer in layers:
            raw, size = src.open(layer["path"])
            try:
                hasher = _HashingReader(raw)
                with _open_tar(hasher, f"{path}:{layer['path']}") as tar:
                    _apply_layer(tar, rootfs, f"{path}:{layer['path']}", whiteouts=True)
                hasher.drain()
            finally:
                raw.close()
            recorded.append({"digest": layer.get("digest") or hasher.digest(), "size": size,
                             "source": layer["path"]})
        return store.add(name, rootfs, source=source, layers=recorded, config_=image_config(cfg), move=True)


# -- archive formats ----------------------------------------------------------

class _TarSource:
    """Members of an image archive (tar) by name."""

    def __init__(self, outer: tarfile.TarFile, path: Path):
        self.outer, self.path = outer, path
        self.members = {posixpath.normpath(m.name): m for m in outer.getmembers()}

    def has(self, name: str) -> bool:
        return posixpath.normpath(name) in self.members

    def open(self, name: str):
        m = self.members.get(posixpath.normpath(name))
        if m is None or not m.isfile():
            raise _missing(self.path, name)
        return self.outer.extractfile(m), m.size


class _DirSource:
    """Files of an OCI image layout directory (what ``skopeo copy ... oci:DIR`` writes) by name."""

    def __init__(self, path: Path):
        self.path = path

    def _file(self, name: str) -> Path:
        return self.path / _clean(name, str(self.path))

    def has(self, name: str) -> bool:
        return self._file(name).is_file()

    def open(self, name: str):
        f = self._file(name)
        if not f.is_file() or f.is_symlink():
            raise _missing(self.path, name)
        return open(f, "rb"), f.stat().st_size


def _missing(path: Path, name: str) -> ImageError:
    return ImageError(f"{str(path)!r} is incomplete: {name} is missing; save or export the image again")


def _json(src, name: str):
    f, _ = src.open(name)
    try:
        return json.load(f)
    except ValueError as e:
        raise ImageError(f"{str(src.path)!r}: {name} is not valid JSON ({e})") from None
    finally:
        f.close()


def _docker_save_manifest(src) -> tuple[list[dict], dict]:
    path = src.path
    manifest = _json(src, "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError(f"{str(path)!r}: manifest.json lists no image")
    if len(manifest) > 1:
        raise ImageError(f"{str(path)!r} holds {len(manifest)} images: save one image per archive")
    entry = manifest[0]
    cfg = _json(src, entry["Config"])
    diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") or []
    layers = []
    for i, rel in enumerate(entry.get("Layers") or []):
        layers.append({"path": rel, "digest": diff_ids[i] if i < len(diff_ids) else None})
    return layers, cfg


def _oci_manifest(src) -> tuple[list[dict], dict]:
    def blob(desc):
        algo, _, hexd = desc["digest"].partition(":")
        return f"blobs/{algo}/{hexd}"

    desc = pick_platform(_json(src, "index.json").get("manifests") or [], str(src.path))
    doc = _json(src, blob(desc))
    while doc.get("manifests"):  # a nested index (multi-platform): descend
        desc = pick_platform(doc["manifests"], str(src.path))
        doc = _json(src, blob(desc))
    cfg = _json(src, blob(doc["config"]))
    layers = [{"path": blob(d), "digest": d["digest"]} for d in doc.get("layers") or []]
    return layers, cfg


def host_platform() -> str:
    """This host's architecture as images name it (``amd64``, ``arm64``, ...)."""
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}.get(m, m)


def _platform_name(plat: dict) -> str:
    return "/".join(x for x in (plat.get("os", "?"), plat.get("architecture", "?"), plat.get("variant")) if x)


def pick_platform(manifests: list[dict], what: str) -> dict:
    """The linux/<this host's architecture> (or only, unlabelled) manifest of an index."""
    if not manifests:
        raise ImageError(f"{what!r}: the index lists no manifest")
    arch = host_platform()
    for m in manifests:
        plat = m.get("platform") or {}
        if plat.get("os", "linux") == "linux" and plat.get("architecture", arch) == arch:
            return m
    have = ", ".join(sorted({_platform_name(m.get("platform") or {}) for m in manifests}))
    raise ImageError(f"{what!r} has no linux/{arch} image, only {have}: this host runs linux/{arch}; "
                     f"build or push a linux/{arch} variant")


def check_platform(cfg: dict, what: str) -> None:
    """Refuse an image whose config names another OS or architecture than this host's."""
    arch, os_ = cfg.get("architecture"), cfg.get("os")
    if (arch and arch != host_platform()) or (os_ and os_ != "linux"):
        raise ImageError(f"{what!r} is a {os_ or 'linux'}/{arch} image: this host runs linux/{host_platform()}; "
                         f"build or push a linux/{host_platform()} variant")


def image_config(cfg: dict) -> dict:
    """What ``run`` honours of an image config, as ``docker run`` does: entrypoint, cmd, env, workdir, user."""
    c = cfg.get("config") or cfg.get("Config") or {}
    env = dict(e.split("=", 1) for e in c.get("Env") or [] if "=" in e)
    return {"entrypoint": list(c.get("Entrypoint") or []), "cmd": list(c.get("Cmd") or []), "env": env,
            "workdir": c.get("WorkingDir") or "/", "user": c.get("User") or ""}


def command_for(image: store.Image, command: list[str] | None) -> list[str]:
    """The argv ``run`` starts, as ``docker run`` makes it: the image's entrypoint, then ``command``
    or else the image's cmd.

    Raises:
        InvalidSpec: no command given and the image names none.
    """
    cfg = image.config or {}
    argv = list(cfg.get("entrypoint") or []) + list(command if command else cfg.get("cmd") or [])
    if not argv:
        raise InvalidSpec(f"no command given, and image {image.name!r} names none (no Entrypoint or Cmd): "
                          f"put the command after the image, e.g. {image.name} echo hello")
    return [str(a) for a in argv]


class _HashingReader(io.RawIOBase):
    """Reads through to ``raw``, hashing every byte (a layer's digest as it streams)."""

    def __init__(self, raw):
        super().__init__()
        self.raw, self.h = raw, hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, b):
        data = self.raw.read(len(b))
        self.h.update(data)
        b[: len(data)] = data
        return len(data)

    def drain(self):
        # tar stops at its end-of-archive blocks; hash the padding after them too.
        while self.read(1 << 20):
            pass

    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


# -- safe extraction -------------------------------------------------------------

class _staging:
    """A fresh directory beside the store (same filesystem, so adding it is a rename)."""

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=store.root()))
        rootfs = self.tmp / "rootfs"
        rootfs.mkdir(mode=0o755)
        return rootfs

    def __exit__(self, *exc):
        shutil.rmtree(self.tmp, ignore_errors=True)


def _open_tar(src, label: str) -> tarfile.TarFile:
    try:
        if isinstance(src, (str, os.PathLike)):
            return tarfile.open(src, "r:*")
        return tarfile.open(fileobj=src, mode="r|*")
    except (OSError, tarfile.TarError, gzip.BadGzipFile) as e:
        raise ImageError(f"cannot read tar archive {label!r}: {e}; give a tar, tar.gz, tar.bz2 or tar.xz") from None


def _clean(name: str, label: str) -> str:
    """The member's path relative to the root, or ImageError if it would leave it."""
    if name.startswith("/"):
        raise ImageError(f"refusing {label!r}: member {name!r} has an absolute path; "
                         f"make the archive with relative paths (tar -C ROOTFS -c .)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"refusing {label!r}: member {name!r} climbs out with '..'; "
                         f"the archive is malformed or malicious")
    return "/".join(parts)


def _safe_parent(root: Path, rel: str, label: str) -> Path:
    """``root/rel``, after checking that no directory on the way is a symlink."""
    cur = root
    for part in rel.split("/")[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise ImageError(f"refusing {label!r}: member {rel!r} goes through the symlink "
                             f"{str(cur.relative_to(root))!r}; unpacking it could write outside the image")
        if not cur.exists():
            cur.mkdir(mode=0o755)
    return root / rel if rel else root


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _prune(directory: Path, prefix: str, keep: set[str]) -> None:
    """Empty ``directory`` of everything but what the current layer wrote (``keep``)."""
    if not directory.is_dir() or directory.is_symlink():
        return
    for child in directory.iterdir():
        crel = posixpath.join(prefix, child.name) if prefix else child.name
        if crel not in keep:
            _remove(child)
        elif child.is_dir() and not child.is_symlink():
            _prune(child, crel, keep)


def _apply_layer(tar: tarfile.TarFile, root: Path, label: str, whiteouts: bool) -> None:
    """Unpack ``tar`` over ``root``; with ``whiteouts``, honour OCI deletions."""
    added: set[str] = set()  # what this layer wrote: an opaque marker must spare it
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        for m in tar:
            rel = _clean(m.name, label)
            base = posixpath.basename(rel)
            if whiteouts and base.startswith(WHITEOUT):
                parent = _safe_parent(root, rel, label).parent
                if base == OPAQUE:
                    _prune(parent, posixpath.dirname(rel), added)
                else:
                    _remove(parent / base[len(WHITEOUT):])
                continue
            target = _safe_parent(root, rel, label)
            _extract(tar, m, rel, target, root, label)
            added.add(rel)
            if m.isdir():
                dirs.append((target, m))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if isinstance(e, OSError) and faults.of_disk(e):
            raise  # the store's disk, not the archive: said by the boundary that writes (kit.faults)
        raise ImageError(f"cannot unpack {label!r}: {e}; the archive is damaged or truncated") from None
    # Directory times last, as tar does: writing their children changed them.
    for target, m in reversed(dirs):
        try:
            os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
        except OSError:
            pass


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, rel: str, target: Path, root: Path, label: str) -> None:
    if rel == "":
        if m.isdir():  # the archive's "./": the root's own mode and owner
            os.chown(root, m.uid, m.gid)
            os.chmod(root, stat.S_IMODE(m.mode))
            return
        raise ImageError(f"refusing {label!r}: the root entry is not a directory")
    if os.path.lexists(target) and not (m.isdir() and target.is_dir() and not target.is_symlink()):
        # Replace, never write through: an existing symlink here must not be followed.
        _remove(target)
    if m.islnk():
        src_rel = _clean(m.linkname, label)
        src = _safe_parent(root, src_rel, label)
        if not os.path.lexists(src):
            raise ImageError(f"refusing {label!r}: hard link {rel!r} points at {m.linkname!r}, "
                             f"which is not earlier in the archive")
        os.link(src, target, follow_symlinks=False)
        return
    if not (m.isreg() or m.isdir() or m.issym() or m.ischr() or m.isblk() or m.isfifo()):
        return  # sockets and the like have no place in an image
    kw = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
    # Checked above; tarfile's own filters would drop device nodes and owners.
    tar.extract(m, path=str(root), set_attrs=True, numeric_owner=True, **kw)


# -- making tars -------------------------------------------------------------------

def tar_command(rootfs: Path) -> list[str]:
    """argv that writes a tar of ``rootfs`` (numeric owners, relative paths) to stdout."""
    return ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", "-", "."]


def pack(rootfs: Path, dest: str | os.PathLike | None = None, timeout: float = 600):
    """Write a tar of ``rootfs`` to ``dest``, or return a running ``tar`` whose stdout is the stream.

    The caller of the stream form must read stdout to the end and ``wait()`` the process.
    """
    argv = tar_command(rootfs)
    if dest is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(dest, "wb") as out:
        p = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, timeout=timeout)
    if p.returncode:
        raise ImageError(f"could not pack {rootfs}: {p.stderr.decode(errors='replace').strip()[-300:]}")
    return Path(dest)
