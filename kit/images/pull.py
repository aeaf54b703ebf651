"""Images from a registry: ``kit.images.pull("127.0.0.1:5000/app:1")``, ``name@sha256:...``.

Names are read as Docker reads them: ``redis:7`` is ``docker.io/library/redis:7``,
``me/app`` is ``docker.io/me/app:latest``, and a first component with a dot, a
colon or ``localhost`` is a registry (``127.0.0.1:5000/app:1``).

Two ways, one result (the same content id): skopeo (the default when installed)
copies the image into an OCI layout beside the store, the Docker daemon pulls it
and hands it over as ``docker save``. Either way the manifest is checked first
(an index gives this host's architecture, or a one-line error naming what it
has), blobs are verified against their digests, layers are applied in order with
their whiteouts, each layer's digest and size are recorded, and the config's
entrypoint, cmd, env and workdir are kept for :func:`kit.run`. A failure leaves
nothing in the store, so a retry starts clean. Registries on 127.0.0.0/8 and
localhost are spoken to over plain HTTP, as Docker does by default.

>>> import kit
>>> kit.images.pull("127.0.0.1:5000/demo/app:1")          # progress bar while it downloads
>>> kit.images.pull("127.0.0.1:5000/demo/app:1", via="docker")
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import faults
from ..errors import ImageError, ImageNotFound
from . import archive, engine, store

#: Seconds a registry may stay silent (no answer, no byte) before a pull is given up.
PULL_TIMEOUT = 15
#: Seconds a whole pull may take at most.
PULL_DEADLINE = 1800
#: Phrases of a registry that cannot be reached at all (as opposed to one that said no).
_UNREACHABLE = ("no such host", "dial tcp", "i/o timeout", "connection refused", "network is unreachable",
                "tls handshake timeout", "client.timeout", "timed out", "temporary failure in name resolution",
                "read timed out", "no route to host", "connection reset", "unexpected eof", "broken pipe",
                "eof", "server misbehaving")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF = re.compile(
    rf"(?:(?P<host>(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?)/)?"
    rf"(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>[\w][\w.-]{{0,127}}))?"
    rf"(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?")
DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class Reference:
    """An image reference, completed as Docker completes it.

    Attributes:
        registry: ``docker.io``, ``127.0.0.1:5000``, ``ghcr.io``...
        repository: ``library/redis``, ``demo/app``...
        tag: ``7``, ``latest``... (None with a digest alone).
        digest: ``sha256:...`` when the reference pins one.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + \
            (f"@{self.digest}" if self.digest else "")

    @property
    def repo(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def loopback(self) -> bool:
        """A registry on this host, which Docker speaks plain HTTP to by default."""
        host = self.registry.rsplit(":", 1)[0] if not self.registry.startswith("[") else self.registry
        return host == "localhost" or host.startswith("127.") or host in ("[::1]", "::1")


def parse(ref: str) -> Reference:
    """Read ``ref`` as Docker does (``redis:7`` -> ``docker.io/library/redis:7``).

    Raises:
        ImageError: not an image reference, with the form it should take.
    """
    text = str(ref).strip()
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    m = _REF.fullmatch(text)
    if not m or len(text) > 255:
        raise ImageError(f"{str(ref)[:80]!r} is not an image reference: use [REGISTRY/]NAME[:TAG][@sha256:DIGEST], "
                         f"e.g. redis:7 or 127.0.0.1:5000/demo/app:1 (lower-case names)")
    host, repo = m.group("host"), m.group("repo")
    if host and not ("." in host or ":" in host or host == "localhost" or host.startswith("[")):
        repo, host = f"{host.lower()}/{repo}", None  # 'me/app': a Docker Hub user, not a host
    if host and host != host.lower() and "." not in host and ":" not in host:
        raise ImageError(f"{ref!r}: repository names are lower-case")
    host = host or DOCKER_HUB
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    tag = m.group("tag") or (None if m.group("digest") else "latest")
    return Reference(host, repo, tag, m.group("digest"))


def names_registry(name: str) -> bool:
    """Whether ``name`` names a registry or a digest (so ``run`` pulls it on first use)."""
    first = name.split("/", 1)[0]
    if "@sha256:" in name:
        return True
    return "/" in name and ("." in first or ":" in first or first == "localhost")


def obtain(name: str, progress: bool = True) -> store.Image:
    """The stored image ``name``; a reference naming a registry is pulled on first use."""
    try:
        return store.get(name)
    except ImageNotFound:
        if not names_registry(name):
            raise
    return pull(name, progress=progress)


def pull(ref: str, name: str | None = None, via: str | None = None, progress: bool = True) -> store.Image:
    """Pull ``ref`` from its registry and store it as ``name`` (default: ``ref``).

    Args:
        ref: e.g. ``"redis:7"``, ``"127.0.0.1:5000/demo/app:1"``, ``"...@sha256:<64 hex>"``.
        name: the name in the kit's store.
        via: ``"skopeo"`` or ``"docker"`` (the daemon); None: skopeo if installed, else the daemon.
        progress: show a progress bar (tqdm) while the layers download.

    Raises:
        ImageError: no registry reachable, a missing tag, no image for this host's architecture,
            a blob whose digest does not match, a registry gone mid-pull (each one line; nothing stored).
    """
    r = parse(ref)
    name = name or ref
    store.normalize(name)
    via = via or ("skopeo" if shutil.which("skopeo") else "docker")
    if via == "skopeo":
        if not shutil.which("skopeo"):
            raise ImageError("skopeo is not installed: apt-get install skopeo (or run 'make setup'), or pull with "
                             "via='docker'")
        return _pull_skopeo(ref, r, name, progress)
    if via == "docker":
        return _pull_docker(ref, r, name, progress)
    raise ImageError(f"via={via!r}: pull with via='skopeo' or via='docker'")


# -- what went wrong, in one line ---------------------------------------------------

def explain(ref: str, detail: str) -> ImageError:
    """One-line error for a failed pull, by what the registry or tool said."""
    m = re.search(r'msg="((?:[^"\\]|\\.)*)"', detail)  # skopeo's logrus line: keep its message
    if m:
        detail = m.group(1).replace('\\"', '"')
    low = detail.lower()
    short = " ".join(detail.split())[:240]
    if "digest" in low and ("did not match" in low or "mismatch" in low or "does not match" in low
                            or "verification failed" in low or "verify" in low):
        return ImageError(f"cannot pull {ref!r}: the registry sent data whose digest does not match "
                          f"({short}); nothing was stored; the registry's copy is damaged: push the image again")
    if "manifest unknown" in low or "not found" in low or "manifest_unknown" in low or "no such image" in low \
            or "name unknown" in low or "name_unknown" in low:
        return ImageError(f"cannot pull {ref!r}: the registry has no such image or tag ({short}); "
                          f"check the name and tag")
    if "no matching manifest" in low or "no image found in manifest list" in low:
        return ImageError(f"cannot pull {ref!r}: the registry has no linux/{archive.host_platform()} image "
                          f"of it ({short})")
    if any(p in low for p in _UNREACHABLE):
        return ImageError(
            f"cannot pull {ref!r}: no image registry is reachable from this host, or it went away mid-pull "
            f"({short}); nothing was stored; build the image instead with kit.images.build() or "
            f"kit.images.debian(name, packages=[...]), or bring it as a file with "
            f"kit.images.import_tar()/import_archive(), or from a local daemon with kit.images.import_docker()")
    return ImageError(f"cannot pull {ref!r}: the registry said: {short}; check the name and tag")


# -- skopeo --------------------------------------------------------------------------

def _skopeo(argv: list[str], ref: str, timeout: float) -> bytes:
    try:
        p = subprocess.run(["skopeo", *argv], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise explain(ref, f"skopeo timed out: no answer within {timeout:g} s") from None
    if p.returncode:
        lines = p.stderr.decode(errors="replace").strip().splitlines()
        raise explain(ref, lines[-1] if lines else f"skopeo exited with {p.returncode}")
    return p.stdout


def _tls(r: Reference, flag: str) -> list[str]:
    return [f"--{flag}=false"] if r.loopback else []


def _manifest(ref: str, r: Reference, target: str) -> tuple[dict, bytes]:
    raw = _skopeo(["inspect", "--raw", "--retry-times", "0", "--command-timeout", f"{PULL_TIMEOUT}s",
                   *_tls(r, "tls-verify"), f"docker://{target}"], ref, PULL_TIMEOUT + 5)
    try:
        return json.loads(raw), raw
    except ValueError:
        raise ImageError(f"cannot pull {ref!r}: the registry's manifest is not JSON") from None


def resolve(ref: str) -> tuple[str, dict]:
    """The digest of the manifest ``ref`` pulls on this host, and that manifest (an index is
    resolved to this host's architecture). Needs skopeo.

    Raises:
        ImageError: as :func:`pull`.
    """
    r = parse(ref)
    doc, raw = _manifest(ref, r, str(r))
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if r.digest and digest != r.digest:
        raise explain(ref, f"manifest digest did not match: asked for {r.digest}, got {digest}")
    if doc.get("manifests") is not None:  # an index (manifest list)
        desc = archive.pick_platform(doc["manifests"], ref)
        digest = desc["digest"]
        doc, raw = _manifest(ref, r, f"{r.repo}@{digest}")
        if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            raise explain(ref, f"manifest digest did not match: expected {digest}")
    if doc.get("schemaVersion") != 2 or "layers" not in doc:
        raise ImageError(f"cannot pull {ref!r}: the registry serves an old (schema 1) or unknown manifest; "
                         f"push it again with a current Docker or skopeo")
    return digest, doc


def _pull_skopeo(ref: str, r: Reference, name: str, progress: bool) -> store.Image:
    digest, doc = resolve(ref)
    total = sum(int(d.get("size") or 0) for d in [doc.get("config") or {}] + list(doc["layers"]))
    with faults.writing(store.root(), f"pulling {ref!r}", needed=total, at_least=True):
        return _copy_skopeo(ref, r, name, progress, digest, total)


def _copy_skopeo(ref: str, r: Reference, name: str, progress: bool, digest: str, total: int) -> store.Image:
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=store.root()))
    try:
        layout = tmp / "oci"
        argv = ["skopeo", "copy", "--quiet", "--retry-times", "0", *_tls(r, "src-tls-verify"),
                f"docker://{r.repo}@{digest}", f"oci:{layout}:image"]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = _watch(p, layout, total, ref, progress)
        if p.returncode:
            if faults.said_no_space(err):  # the store's disk, not the registry
                raise faults.no_space(store.root(), f"pulling {ref!r}", total, at_least=True)
            lines = err.decode(errors="replace").strip().splitlines()
            raise explain(ref, lines[-1] if lines else f"skopeo exited with {p.returncode}")
        return archive.import_archive(name, layout, source=f"pull:{r} ({digest}, skopeo)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _watch(p: subprocess.Popen, layout: Path, total: int, ref: str, progress: bool) -> bytes:
    """Wait for skopeo, with a progress bar of the bytes landed in ``layout``; kill it if the
    download stalls for :data:`PULL_TIMEOUT` seconds. Returns its stderr."""
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(p.stderr.read()), daemon=True)
    reader.start()
    bar = _bar(total, f"pull {ref}", progress)
    seen, last_change, start = 0, time.monotonic(), time.monotonic()
    try:
        while p.poll() is None:
            try:
                p.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
            now = _bytes_in(layout)
            if now != seen:
                bar.update(max(0, min(now, total) - min(seen, total)))
                seen, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > PULL_TIMEOUT or time.monotonic() - start > PULL_DEADLINE:
                p.kill()
                p.wait()
                reader.join(5)
                raise explain(ref, f"timed out: no byte arrived for {PULL_TIMEOUT} s")
        if p.returncode == 0:
            bar.update(max(0, total - min(seen, total)))
    finally:
        bar.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    reader.join(10)
    return b"".join(chunks)


