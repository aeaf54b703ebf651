"""Pulls from a real registry on loopback (Debian's docker-registry), filled by the daemon and skopeo.

Nothing comes from the internet: the images are built FROM the kit's busybox, handed to the local
daemon, and pushed to a registry this module starts on 127.0.0.1 and stops afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import socket
import stat
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

import kit
from kit._proc import wait_until
from kit.errors import ImageError, InvalidSpec, KitTimeout
from kit.images import engine, registry, store
from tests.conftest import need, unique

pull_mod = importlib.import_module("kit.images.pull")  # kit.images.pull is the function

MULTI = """\
FROM busybox
RUN mkdir -p /data/dir && echo one > /data/gone && echo keep > /data/keep && echo old > /data/dir/old
RUN rm /data/gone && rm -r /data/dir && mkdir /data/dir && echo new > /data/dir/new \\
 && ln -s /data/keep /data/link && cp /bin/busybox /usr/bin/suidbox && chmod 4755 /usr/bin/suidbox
ENV GREETING=hello
WORKDIR /data
ENTRYPOINT ["/bin/sh", "-c", "echo \\"$GREETING from $(pwd): $*\\"", "entry"]
CMD ["default-cmd"]
"""
BIG = "FROM busybox\nRUN head -c 3000000 /dev/urandom > /big\n"


def leftovers(timeout: float = 120) -> list[str]:
    """The store's temporary directories (a pull's, an import's) still there once those in flight have
    had ``timeout`` seconds to end: the store is shared, so another xdist worker's pull in progress shows
    one for a while (it failed a test once), while a failed pull's own would stay."""
    def found() -> list[str]:
        return [p.name for p in store.root().iterdir() if p.name.startswith((".import-", ".docker-save-", ".pull-"))]

    try:
        wait_until(lambda: not found(), timeout, interval=0.2, what="the store's temporary directories to go")
    except KitTimeout:
        pass
    return found()


