"""What one service needs before it starts: its image (built, substituted or named), its secrets and
configs as files, its run options; and the supervisor of ``restart`` policies.

``build:`` goes through :func:`kit.images.build`, tagged ``compose-<service>:<content hash>`` (the
context's files, the Dockerfile, target and args), so an unchanged context is never rebuilt. A registry
image that cannot be pulled here is replaced by a kit image: ``up(images={"mariadb:*": "debian-mariadb"})``
or the service's ``x-kit-image``. Secrets and configs are mounted read-only as files
(``/run/secrets/NAME``, ``/NAME``): a file-based one is the file itself; one from a variable or
``content:`` is written to a private directory in memory (``/dev/shm``), removed at ``down``, and never
into an image, a log or a saved study.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .. import images
from ..errors import ComposeFileError, ImageNotFound
from .file import Project, Service


def substitute(s: Service, mapping: dict | None) -> str | None:
    """The kit image that stands in for ``s.image`` (``images=`` patterns first, then ``x-kit-image``)."""
    for pattern, kit_image in (mapping or {}).items():
        if s.image and (fnmatch.fnmatchcase(s.image, pattern) or s.image == pattern):
            return kit_image
    return s.kit_image


def image_source(s: Service, mapping: dict | None) -> str:
    """How the service's image is come by, for :func:`plan`."""
    if s.build:
        return f"built from {s.build['context']}" + (f" (target {s.build['target']})" if s.build["target"] else "")
    sub = substitute(s, mapping)
    if sub:
        return f"kit image {sub} instead of {s.image}"
    return "from x-kit-packages" if s.packages else "named"


def content_digest(build: dict) -> str:
    """A hash of everything a build reads: the context's files (paths, modes, bytes), Dockerfile, target, args."""
    h = hashlib.sha256()
    ctx = Path(build["context"])
    for root, dirs, files in os.walk(ctx):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for f in sorted(files):
            p = Path(root, f)
            h.update(str(p.relative_to(ctx)).encode() + b"\0" + oct(p.lstat().st_mode).encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    h.update(Path(build["dockerfile"]).read_bytes())
    h.update(repr((build["target"], sorted(build["args"].items()))).encode())
    return h.hexdigest()[:12]


def built_image(proj: Project, s: Service, stream=None) -> str:
    """The service's image built from its ``build:`` (reused when the content has not changed)."""
    tag = f"compose-{s.name}".lower() + ":" + content_digest(s.build)  # by content alone: any project reuses it
    try:
        images.get(tag)
        return tag
    except ImageNotFound:
        pass
    return images.build(s.build["context"], tag, dockerfile=s.build["dockerfile"], buildargs=s.build["args"],
                        target=s.build["target"], stream=stream or (lambda line: None)).name


class Secrets:
    """The files behind a project's secrets and configs, for as long as the project is up."""

    def __init__(self, proj: Project, environ: dict):
        self.proj, self.environ = proj, environ
        self.dir: str | None = None

    def mounts(self, s: Service) -> list[str]:
        """``SRC:TARGET:ro`` of each secret and config of ``s``."""
        out = []
        for what, table in (("secrets", self.proj.secrets), ("configs", self.proj.configs)):
            for name, target in getattr(s, what):
                src = self._file(what, table[name])
                if target in s.access:
                    src = self._owned(src, f"{what}-{name}-{s.name}-{len(out)}", s.access[target],
                                      f"{what[:-1]} {name!r} of service {s.name!r}")
                out.append(f"{src}:{target}:ro")
        return out

    def _owned(self, src: str, key: str, access: tuple, label: str) -> str:
        """A copy of ``src`` in the in-memory directory with the long syntax's mode (Compose's default 0444)
        and owner: a bind mount shows the host file's own, and the user's file is not the kit's to change.
        The owner needs root (as root, runc, Docker and a VM's 9p passthrough keep it as given)."""
        mode, uid, gid = access
        if (uid is not None or gid is not None) and os.geteuid() != 0:
            raise ComposeFileError(f"{label}: uid/gid need the kit to run as root (an ordinary user cannot give "
                                   f"a file to another user); drop them")
        path = Path(self._dir(), key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Path(src).read_bytes())
            os.fchown(f.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            os.fchmod(f.fileno(), 0o444 if mode is None else mode)
        return str(path)

    def _dir(self) -> str:
        if self.dir is None:  # in memory where there is a tmpfs: a secret never lands on a disk
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self.dir = tempfile.mkdtemp(prefix="kit-secrets-", dir=base)
        return self.dir

    def _file(self, what: str, sec) -> str:
        if sec.file:
            return sec.file
        value = sec.content if sec.content is not None else self.environ.get(sec.environment)
        if value is None:
            raise ComposeFileError(f"{what[:-1]} {sec.name!r} comes from variable {sec.environment!r}, which is "
                                   f"not set")
        path = Path(self._dir(), f"{what}-{sec.name}")
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            with os.fdopen(fd, "w") as f:
                f.write(value)
        return str(path)

    def remove(self) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def run_options(proj: Project, s: Service) -> dict:
    """The service's keys as :meth:`kit.Session.start` takes them (beyond image, command and network)."""
    kw = dict(s.options)
    kw["labels"] = {**kw.get("labels", {}), "com.docker.compose.project": proj.name,
                    "com.docker.compose.service": s.name}
    if s.read_only:
        kw["read_only"] = True
    if s.cpus:
        kw["cpus"] = s.cpus
    return kw


def should_restart(s: Service, status: str, restarts: int) -> bool:
    """Whether a service that ended with ``status`` starts again under its ``restart`` policy."""
    if s.restart in ("always", "unless-stopped"):
        return True
    if s.restart != "on-failure" or status.startswith("exited (0)"):
        return False
    return s.restart_max is None or restarts < s.restart_max