def _bytes_in(d: Path) -> int:
    n = 0
    try:
        for f in d.rglob("*"):
            try:
                n += f.lstat().st_size if f.is_file() else 0
            except OSError:
                pass
    except OSError:
        pass
    return n


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=desc[:60],
                disable=not enabled, leave=True)


def _daemon_progress(bar, layers: dict, line: dict, status: str) -> None:
    """Advance ``bar`` from one line of the daemon's pull or push stream (per-layer current/total)."""
    detail = line.get("progressDetail") or {}
    if line.get("status") == status and detail.get("total"):
        layers[line.get("id", "")] = [min(detail.get("current", 0), detail["total"]), detail["total"]]
        bar.total = sum(t for _, t in layers.values())
        bar.n = sum(c for c, _ in layers.values())
        bar.refresh()


# -- the Docker daemon ---------------------------------------------------------------

def _pull_docker(ref: str, r: Reference, name: str, progress: bool) -> store.Image:
    import docker
    import requests

    try:
        client = engine.connect(timeout=PULL_TIMEOUT, error=ImageError)
    except ImageError as e:
        raise ImageError(f"cannot pull {ref!r}: no Docker daemon to pull with ({e}); or install skopeo") from None
    target = f"{r.repo}@{r.digest}" if r.digest else f"{r.repo}:{r.tag}"
    bar = _bar(0, f"pull {ref}", progress)
    layers: dict[str, list[int]] = {}
    try:
        for line in client.api.pull(r.repo, tag=r.digest or r.tag, stream=True, decode=True):
            if not isinstance(line, dict):
                continue
            if line.get("error"):
                raise explain(ref, line["error"])
            _daemon_progress(bar, layers, line, "Downloading")
    except docker.errors.APIError as e:
        raise explain(ref, str(e.explanation or e)) from None
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
        raise explain(ref, f"timed out: no answer within {PULL_TIMEOUT} s ({type(e).__name__})") from None
    finally:
        bar.close()
        client.close()
    return engine.import_docker(name, target, source=f"pull:{r} (docker)")


