"""The image store: named, content-addressed root filesystems under ``$KIT_HOME/images``.

Layout::

    $KIT_HOME/images/names.json          name -> image id
    $KIT_HOME/images/<hex>/rootfs/       the root filesystem (never modified once stored)
    $KIT_HOME/images/<hex>/image.json    metadata (source, layers, size, created, config)
    $KIT_HOME/images/<hex>/formats/      per-runtime derivations (VM disk, ...), made on demand

The id is a sha256 over the tree (paths, modes, link targets, file contents),
so the same bytes get the same id whatever they were imported from.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from .. import config, faults
from ..errors import ImageError, ImageNotFound


@dataclass
class Image:
    """A stored image.

    Attributes:
        name: the name it was stored under (e.g. ``busybox``, ``redis:7``).
        id: ``sha256:<hex>`` of the tree.
        rootfs: the root filesystem directory; treat as read-only.
        source: where it came from (``builtin:busybox``, ``debootstrap:...``, ``tar:...``).
        layers: ``[{"digest", "size", "source"}]`` bottom first.
        size: apparent bytes of the root filesystem.
        created: ISO-8601 UTC.
        config: default ``env``/``cmd``/``workdir`` of the image, if known.
    """

    name: str
    id: str
    rootfs: Path
    source: str
    layers: list[dict] = field(default_factory=list)
    size: int = 0
    created: str = ""
    config: dict = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.rootfs.parent

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[-1][:12]

    def format_dir(self, fmt: str) -> Path:
        """A directory for a per-runtime derivation of this image (e.g. ``qemu``)."""
        d = self.dir / "formats" / fmt
        d.mkdir(parents=True, exist_ok=True)
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rootfs"] = str(self.rootfs)
        return d

    def __repr__(self) -> str:
        return f"<Image {self.name} {self.short_id} {self.size / 2**20:.1f} MiB from {self.source}>"


def root() -> Path:
    d = config.home() / "images"
    with faults.writing(d, "making the image store"):
        d.mkdir(parents=True, exist_ok=True)
    return d


def normalize(name: str) -> str:
    """``busybox:latest`` and ``busybox`` are one name; ``docker.io/library/`` is dropped."""
    name = name.strip()
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.endswith(":latest"):
        name = name[: -len(":latest")]
    return name


def _names() -> dict[str, str]:
    """The name index (a copy: callers may change theirs), parsed again only when ``names.json`` is a
    new file (:func:`_save_names` replaces it: a new inode) or changed in size or time; a run then costs
    one stat, not a read and a JSON parse (issue 24). A read makes no store."""
    global _names_seen
    path = os.path.join(config.home_str(), "images", "names.json")
    try:
        st = os.stat(path)
        stamp = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        seen = _names_seen
        if seen is not None and seen[0] == stamp:
            return dict(seen[1])
        with open(path, "rb") as f:  # read after the stat: never older than the stamp says
            names = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    _names_seen = (stamp, names)
    return dict(names)


#: (stamp of names.json, its parsed index) as :func:`_names` last read it.
_names_seen: tuple | None = None


#: Serialises read-modify-write of the name index between this process's threads;
#: the flock in :func:`_store_locked` does the same between processes.
_names_mutex = threading.Lock()


@contextlib.contextmanager
def _store_locked():
    """Hold the store for a change of names or of stored trees (threads and processes alike)."""
    with _names_mutex, open(root() / ".names.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _save_names(names: dict[str, str]) -> None:
    global _names_seen
    # Unique per thread too: os.replace of a half-written file would lose the index.
    tmp = root() / f".names.{os.getpid()}.{threading.get_ident()}.json"
    tmp.write_text(json.dumps(names, indent=1, sort_keys=True))
    os.replace(tmp, root() / "names.json")
    _names_seen = None


def tree_digest(path: Path) -> tuple[str, int]:
    """sha256 over the tree, and its apparent size in bytes."""
    h = hashlib.sha256()
    total = 0
    path = Path(path)
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for fname in sorted(dirnames + filenames):
            full = os.path.join(dirpath, fname)
            rel = os.path.relpath(full, path)
            st = os.lstat(full)
            h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0".encode("utf-8", "surrogateescape"))
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(full).encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                h.update(f"{st.st_rdev}".encode())
            h.update(b"\n")
    return "sha256:" + h.hexdigest(), total


def add(name: str, rootfs: Path, source: str, layers: list[dict] | None = None,
        config_: dict | None = None, move: bool = True) -> Image:
    """Store ``rootfs`` as image ``name`` (moved in when ``move``, else copied)."""
    name = normalize(name)
    digest, size = tree_digest(rootfs)
    dest = digest_dir(digest)
    # Under the store lock: a concurrent remove() of the same content must not delete the tree
    # between this check and the name being recorded.
    with faults.writing(root(), f"storing image {name!r}", needed=None if move else size), _store_locked():
        if not (dest / "image.json").exists():
            _store_tree(name, digest, size, rootfs, dest, source, layers, config_, move)
        elif move and Path(rootfs).exists():
            shutil.rmtree(rootfs, ignore_errors=True)
        _save_meta(name, digest, source, layers, config_)
        names = _names()
        names[name] = digest
        _save_names(names)
    return get(name)


def _meta_file(name: str) -> Path:
    """Per-name metadata: two names of one tree may differ in layers and config (an image built
    FROM busybox that only sets CMD has busybox's bytes, not its CMD). Made here for a write."""
    d = root() / "meta"
    d.mkdir(exist_ok=True)
    return d / _meta_name(name)


def _meta_path(name: str) -> str:
    """Where :func:`_meta_file` is, for a read: nothing made (a run's lookup, :func:`get`)."""
    return os.path.join(config.home_str(), "images", "meta", _meta_name(name))


@functools.lru_cache(maxsize=256)
def _meta_name(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest() + ".json"


def _save_meta(name, digest, source, layers, config_) -> None:
    meta = {"id": digest, "source": source, "config": config_ or {}}
    if layers:
        meta["layers"] = layers
    tmp = _meta_file(name).with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, _meta_file(name))


def _store_tree(name, digest, size, rootfs, dest, source, layers, config_, move) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".stage-", dir=root()))
    try:
        if move:
            os.rename(rootfs, staging / "rootfs")
        else:
            _copy_tree(rootfs, staging / "rootfs")
        img = Image(
            name=name, id=digest, rootfs=dest / "rootfs", source=source,
            layers=layers or [{"digest": digest, "size": size, "source": source}],
            size=size, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            config=config_ or {},
        )
        (staging / "image.json").write_text(json.dumps(img.to_dict(), indent=1))
        if dest.exists():  # a damaged leftover (no image.json): replace it
            shutil.rmtree(dest, ignore_errors=True)
        os.rename(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _copy_tree(src: Path, dst: Path) -> None:
    # cp -a keeps owners, modes, device nodes and hard links; argv list, no shell.
    p = subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)], capture_output=True)
    if p.returncode:
        Path(dst).mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["cp", "-a", f"{src}/.", str(dst)], capture_output=True)
        if p.returncode:
            if faults.said_no_space(p.stderr):
                raise faults.no_space(root(), f"copying {src} into the image store")
            raise ImageError(f"could not copy {src}: {p.stderr.decode(errors='replace').strip()}")


