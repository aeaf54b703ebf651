"""Image import, build and pull: tar / directory / docker save / OCI archives, debootstrap, registries."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import secrets
import tarfile
import time
from pathlib import Path

import pytest

import kit
from kit.errors import ImageError
from kit.images import archive, engine, store
from tests.conftest import need

debian_mod = importlib.import_module("kit.images.debian")  # kit.images.debian is the function


@pytest.fixture
def image_names():
    """Unique image names, forgotten (and their files removed unless shared) afterwards."""
    made: list[str] = []

    def new(prefix="it") -> str:
        made.append(f"{prefix}-{secrets.token_hex(3)}")
        return made[-1]

    yield new
    for name in made:
        if store.exists(name):
            store.remove(name)


@pytest.fixture(scope="module")
def busybox():
    return kit.images.get("busybox")


def leftovers() -> list[str]:
    return [p.name for p in store.root().iterdir() if p.name.startswith((".import-", ".docker-save-", ".pull-"))]


# -- hand-made archives ----------------------------------------------------------

def make_tar(entries, gz: bool = False) -> bytes:
    """entries: (name, "dir" | "file" | "symlink" | "link", data-or-target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(ti)
            elif kind == "file":
                ti.size, ti.mode = len(data), 0o644
                tar.addfile(ti, io.BytesIO(data))
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tar.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
                tar.addfile(ti)
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LOWER = [("a", "dir", None), ("a/keep", "file", b"k"), ("a/gone", "file", b"g"), ("d", "dir", None),
         ("d/x", "file", b"x"), ("d/sub", "dir", None), ("d/sub/y", "file", b"y"), ("top", "file", b"t")]
# z comes before the opaque marker: a marker hides the lower layers only, never its own layer.
UPPER = [("a/.wh.gone", "file", b""), ("d", "dir", None), ("d/z", "file", b"z"),
         ("d/.wh..wh..opq", "file", b""), (".wh.top", "file", b"")]
IMAGE_CONFIG = {"Env": ["A=1", "PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/srv"}


def docker_save_archive(path: Path, layers: list[bytes]) -> Path:
    cfg = json.dumps({"config": IMAGE_CONFIG, "rootfs": {"type": "layers",
                                                         "diff_ids": [sha(l) for l in layers]}}).encode()
    files = [("cfg.json", cfg), ("manifest.json", json.dumps([{
        "Config": "cfg.json", "RepoTags": ["hand:made"], "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]
    }]).encode())] + [(f"l{i}/layer.tar", l) for i, l in enumerate(layers)]
    path.write_bytes(make_tar([(n, "file", d) for n, d in files]))
    return path


def oci_archive(path: Path, layers: list[bytes]) -> Path:
    blobs = {}

    def blob(data: bytes, media: str) -> dict:
        blobs[f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"] = data
        return {"mediaType": media, "digest": sha(data), "size": len(data)}

    cfg = blob(json.dumps({"config": IMAGE_CONFIG, "rootfs": {"type": "layers", "diff_ids": []}}).encode(),
               "application/vnd.oci.image.config.v1+json")
    descs = [blob(gzip.compress(l, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip") for l in layers]
    manifest = blob(json.dumps({"schemaVersion": 2, "config": cfg, "layers": descs}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    manifest["platform"] = {"os": "linux", "architecture": "amd64"}
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
             ("index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode()), *blobs.items()]
    path.write_bytes(make_tar([(n, "file", d) for n, d in files]))
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- import from a directory or a tar --------------------------------------------

def test_import_tar_round_trip_gets_the_same_id(busybox, image_names, tmp_path):
    tar_path = archive.pack(busybox.rootfs, tmp_path / "bb.tar")
    assert kit.images.import_tar(image_names(), tar_path).id == busybox.id
    gz = tmp_path / "bb.tar.gz"
    gz.write_bytes(gzip.compress(tar_path.read_bytes()))
    with open(gz, "rb") as stream:  # a stream, not a path: read once, front to back
        assert kit.images.import_tar(image_names(), stream).id == busybox.id
    assert not leftovers()


def test_import_dir_gets_the_same_id(busybox, image_names):
    img = kit.images.import_dir(image_names(), busybox.rootfs)
    assert img.id == busybox.id and busybox.rootfs.is_dir()  # a copy: the source stays


def test_import_dir_refuses_a_file(tmp_path, image_names):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ImageError, match="not a directory"):
        kit.images.import_dir(image_names(), f)


def test_imported_tar_keeps_modes_symlinks_and_devices(tmp_path, image_names):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/tool").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "bin/tool", 1000, 1000)  # before chmod: chown clears set-uid
    os.chmod(src / "bin/tool", 0o4755)
    os.symlink("/bin/tool", src / "link")
    (src / "dev").mkdir()
    os.mknod(src / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    img = kit.images.import_tar(image_names(), archive.pack(src, tmp_path / "t.tar"))
    st = os.lstat(img.rootfs / "bin/tool")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o4755, 1000, 1000)
    assert os.readlink(img.rootfs / "link") == "/bin/tool"
    assert os.stat(img.rootfs / "dev/null").st_rdev == os.makedev(1, 3)
    assert img.id == store.tree_digest(src)[0]


@pytest.mark.parametrize("entries, why", [
    ([("../evil", "file", b"x")], "climbs out"),
    ([("ok/../../evil", "file", b"x")], "climbs out"),
    ([("/tmp/kit-test-evil-abs", "file", b"x")], "absolute path"),
    ([("esc", "symlink", "/tmp"), ("esc/kit-test-evil-sym", "file", b"x")], "through the symlink"),
    ([("hl", "link", "../../etc/hostname")], "climbs out"),
])
def test_malicious_members_are_refused(entries, why, tmp_path, image_names):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(make_tar(entries))
    with pytest.raises(ImageError, match=why):
        kit.images.import_tar(image_names(), bad)
    assert not Path("/tmp/kit-test-evil-abs").exists() and not Path("/tmp/kit-test-evil-sym").exists()
    assert not (store.root() / "evil").exists() and not leftovers()


def test_garbage_is_not_a_tar(tmp_path, image_names):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(ImageError, match="cannot read tar archive"):
        kit.images.import_tar(image_names(), junk)


# -- layered archives -------------------------------------------------------------

@pytest.mark.parametrize("make", [docker_save_archive, oci_archive], ids=["docker-save", "oci"])
def test_layers_apply_in_order_with_whiteouts(make, tmp_path, image_names):
    layers = [make_tar(LOWER), make_tar(UPPER)]
    img = kit.images.import_archive(image_names(), make(tmp_path / "img.tar", layers))
    assert tree(img.rootfs) == ["a", "a/keep", "d", "d/z"]
    assert (img.rootfs / "d/z").read_bytes() == b"z"
    assert len(img.layers) == 2 and all(l["digest"].startswith("sha256:") and l["size"] > 0 for l in img.layers)
    if make is docker_save_archive:  # the uncompressed diff ids
        assert [l["digest"] for l in img.layers] == [sha(l) for l in layers]
    else:  # the compressed blobs' digests
        assert [l["digest"] for l in img.layers] == [sha(gzip.compress(l, mtime=0)) for l in layers]
    assert img.config["env"] == {"A": "1", "PATH": "/bin"}
    assert img.config["cmd"] == ["sh"] and img.config["workdir"] == "/srv"


def test_upper_layer_replaces_a_symlink_instead_of_writing_through_it(tmp_path, image_names):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    layers = [make_tar([("f", "symlink", str(victim))]), make_tar([("f", "file", b"new")])]
    img = kit.images.import_archive(image_names(), docker_save_archive(tmp_path / "img.tar", layers))
    assert victim.read_text() == "untouched"
    assert (img.rootfs / "f").read_bytes() == b"new" and not (img.rootfs / "f").is_symlink()


def test_an_archive_without_a_manifest_is_refused(tmp_path, image_names):
    plain = tmp_path / "plain.tar"
    plain.write_bytes(make_tar([("etc", "dir", None)]))
    with pytest.raises(ImageError, match="neither manifest.json nor index.json"):
        kit.images.import_archive(image_names(), plain)


# -- the Docker daemon ----------------------------------------------------------

@pytest.fixture(scope="module")
def docker_client():
    need("docker")
    with engine.connected() as client:
        yield client


def test_docker_save_of_the_kit_image_imports_to_the_same_content(busybox, docker_client, image_names, tmp_path):
    ref = engine.ensure_in_docker(docker_client, busybox)
    saved = tmp_path / "saved.tar"
    with open(saved, "wb") as f:
        for chunk in docker_client.api.get_image(ref):
            f.write(chunk)
    img = kit.images.import_archive(image_names(), saved)
    assert img.id == busybox.id
    assert tree(img.rootfs) == tree(busybox.rootfs)


def test_import_docker_takes_what_the_daemon_has(busybox, docker_client, image_names):
    ref = engine.ensure_in_docker(docker_client, busybox)
    assert kit.images.import_docker(image_names(), ref).id == busybox.id
    assert not leftovers()


def test_import_docker_of_an_unknown_image_says_so(docker_client, image_names):
    with pytest.raises(ImageError, match="has no image 'kit/no-such-image:0'"):
        kit.images.import_docker(image_names(), "kit/no-such-image:0")


def test_pull_fails_fast_and_plainly_without_a_registry(image_names):
    t0 = time.monotonic()
    with pytest.raises(ImageError, match="no image registry is reachable from this host") as e:
        kit.images.pull("redis:7", name=image_names())
    assert time.monotonic() - t0 < 20
    assert "kit.images.debian" in str(e.value) and "import_tar" in str(e.value)
    assert not leftovers()


# -- debootstrap ----------------------------------------------------------------

def test_debian_refuses_a_bad_package_name(image_names):
    with pytest.raises(ImageError, match="not a Debian package name"):
        kit.images.debian(image_names(), packages=["redis-server; rm -rf /"])


def test_debian_failure_says_why_and_leaves_nothing(image_names):
    name = image_names()
    with pytest.raises(ImageError, match="No such script"):
        kit.images.debian(name, suite="nosuchsuite")
    assert not store.exists(name)
    assert not [p for p in store.root().iterdir() if p.name.startswith(f".debootstrap-{name}-")]


def test_debian_without_debootstrap_says_how_to_install(image_names, monkeypatch):
    monkeypatch.setattr(debian_mod, "_debootstrap", lambda: None)
    with pytest.raises(ImageError, match="apt-get install debootstrap"):
        kit.images.debian(image_names(), packages=["redis-server"])


@pytest.mark.slow
def test_debian_redis_is_built_once_then_cached():
    # Kept in the store on purpose: the VM and services work use this image.
    img = kit.images.debian("debian-redis", packages=["redis-server"])
    assert (img.rootfs / "usr/bin/redis-server").exists()
    assert img.config["recipe"]["packages"] == ["redis-server"] and img.config["recipe"]["suite"] == "bookworm"
    assert not list((img.rootfs / "var/cache/apt/archives").glob("*.deb"))
    t0 = time.monotonic()
    again = kit.images.debian("debian-redis", packages=["redis-server"])
    assert time.monotonic() - t0 < 2 and again.id == img.id


@pytest.mark.slow
def test_debian_redis_runs_under_docker(docker_client):
    kit.images.debian("debian-redis", packages=["redis-server"])
    r = kit.run("debian-redis", ["redis-server", "--version"], runtime="docker", name=f"it-{secrets.token_hex(3)}")
    assert r.exit_code == 0 and r.stdout.startswith("Redis server v=7")


# -- the Debian mirror: the host's apt sources, a setting, an argument ----------------

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.net/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.net/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src-only.example.net/debian
Suites: trixie
Components: main
"""


def write_apt(root: Path, files: dict[str, str], os_release: str = "ID=debian\nVERSION_CODENAME=bookworm\n") -> Path:
    """A fake /etc: ``files`` maps paths under etc/apt to their text; returns etc/apt."""
    apt = root / "etc" / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(os_release)
    for rel, text in files.items():
        (apt / rel).write_text(text)
    return apt


def test_apt_sources_reads_deb822_stanzas(tmp_path):
    apt = write_apt(tmp_path, {"sources.list.d/debian.sources": DEB822})
    entries = debian_mod.apt_sources(apt)
    # deb-src is not a package source for debootstrap; the two deb stanzas are.
    assert [(e["uri"], e["suites"], e["components"]) for e in entries] == [
        ("http://mirror.example.net/debian/", ["bookworm", "bookworm-updates"], ["main", "contrib"]),
        ("http://mirror.example.net/debian-security", ["bookworm-security"], ["main"])]
    assert entries[0]["file"].endswith("debian.sources")
    assert debian_mod.host_mirror("bookworm", apt) == ("http://mirror.example.net/debian",
                                                       str(apt / "sources.list.d/debian.sources"))


def test_apt_sources_reads_one_line_lists_and_skips_what_apt_skips(tmp_path):
    apt = write_apt(tmp_path, {
        "sources.list": "# deb http://commented.example/debian bookworm main\n"
                        "deb-src http://src.example/debian bookworm main\n"
                        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://third.example/apt bookworm main\n"
                        "deb http://ftp.example.org/debian/ bookworm main non-free  # the host's mirror\n",
        "sources.list.d/ignored.list.disabled": "deb http://disabled.example/debian bookworm main\n",
        "sources.list.d/off.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
                                      "Components: main\nEnabled: no\n",
    })
    uris = [e["uri"] for e in debian_mod.apt_sources(apt)]
    assert uris == ["https://third.example/apt", "http://ftp.example.org/debian/"]
    # A third-party repository signed with its own key loses to the Debian line naming the same suite.
    assert debian_mod.host_mirror("bookworm", apt)[0] == "http://ftp.example.org/debian"


def test_another_suite_uses_the_mirror_of_the_hosts_own_release(tmp_path):
    apt = write_apt(tmp_path, {"sources.list": "deb http://ftp.example.org/debian bookworm main\n"
                                               "deb https://deb.nodesource.com/node_20.x nodistro main\n"})
    assert debian_mod.host_mirror("trixie", apt)[0] == "http://ftp.example.org/debian"
    # ... only on a Debian host: an Ubuntu archive does not carry Debian's suites.
    ubuntu = write_apt(tmp_path / "u", {"sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main\n"},
                       os_release="ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=jammy\n")
    assert debian_mod.host_mirror("bookworm", ubuntu) is None
    assert debian_mod.choose_mirror(None, "bookworm", ubuntu) == (
        debian_mod.FALLBACK_MIRROR, "fallback (the host's apt sources name no Debian mirror)")


def test_the_setting_and_the_argument_override_the_host(tmp_path, monkeypatch):
    apt = write_apt(tmp_path, {"sources.list.d/debian.sources": DEB822})
    monkeypatch.delenv(debian_mod.MIRROR_ENV, raising=False)
    assert debian_mod.choose_mirror(None, "bookworm", apt)[0] == "http://mirror.example.net/debian"
    monkeypatch.setenv(debian_mod.MIRROR_ENV, "http://setting.example/debian/")
    assert debian_mod.choose_mirror(None, "bookworm", apt) == ("http://setting.example/debian", "KIT_DEBIAN_MIRROR")
    assert debian_mod.choose_mirror("file:///srv/mirror", "bookworm", apt) == ("file:///srv/mirror", "argument")
    with pytest.raises(ImageError, match="not a mirror debootstrap can use"):
        debian_mod.choose_mirror("deb.debian.org/debian", "bookworm", apt)


def test_an_image_built_from_another_mirror_is_not_rebuilt(image_names, tmp_path, monkeypatch):
    """The mirror is provenance, not identity: the same suite and packages from another mirror
    return the stored image (a build would need debootstrap, which is made to be missing)."""
    name = image_names("deb")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "marker").write_text(name)  # its own content, so its own digest
    old = debian_mod.recipe(["redis-server"], "bookworm", "http://old-mirror.example/debian")
    store.add(name, rootfs, source="debootstrap:bookworm+redis-server", config_={"recipe": old})
    monkeypatch.setattr(debian_mod, "_debootstrap", lambda: None)
    monkeypatch.setenv(debian_mod.MIRROR_ENV, "http://new-mirror.example/debian")
    assert kit.images.debian(name, packages=["redis-server"]).config["recipe"]["mirror"] == old["mirror"]
    with pytest.raises(ImageError, match="apt-get install debootstrap"):  # other packages: a new build
        kit.images.debian(name, packages=["redis-server", "curl"])