# -- the other way: push ---------------------------------------------------------------

def push(name: str, ref: str, progress: bool = True) -> str:
    """Push image ``name`` to ``ref`` (e.g. ``127.0.0.1:5000/demo/app:1``) through the Docker daemon.

    ``name`` is what the daemon calls it (an image :func:`kit.images.build` made keeps its
    layers and config) or else a kit image (handed to the daemon as one layer first).
    Returns the pushed manifest's digest (``sha256:...``).

    Raises:
        ImageError: no such image, no daemon, or the registry refused.
    """
    r = parse(ref)
    if r.digest:
        raise ImageError(f"cannot push to {ref!r}: a push names a tag, not a digest")
    with engine.connected(timeout=300, error=ImageError) as client:
        return _push(client, name, ref, r, progress)


def _push(client, name: str, ref: str, r: Reference, progress: bool) -> str:
    import docker

    try:
        client.api.inspect_image(name)
        src = name
    except docker.errors.ImageNotFound:
        src = engine.ensure_in_docker(client, store.get(name))
    client.api.tag(src, r.repo, r.tag)
    digest, layers = None, {}
    bar = _bar(0, f"push {ref}", progress)
    try:
        for line in client.api.push(r.repo, tag=r.tag, stream=True, decode=True):
            if line.get("error"):
                raise ImageError(f"cannot push {ref!r}: {' '.join(line['error'].split())[:300]}")
            digest = (line.get("aux") or {}).get("Digest") or digest
            _daemon_progress(bar, layers, line, "Pushing")
    except docker.errors.APIError as e:
        raise ImageError(f"cannot push {ref!r}: {' '.join(str(e.explanation or e).split())[:300]}") from None
    finally:
        bar.close()
    if not digest:
        raise ImageError(f"cannot push {ref!r}: the daemon reported no digest")
    return digest