_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def digest_dir(digest: str) -> Path:
    """The store directory of image id ``digest`` (``sha256:`` + 64 hex digits).

    Raises:
        ImageNotFound: ``digest`` is not such an id (ids from user input are checked
            here, before they are joined into a path: ``sha256:../..`` names nothing).
    """
    m = _DIGEST.fullmatch(digest)
    if not m:
        raise ImageNotFound(f"image id {digest[:80]!r} is not valid: an id is 'sha256:' and 64 hex digits "
                            f"(see kit.images.table())")
    return root() / m.group(1)


def _load(digest: str, name: str | None = None) -> Image:
    d = digest_dir(digest)
    meta = json.loads((d / "image.json").read_text())
    meta["rootfs"] = d / "rootfs"
    if name:
        meta["name"] = name
        try:
            with open(_meta_path(name), "rb") as f:
                own = json.loads(f.read())
        except (OSError, ValueError):
            own = {}
        if own.get("id") == digest:  # what this name was stored with (config, layers, source)
            meta.update({k: v for k, v in own.items() if k in ("source", "config", "layers")})
    return Image(**meta)


def get(name: str) -> Image:
    """The stored image called ``name``; builds the built-in ``busybox`` on first use.

    Raises:
        ImageNotFound: no such image, with what to do about it.
    """
    key = normalize(name)
    names = _names()
    if key not in names and (key in _BUILTINS):
        return _BUILTINS[key]()
    if key not in names and key.startswith("sha256:"):
        if (digest_dir(key) / "image.json").exists():
            return _load(key)
    if key not in names:
        have = sorted(set(names) | set(_BUILTINS), key=lambda n: (len(n), n))
        # The shortest names that fit in about 80 characters: the message stays one short line
        # however full the store is; kit.images.table() lists them all.
        shown: list[str] = []
        while len(shown) < len(have) and len(", ".join(shown + [have[len(shown)]])) <= 80:
            shown.append(have[len(shown)])
        known = (", ".join(shown) + (f", ... ({len(have)} in all)" if len(shown) < len(have) else "")) or "none"
        raise ImageNotFound(
            f"no image {name!r} (have: {known}); build one with kit.images.debian(), "
            f"import with kit.images.import_tar()/import_dir(), or pull with kit.images.pull()"
        )
    digest = names[key]
    try:  # the name's own metadata (config, layers) may be rewritten for the same tree
        st = os.stat(_meta_path(key))
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = None
    hit = _loaded.get((digest, key, stamp))
    if hit is not None and hit.rootfs.is_dir():
        return replace(hit)  # a copy: callers may set attributes on theirs
    try:
        img = _load(digest, key)
    except (OSError, ValueError, TypeError) as e:
        raise ImageNotFound(f"image {name!r} is damaged in the store ({e}); remove it with kit.images.remove({name!r}) and rebuild it") from None
    _loaded[(digest, key, stamp)] = img
    return img


