"""A private image registry on loopback: Debian's ``docker-registry`` (CNCF Distribution).

For notebooks and tests that show a pull without the internet: start one, push
an image into it (``kit.images.push``), pull it back by name.

>>> import kit
>>> with kit.images.registry.serve() as reg:          # 127.0.0.1:<free port>
...     kit.images.push("busybox", f"{reg.address}/demo/busybox:1")
...     kit.images.pull(f"{reg.address}/demo/busybox:1")

It listens on 127.0.0.1 only, keeps its blobs in ``storage`` (a temporary
directory unless given) and stops with :meth:`Registry.stop` or the ``with``
block. Docker and skopeo treat 127.0.0.0/8 registries as insecure (plain HTTP)
by default, so nothing needs configuring.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from ..errors import ImageError, KitTimeout
from ..net import free_port, wait_until

BINARY = "docker-registry"
START_TIMEOUT = 15


class Registry:
    """A running ``docker-registry serve`` on 127.0.0.1.

    Attributes:
        address: ``127.0.0.1:PORT``, the registry part of image references.
        storage: the directory its blobs and manifests are kept in.
        process: the ``docker-registry`` process.
    """

    def __init__(self, port: int, storage: Path, workdir: Path, owns_storage: bool):
        self.port, self.storage, self._dir, self._owns = port, storage, workdir, owns_storage
        self.address = f"127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> "Registry":
        """Start (or restart, on the same port and storage) and wait until it answers."""
        if self.running():
            return self
        log = open(self._dir / "registry.log", "ab")
        try:
            self.process = subprocess.Popen([_binary(), "serve", str(self._dir / "config.yml")],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            wait_until(lambda: self._answers() or self.process.poll() is not None, timeout=START_TIMEOUT,
                       interval=0.05, what="the registry")
        except KitTimeout:
            pass
        if self.process.poll() is not None or not self._answers():
            tail = self.log()[-300:].strip().replace("\n", " | ")
            self.kill()
            raise ImageError(f"the registry did not start on {self.address}: {tail or 'no output'}")
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return (self._dir / "registry.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a registry that goes away mid-pull; :meth:`start` brings it back."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """Stop it and delete what it stored (when the storage was its own)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._owns:
            shutil.rmtree(self.storage, ignore_errors=True)

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Registry {self.address} {'running' if self.running() else 'stopped'}>"


def _binary() -> str:
    exe = shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None)
    if not exe:
        raise ImageError("docker-registry is not installed: apt-get install docker-registry (or run 'make setup')")
    return exe


def config_text(port: int, storage: Path) -> str:
    """The registry's config: filesystem storage, plain HTTP on 127.0.0.1:PORT, deletes allowed."""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )


def serve(port: int | None = None, storage: str | Path | None = None) -> Registry:
    """Start a registry on ``127.0.0.1:port`` (a free one by default); stop it with ``.stop()``.

    Args:
        port: the port; None picks a free one.
        storage: where blobs go; None makes a temporary directory, deleted on stop.

    Raises:
        ImageError: docker-registry is missing, or it did not start (with its last log line).
    """
    _binary()
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="kit-registry-"))
    owns = storage is None
    storage = Path(storage) if storage is not None else workdir.with_name(workdir.name + "-storage")
    storage.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yml").write_text(config_text(port, storage))
    reg = Registry(port, storage, workdir, owns)
    try:
        return reg.start()
    except BaseException:
        reg.stop()
        raise
