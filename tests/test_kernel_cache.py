"""The guest-kernel cache: versions ordered as versions, user kernels checked and keyed by content,
and the fetch kept private and exact (issue 16)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from kit.errors import InvalidSpec, RuntimeUnavailable
from kit.vm import kernel as kmod


def _bzimage(path: Path, payload: bytes = b"") -> Path:
    """A file with a bzImage's boot signature and setup-header magic (enough for the header check)."""
    head = bytearray(0x400)
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(head) + payload)
    return path


def test_versions_sort_as_versions():
    versions = ["6.1.0-57-cloud-amd64", "6.1.0-9-cloud-amd64", "6.10.0-1-cloud-amd64", "5.19.0-100-cloud-amd64"]
    assert sorted(versions, key=kmod.version_key) == [
        "5.19.0-100-cloud-amd64", "6.1.0-9-cloud-amd64", "6.1.0-57-cloud-amd64", "6.10.0-1-cloud-amd64"]


def test_newest_cached_kernel_is_the_highest_version(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    for v in ("6.1.0-9-cloud-amd64", "6.1.0-57-cloud-amd64"):
        d = tmp_path / "kernels" / v
        d.mkdir(parents=True)
        _bzimage(d / "vmlinuz")
    # a user kernel's cache folder is never taken for a distribution kernel
    _bzimage((tmp_path / "kernels" / "user-0123456789abcdef").mkdir() or tmp_path / "kernels" / "user-0123456789abcdef" / "vmlinuz")
    assert kmod.cached().version == "6.1.0-57-cloud-amd64"


def test_a_file_that_is_not_a_kernel_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    with pytest.raises(InvalidSpec, match=r"/etc/passwd' is not a Linux kernel image \(bzImage\)"):
        kmod.resolve("/etc/passwd")
    assert not (tmp_path / "kernels").exists()


def test_user_kernels_are_keyed_by_content_not_name(tmp_path):
    a = _bzimage((tmp_path / "a").mkdir() or tmp_path / "a" / "vmlinuz", b"one")
    b = _bzimage((tmp_path / "b").mkdir() or tmp_path / "b" / "vmlinuz", b"two")
    ka, kb, ka2 = kmod.resolve(a), kmod.resolve(b), kmod.resolve(a)
    assert ka.version != kb.version  # same file name, different bytes: different cache folders
    assert ka.version == ka2.version and ka.version.startswith("user-")


def test_fetch_keeps_its_directory_private_and_unpacks_exactly_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    seen = {}

    def fake_run(argv, timeout=60, check=True, cwd=None, **kw):
        if argv[:2] == ["apt-get", "download"]:
            d = Path(cwd)
            seen["mode"] = stat.S_IMODE(os.stat(d).st_mode)
            # a stray .deb that sorts first must not be the one unpacked
            (d / "aaa-evil_1_amd64.deb").write_bytes(b"x")
            return subprocess.CompletedProcess(argv, 0, b"", b"")
        raise AssertionError(f"unexpected command {argv}")

    monkeypatch.setattr(kmod, "run", fake_run)
    with pytest.raises(RuntimeUnavailable, match="could not download linux-image-6.1.0-1-cloud-amd64"):
        kmod.fetch("6.1.0-1-cloud-amd64")
    assert seen["mode"] & 0o077 == 0  # nobody else may write into it
    assert not any((tmp_path / "kernels").iterdir())  # the temporary directory is gone


def test_nothing_is_kept_for_a_user_kernel_that_fails_to_boot(tmp_path, names):
    """A file with a bzImage header that QEMU cannot boot: refused, and its cache folder is gone."""
    import kit
    from conftest import need, unique

    need("qemu")
    # Bytes of its own (content-keyed cache): no other test or earlier run can have made its folder.
    fake = _bzimage(tmp_path / "vmlinuz", b"\0" * 4096 + os.urandom(16))
    k = kmod.resolve(fake)
    name = unique("badkernel")
    names.append(name)
    with pytest.raises(kit.KitError):
        kit.run("busybox", ["true"], runtime="qemu", kernel=str(fake), name=name, timeout=60)
    assert not (kmod.kernels_dir() / k.version).exists()