#: Loaded images by (id, name, stamp of the name's metadata file): an id names immutable
#: content, so its image.json never changes, and a name's own config changes only with its
#: metadata file; a run then costs one read of the name index and a stat, not two JSON parses.
_loaded: dict[tuple, Image] = {}


def exists(name: str) -> bool:
    return normalize(name) in _names()


def list_images() -> list[Image]:
    out = []
    for name, digest in sorted(_names().items()):
        try:
            out.append(_load(digest, name))
        except (OSError, ValueError, TypeError):
            continue
    return out


def remove(name: str) -> None:
    """Forget ``name``; delete its files when no other name refers to them."""
    key = normalize(name)
    with _store_locked():
        names = _names()
        if key not in names:
            raise ImageNotFound(f"no image {name!r} to remove; list them with kit.images.list()")
        digest = names.pop(key)
        _save_names(names)
        _meta_file(key).unlink(missing_ok=True)  # the name goes first: a crash leaves an unnamed tree, never a dangling name
        if digest not in names.values():
            shutil.rmtree(digest_dir(digest), ignore_errors=True)


#: name -> zero-argument builder, registered by the builtin module (:func:`register_builtin`).
_BUILTINS: dict = {}


def register_builtin(name: str, build) -> None:
    """Make :func:`get` of ``name`` call ``build()`` (it stores the image) when no image has that name."""
    _BUILTINS[normalize(name)] = build
