"""kit.mounts: the one reader of the mount table and the one unmounter (issue 21), on real mounts."""

from __future__ import annotations

import os

import pytest

from kit import mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def test_below_lists_nested_mounts_deepest_first_and_unmount_below_detaches_them(tmp_path):
    top = tmp_path / "a dir"  # a blank: the mount table spells it \040
    inner = top / "inner"
    top.mkdir()
    mounts.mount("tmpfs", top, "tmpfs", "size=1m")
    try:
        inner.mkdir()
        mounts.mount("tmpfs", inner, "tmpfs", "size=1m")
        beside = tmp_path / "a dirx"  # a sibling whose name starts like it: not below it
        beside.mkdir()
        assert mounts.below(top) == [str(inner), str(top)]
        assert mounts.below(inner) == [str(inner)]
        assert mounts.below(beside) == []
        assert str(inner) in mounts.below(tmp_path)
        assert mounts.unmount_below(top) == [str(inner), str(top)]
        assert mounts.below(tmp_path) == []
        assert not mounts.unmount(top)  # nothing left to unmount: idempotent
    finally:
        mounts.unmount_below(tmp_path)


def test_unmount_detaches_a_busy_mount(tmp_path):
    mounts.mount("tmpfs", tmp_path, "tmpfs", "size=1m")
    held = os.open(tmp_path, os.O_RDONLY)  # busy: umount2 without MNT_DETACH says EBUSY
    try:
        assert mounts.unmount(tmp_path)
        assert mounts.below(tmp_path) == []
    finally:
        os.close(held)


def test_mount_refusal_is_an_oserror_naming_the_target(tmp_path):
    with pytest.raises(OSError) as e:
        mounts.mount("none", tmp_path, "no-such-fs")
    assert e.value.filename == str(tmp_path) and e.value.errno


def test_usage_counts_no_bytes_below_another_mount(tmp_path):
    """kit.usage's walk stops at mount points that kit.mounts lists."""
    from kit import usage

    (tmp_path / "sub").mkdir()
    mounts.mount("tmpfs", tmp_path / "sub", "tmpfs", "size=1m")
    try:
        (tmp_path / "sub" / "f").write_bytes(b"x" * 65536)
        assert str(tmp_path / "sub") in usage.mount_points()
        assert usage.disk_usage(tmp_path).apparent < 65536
    finally:
        mounts.unmount_below(tmp_path)
