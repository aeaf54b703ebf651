"""Images and container engines: the local Docker daemon (and Podman).

The kit hands an engine its images as ``docker import``-ed copies of the same
root filesystem every other runtime runs, tagged ``kit/<name>:<short id>``, so
the same bytes run everywhere and nothing is pulled during a run. The other
way round, :func:`import_docker` brings an image the daemon already has into
the store (:mod:`.pull` fetches one from a registry through it or skopeo,
:mod:`.build` builds one from a Dockerfile with it).

>>> import kit
>>> kit.images.import_docker("alpine", "alpine:3.19")   # the daemon has it
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import types
from contextlib import contextmanager
from pathlib import Path

from .. import faults, userns
from ..errors import DaemonUnavailable, ImageError, KitError
from . import archive, store

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_lock = threading.Lock()
#: One import per tag at a time: threads starting their first container of an image at once
#: wait for one ``docker import`` instead of racing (a failed one would untag the other's image).
_import_locks: dict[str, threading.Lock] = {}


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def daemon_unreachable() -> str:
    """Why no Docker daemon answers, and what to do: this user's access to its socket, else start one."""
    return docker_socket_reason(docker_host()) or \
        f"docker: daemon not answering at {docker_host()}: start it (scripts/ensure-dockerd, 'make setup' or " \
        f"'dockerd &') and retry"


def docker_socket_reason(host: str) -> str:
    """Why this user cannot reach the Docker daemon at ``host`` (a unix:// URL), or ""."""
    if not host.startswith("unix://"):
        return ""
    sock = host[len("unix://"):]
    try:
        st = os.stat(sock)
    except FileNotFoundError:
        return ""
    except PermissionError:
        return f"permission denied on the directory of {sock}: set DOCKER_HOST to a daemon this user can reach"
    if not stat.S_ISSOCK(st.st_mode) or os.access(sock, os.R_OK | os.W_OK):
        return ""
    group = userns.group_name(st.st_gid)
    how = f"add your user to the {group} group (then log in again)" if group != "root" else \
        "ask for access to it"
    return f"permission denied on {sock}: {how} or set DOCKER_HOST to a rootless daemon"


def daemon_down() -> DaemonUnavailable:
    """The one line for a daemon that stopped answering mid-session (its client was made while it did)."""
    return DaemonUnavailable(f"{daemon_unreachable()}; instances of other runtimes are unaffected")


def daemon_answers(timeout: float = 2.0) -> bool:
    """Whether the daemon at a ``unix://`` ``DOCKER_HOST`` answers ``GET /_ping`` now (another host: assumed so)."""
    host = docker_host()
    if not host.startswith("unix://"):
        return True
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(host[len("unix://"):])
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


@contextmanager
def answering():
    """Say a transport failure of the Docker SDK (``requests``' ConnectionError, a stream cut mid-way) as
    :class:`~kit.errors.DaemonUnavailable` when the daemon does not answer any more; anything else passes
    (a read timeout is a deadline the caller set, and a daemon that answers again raised something else)."""
    import requests

    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
        if daemon_answers():
            raise
        raise daemon_down() from None


class _Answering:
    """The SDK's low-level API (``client.api``) with every call under :func:`answering`, streams too:
    the one place a daemon that stops answering mid-session becomes one line."""

    def __init__(self, api):
        self._api = api

    def __getattr__(self, name: str):
        attr = getattr(self._api, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args, **kwargs):
            with answering():
                out = attr(*args, **kwargs)
            return _answering_stream(out) if isinstance(out, types.GeneratorType) else out

        return call


def _answering_stream(gen):
    with answering():
        yield from gen


def connect(timeout: float | None = 60, error: type[KitError] = DaemonUnavailable, version: str | None = None):
    """A new ``docker`` SDK client (``docker.DockerClient``) for the local daemon (``DOCKER_HOST``), with
    ``timeout`` on every call and, if given, a pinned API ``version``: the one way the kit reaches Docker.
    Its owner closes it: a :class:`kit.Session` owns one (``session.docker``), which its instances' runtime
    gets through their context; what has no session (a probe, a sweep, a pull) uses :func:`connected`.
    A daemon that stops answering later makes its calls raise :class:`~kit.errors.DaemonUnavailable`.

    Raises:
        ``error``: the SDK is missing or no daemon answers (with what to do).
    """
    try:
        import docker
    except ImportError:
        raise error("the docker Python SDK is not installed: pip install docker (or run 'make setup')") from None
    try:
        client = docker.from_env(timeout=timeout, version=version)
    except docker.errors.DockerException:
        raise error(daemon_unreachable()) from None
    client.api = _Answering(client.api)  # the models (client.containers...) call through it too
    return client


@contextmanager
def connected(timeout: float | None = 60, error: type[KitError] = DaemonUnavailable, version: str | None = None):
    """:func:`connect` for the length of a ``with`` block, closed after it."""
    client = connect(timeout, error, version)
    try:
        yield client
    finally:
        client.close()


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


def import_docker(name: str, ref: str | None = None, source: str | None = None) -> store.Image:
    """Store the image the local Docker daemon knows as ``ref`` (``docker save`` of it) as ``name``.

    Args:
        name: the name in the kit's store.
        ref: the daemon's name for it (default: ``name``), e.g. ``"alpine:3.19"``.
        source: where it came from, as recorded (default ``docker:<ref>``).

    Raises:
        ImageError: no daemon, or the daemon has no such image.
    """
    import docker

    ref = ref or name
    with connected(timeout=300, error=ImageError) as client:
        try:
            size = int(client.api.inspect_image(ref).get("Size") or 0)
        except docker.errors.ImageNotFound:
            raise ImageError(f"the Docker daemon has no image {ref!r}: 'docker images' lists what it has; "
                             f"pull it with kit.images.pull({ref!r}) or build one with kit.images.debian()") from None
        # 'docker save' lands beside the store, then its layers are unpacked into it: twice its size.
        with faults.writing(store.root(), f"storing image {name!r}", needed=2 * size or None):
            return _save_and_import(client, name, ref, source)


def _save_and_import(client, name: str, ref: str, source: str | None) -> store.Image:
    import docker

    tmp = Path(tempfile.mkdtemp(prefix=".docker-save-", dir=store.root()))
    try:
        saved = tmp / "image.tar"
        with open(saved, "wb") as f:
            for chunk in client.api.get_image(ref, chunk_size=1 << 20):
                f.write(chunk)
        return archive.import_archive(name, saved, source=source or f"docker:{ref}")
    except docker.errors.APIError as e:
        raise ImageError(f"the Docker daemon could not save {ref!r}: {e.explanation or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