def build(tmp: Path, text: str, tag: str) -> kit.images.Image:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "Dockerfile").write_text(text)
    return kit.images.build(tmp, tag=tag, stream=lambda line: None)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    r = registry.serve(storage=tmp_path_factory.mktemp("registry"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def pushed(reg, tmp_path_factory):
    """The multi-layer image, built by the daemon, pushed to the registry: (ref, manifest digest)."""
    tmp = tmp_path_factory.mktemp("ctx")
    tag = f"kit-test/multi:{unique('t')}"
    build(tmp / "multi", MULTI, tag)
    ref = f"{reg.address}/t/multi:1"
    digest = kit.images.push(tag, ref, progress=False)
    yield ref, digest
    store.remove(tag)


@pytest.fixture
def image_names():
    made: list[str] = []

    def new(ref: str | None = None) -> str:
        made.append(ref or unique("pulled"))
        return made[-1]

    yield new
    for name in made:
        if store.exists(name):
            store.remove(name)


def test_registry_starts_on_loopback_and_stops(tmp_path):
    r = registry.serve()
    try:
        assert r.address.startswith("127.0.0.1:") and r.running()
        assert "127.0.0.1:" in (r._dir / "config.yml").read_text()
    finally:
        r.stop()
    assert not r.running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", r.port), timeout=1).close()


def test_pull_brings_layers_whiteouts_links_setuid_and_config(pushed, image_names):
    ref, digest = pushed
    img = kit.images.pull(image_names(ref))
    root = img.rootfs
    assert len(img.layers) == 3 and all(lay["size"] > 0 and lay["digest"].startswith("sha256:") for lay in img.layers)
    assert not (root / "data/gone").exists()                          # a whiteout
    assert sorted(os.listdir(root / "data/dir")) == ["new"]           # an opaque directory
    assert os.readlink(root / "data/link") == "/data/keep"            # a symlink
    assert os.stat(root / "usr/bin/suidbox").st_mode & stat.S_ISUID   # setuid kept
    assert img.config["entrypoint"][:2] == ["/bin/sh", "-c"] and img.config["cmd"] == ["default-cmd"]
    assert img.config["env"]["GREETING"] == "hello" and img.config["workdir"] == "/data"
    table = kit.images.layers(ref)
    assert list(table["size_kib"]) == [round(lay["size"] / 1024, 1) for lay in img.layers]
    # By digest: the same content.
    assert kit.images.pull(f"{reg_of(ref)}/t/multi@{digest}", name=image_names()).id == img.id
    assert not leftovers()


def reg_of(ref: str) -> str:
    return ref.split("/", 1)[0]


def test_skopeo_and_the_daemon_give_the_same_content_id(pushed, image_names, docker_client):
    ref, _ = pushed
    a = kit.images.pull(ref, name=image_names(), via="skopeo", progress=False)
    engine._forget(docker_client, ref)  # the daemon pulls it back, not just re-tags what it had
    b = kit.images.pull(ref, name=image_names(), via="docker", progress=False)
    assert a.id == b.id
    assert b.config["cmd"] == ["default-cmd"] and b.config["workdir"] == "/data"


@pytest.fixture(scope="module")
def docker_client():
    need("docker")
    with engine.connected() as client:
        yield client


@pytest.mark.parametrize("runtime", ["runc", "docker"])
def test_run_pulls_on_first_use_and_honours_the_image_config(pushed, reg, runtime, image_names):
    need(runtime)
    ref = image_names(f"{reg.address}/t/multi:1")
    if store.exists(ref):
        store.remove(ref)
    r = kit.run(ref, None, runtime=runtime, check=True)            # entrypoint + cmd, env, workdir
    assert r.stdout.strip() == "hello from /data: default-cmd"
    r = kit.run(ref, ["given", "args"], runtime=runtime, check=True)  # entrypoint + the command
    assert r.stdout.strip() == "hello from /data: given args"


def test_magic_run_pulls_and_runs(pushed, ip, image_names, capsys):
    ref = image_names(pushed[0])
    if store.exists(ref):
        store.remove(ref)
    r = ip.run_line_magic("container", f"run -r runc {ref} from-magic")
    assert r.exit_code == 0 and r.stdout.strip() == "hello from /data: from-magic"
    assert store.exists(ref)


# -- failures: one line, nothing stored, a retry works -----------------------------------

def test_missing_tag_says_so(reg, pushed, image_names):
    name = image_names()
    for via in ("skopeo", "docker"):
        with pytest.raises(ImageError, match="has no such image or tag") as e:
            kit.images.pull(f"{reg.address}/t/multi:nope", name=name, via=via, progress=False)
        assert "\n" not in str(e.value)
    assert not store.exists(name) and not leftovers()


def oci_layout(d: Path, arch: str, index: bool) -> None:
    """A one-layer image for ``arch`` as an OCI layout; with ``index``, wrapped in an image index."""
    blobs = d / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media: str, **extra) -> dict:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{h}", "size": len(data), **extra}

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        ti = tarfile.TarInfo("hello.txt")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"hi\n"))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    cfg = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/hello.txt"]},
           "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]}}
    c = put(json.dumps(cfg).encode(), "application/vnd.oci.image.config.v1+json")
    lay = put(layer, "application/vnd.oci.image.layer.v1.tar+gzip")
    m = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": c, "layers": [lay]}).encode(), "application/vnd.oci.image.manifest.v1+json",
            platform={"architecture": arch, "os": "linux"})
    top = m
    if index:
        top = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                              "manifests": [m]}).encode(), "application/vnd.oci.image.index.v1+json")
    top = {k: v for k, v in top.items() if k != "platform"}
    top["annotations"] = {"org.opencontainers.image.ref.name": "x"}
    (d / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def skopeo_push(layout: Path, ref: str) -> None:
    subprocess.run(["skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:x",
                    f"docker://{ref}"], check=True, capture_output=True)


@pytest.mark.parametrize("index", [True, False], ids=["index", "manifest"])
def test_another_architecture_only_is_refused(reg, tmp_path, image_names, index):
    oci_layout(tmp_path / "arm", "arm64", index=index)
    ref = f"{reg.address}/t/arm-{'index' if index else 'single'}:1"
    skopeo_push(tmp_path / "arm", ref)
    name = image_names()
    with pytest.raises(ImageError, match="has no linux/amd64 image, only linux/arm64|is a linux/arm64 image") as e:
        kit.images.pull(ref, name=name, progress=False)
    assert "\n" not in str(e.value) and not store.exists(name) and not leftovers()


def test_digest_mismatch_is_refused_and_a_retry_works(reg, tmp_path, image_names):
    oci_layout(tmp_path / "amd", "amd64", index=False)
    ref = f"{reg.address}/t/small:1"
    skopeo_push(tmp_path / "amd", ref)
    _, doc = pull_mod.resolve(ref)
    hexd = doc["layers"][0]["digest"].split(":", 1)[1]
    blob = reg.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    good = blob.read_bytes()
    blob.write_bytes(good[:-8] + bytes(8))  # same size, other bytes
    name = image_names()
    try:
        with pytest.raises(ImageError, match="digest does not match") as e:
            kit.images.pull(ref, name=name, progress=False)
        assert "\n" not in str(e.value) and not store.exists(name) and not leftovers()
    finally:
        blob.write_bytes(good)
    assert (kit.images.pull(ref, name=name, progress=False).rootfs / "hello.txt").read_text() == "hi\n"


class KillingProxy:
    """127.0.0.1:port -> the registry; once ``armed`` and ``after`` bytes went to clients,
    the registry is SIGKILLed and every connection cut (a registry gone mid-pull)."""

    def __init__(self, reg, after: int):
        self.reg, self.after, self.armed, self.sent = reg, after, True, 0
        self.killed = threading.Event()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.reg.port))
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pump(self, src, dst, down):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if down:
                    self.sent += len(data)
                    if self.armed and self.sent > self.after and not self.killed.is_set():
                        self.reg.kill()
                        self.killed.set()
                        for s in self.socks:
                            s.close()
                        return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.srv.close()
        for s in self.socks:
            s.close()


