"""Images and container engines: the local Docker daemon (and Podman).

The kit hands an engine its images as ``docker import``-ed copies of the same
root filesystem every other runtime runs, tagged ``kit/<name>:<short id>``, so
the same bytes run everywhere and nothing is pulled during a run. The other
way round, :func:`import_docker` brings an image the daemon already has into
the store, and :func:`pull` fetches one from a registry when the host can
reach one.

>>> import kit
>>> kit.images.import_docker("alpine", "alpine:3.19")   # the daemon has it
>>> kit.images.pull("redis:7")                          # needs a reachable registry
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ..errors import ImageError, KitError, RuntimeUnavailable
from . import archive, store

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
#: Seconds a registry may stay silent before a pull is given up.
PULL_TIMEOUT = 15
_clients: dict[float | None, object] = {}
_lock = threading.Lock()
#: One import per tag at a time: threads starting their first container of an image at once
#: wait for one ``docker import`` instead of racing (a failed one would untag the other's image).
_import_locks: dict[str, threading.Lock] = {}
#: Phrases of a registry that cannot be reached at all (as opposed to one that said no).
_UNREACHABLE = ("no such host", "dial tcp", "i/o timeout", "connection refused", "network is unreachable",
                "tls handshake timeout", "client.timeout", "timed out", "temporary failure in name resolution",
                "read timed out", "no route to host")


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def daemon_unreachable() -> str:
    return f"no Docker daemon answers at {docker_host()}: start it with 'make setup' or 'dockerd &'"


def docker_client(timeout: float | None = 60, error: type[KitError] = RuntimeUnavailable):
    """A cached ``docker`` SDK client for the local daemon, with ``timeout`` on every call.

    Raises:
        ``error``: the SDK is missing or no daemon answers (with what to do).
    """
    with _lock:
        if timeout in _clients:
            return _clients[timeout]
    try:
        import docker
    except ImportError:
        raise error("the docker Python SDK is not installed: pip install docker (or run 'make setup')") from None
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException:
        raise error(daemon_unreachable()) from None
    with _lock:
        # Two threads may both have made one: every caller gets the first (the other is dropped).
        return _clients.setdefault(timeout, client)


def engine_ref(image: store.Image) -> str:
    """The tag an engine knows ``image`` by: ``kit/<name>:<short id>`` (content-addressed)."""
    repo = re.sub(r"[^a-z0-9._-]+", "-", image.name.lower()).strip("-._") or "image"
    return f"kit/{repo}:{image.short_id}"


def engine_labels(image: store.Image) -> dict[str, str]:
    return {"kit.managed": "1", "kit.image": image.id, "kit.image.name": image.name}


def ensure_in_docker(client, image: store.Image) -> str:
    """Make sure the daemon has ``image`` (``docker import`` of its rootfs); return its tag.

    Reused when the tag is already there: the tag carries the content id.
    """
    import docker

    ref = engine_ref(image)
    try:
        client.api.inspect_image(ref)
        return ref
    except docker.errors.ImageNotFound:
        pass
    with _lock:
        lock = _import_locks.setdefault(ref, threading.Lock())
    with lock:
        try:
            client.api.inspect_image(ref)  # another thread imported it while this one waited
            return ref
        except docker.errors.ImageNotFound:
            return _import(client, image, ref)


def _import(client, image: store.Image, ref: str) -> str:
    import docker

    repo, tag = ref.rsplit(":", 1)
    tar = archive.pack(image.rootfs)
    changes = [f"LABEL {k}={v}" for k, v in engine_labels(image).items()]
    try:
        # A generator makes requests send the tar chunked, as it is produced.
        client.api.import_image(src=iter(lambda: tar.stdout.read(1 << 20), b""), repository=repo, tag=tag,
                                changes=changes, stream_src=True)
    except docker.errors.APIError as e:
        raise ImageError(f"the Docker daemon refused image {image.name!r}: {e.explanation or e}") from None
    finally:
        tar.stdout.close()
        err = tar.stderr.read()
        tar.stderr.close()
        code = tar.wait(60)
    if code:
        _forget(client, ref)
        raise ImageError(f"could not pack image {image.name!r} for Docker: {err.decode(errors='replace').strip()[-300:]}")
    try:
        client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        raise ImageError(f"the Docker daemon did not store image {image.name!r} as {ref}; see its log") from None
    return ref


def _forget(client, ref: str) -> None:
    try:
        client.api.remove_image(ref, force=True)
    except Exception:  # nothing was stored, or it is gone already
        pass


def import_docker(name: str, ref: str | None = None) -> store.Image:
    """Store the image the local Docker daemon knows as ``ref`` (``docker save`` of it) as ``name``.

    Args:
        name: the name in the kit's store.
        ref: the daemon's name for it (default: ``name``), e.g. ``"alpine:3.19"``.

    Raises:
        ImageError: no daemon, or the daemon has no such image.
    """
    import docker

    ref = ref or name
    client = docker_client(timeout=300, error=ImageError)
    try:
        client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        raise ImageError(f"the Docker daemon has no image {ref!r}: 'docker images' lists what it has; "
                         f"pull it with kit.images.pull({ref!r}) or build one with kit.images.debian()") from None
    tmp = Path(tempfile.mkdtemp(prefix=".docker-save-", dir=store.root()))
    try:
        saved = tmp / "image.tar"
        with open(saved, "wb") as f:
            for chunk in client.api.get_image(ref, chunk_size=1 << 20):
                f.write(chunk)
        from .archive import import_archive

        return import_archive(name, saved, source=f"docker:{ref}")
    except docker.errors.APIError as e:
        raise ImageError(f"the Docker daemon could not save {ref!r}: {e.explanation or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pull(ref: str, name: str | None = None) -> store.Image:
    """Pull ``ref`` from its registry (through skopeo if installed, else the Docker daemon) and store it.

    Fails within about :data:`PULL_TIMEOUT` seconds when no registry answers.

    Args:
        ref: e.g. ``"redis:7"`` or ``"ghcr.io/org/app:1.2"``.
        name: the name in the kit's store (default: ``ref``).

    Raises:
        ImageError: no registry reachable, the registry refused, or no way to pull at all.
    """
    name = name or ref
    if shutil.which("skopeo"):
        return _pull_skopeo(ref, name)
    return _pull_docker(ref, name)


def _no_registry(ref: str, detail: str) -> ImageError:
    if any(p in detail.lower() for p in _UNREACHABLE):
        return ImageError(
            f"cannot pull {ref!r}: no image registry is reachable from this host ({detail.strip()[:200]}); "
            f"build the image instead with kit.images.debian(name, packages=[...]), or bring it as a file "
            f"with kit.images.import_tar()/import_archive(), or from a local daemon with kit.images.import_docker()"
        )
    return ImageError(f"cannot pull {ref!r}: the registry said: {detail.strip()[:300]}; check the name and tag")


def _pull_skopeo(ref: str, name: str) -> store.Image:
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=store.root()))
    try:
        dest = tmp / "image.tar"
        src = ref if "://" in ref else f"docker://{ref if '/' in ref.split(':')[0] else 'docker.io/library/' + ref}"
        argv = ["skopeo", "copy", "--retry-times", "0", "--command-timeout", f"{PULL_TIMEOUT * 20}s",
                src, f"oci-archive:{dest}"]
        try:
            p = subprocess.run(argv, capture_output=True, timeout=PULL_TIMEOUT * 20)
        except subprocess.TimeoutExpired:
            raise _no_registry(ref, f"skopeo timed out after {PULL_TIMEOUT * 20} s") from None
        if p.returncode:
            lines = p.stderr.decode(errors="replace").strip().splitlines()
            raise _no_registry(ref, lines[-1] if lines else f"skopeo exited with {p.returncode}")
        from .archive import import_archive

        return import_archive(name, dest, source=f"pull:{ref} (skopeo)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pull_docker(ref: str, name: str) -> store.Image:
    import docker
    import requests

    try:
        client = docker_client(timeout=PULL_TIMEOUT, error=ImageError)
    except ImageError as e:
        raise ImageError(f"cannot pull {ref!r}: neither skopeo (apt-get install skopeo) nor a Docker daemon "
                         f"is here to pull with ({e})") from None
    repo, tag = _split_ref(ref)
    try:
        for line in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if isinstance(line, dict) and line.get("error"):
                raise _no_registry(ref, line["error"])
    except docker.errors.APIError as e:
        raise _no_registry(ref, str(e.explanation or e)) from None
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
        raise _no_registry(ref, f"timed out: no answer within {PULL_TIMEOUT} s ({type(e).__name__})") from None
    return import_docker(name, f"{repo}:{tag}")


def _split_ref(ref: str) -> tuple[str, str]:
    """``redis:7`` -> (``redis``, ``7``); a registry's port is not a tag."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return repo, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"