def test_registry_killed_mid_pull_and_a_retry_works(reg, tmp_path, image_names):
    tag = f"kit-test/big:{unique('t')}"
    build(tmp_path / "big", BIG, tag)
    try:
        kit.images.push(tag, f"{reg.address}/t/big:1", progress=False)
    finally:
        store.remove(tag)
    proxy = KillingProxy(reg, after=1_000_000)
    ref, name = f"127.0.0.1:{proxy.port}/t/big:1", image_names()
    try:
        t0 = time.monotonic()
        with pytest.raises(ImageError, match="went away mid-pull|reachable") as e:
            kit.images.pull(ref, name=name, progress=False)
        assert proxy.killed.is_set() and time.monotonic() - t0 < 30
        assert "\n" not in str(e.value) and not store.exists(name) and not leftovers()
        proxy.armed = False
        reg.start()
        img = kit.images.pull(ref, name=name, progress=False)
        assert (img.rootfs / "big").stat().st_size == 3_000_000
    finally:
        proxy.close()
        reg.start()


def test_names_read_as_docker_reads_them():
    p = pull_mod.parse
    assert str(p("redis:7")) == "docker.io/library/redis:7"
    assert str(p("me/app")) == "docker.io/me/app:latest"
    assert str(p("127.0.0.1:5000/demo/app:1")) == "127.0.0.1:5000/demo/app:1"
    assert p("localhost/app").registry == "localhost" and p("127.0.0.1:5000/a").loopback
    with pytest.raises(ImageError, match="is not an image reference"):
        p("-rf /")


def test_no_command_runs_the_image_cmd_or_says_there_is_none(tmp_path, image_names):
    r = kit.run("busybox", None, runtime="runc", check=True)   # busybox's Cmd is sh: no stdin, exits 0
    assert r.command == ["sh"]
    for command in (None, []):
        with pytest.raises(InvalidSpec, match="no command given"):
            kit.run(None, command, runtime="process")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare/only").write_text("no command here\n")
    bare = kit.images.import_dir(image_names(), tmp_path / "bare")  # no config: no Cmd
    with pytest.raises(InvalidSpec, match="names none"):
        kit.run(bare.name, [], runtime="runc")
