"""kit.bench.persistence: what an instance's writes survive (stop, rm, a volume), checked on the host."""

from __future__ import annotations

import pytest
from conftest import need

from kit.bench import persistence


def test_holds_finds_the_bytes_and_not_their_absence(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"xx kit-42 yy")
    assert persistence.holds(tmp_path, b"kit-42") and not persistence.holds(tmp_path, b"kit-43")


def test_a_stopped_container_keeps_its_layer_until_rm_and_a_vm_does_not():
    need("runc")
    need("qemu")
    runc, vm = persistence.after_stop("runc"), persistence.after_stop("qemu")
    assert runc == {"runtime": "runc", "kept_after_stop": True, "state_left_after_rm": False}
    assert vm == {"runtime": "qemu", "kept_after_stop": False, "state_left_after_rm": False}


def test_a_named_volume_outlives_the_container_that_wrote_it():
    need("runc")
    got = persistence.volume_keeps("runc", "tp-persist")
    assert got["kept"] and got["read_after_rm"] == got["written"] and got["written"].startswith("kit-")
    from kit import volumes
    assert "tp-persist" not in volumes.names()


def test_a_writer_grows_by_what_it_wrote_and_rm_leaves_nothing():
    need("runc")
    import kit
    from kit.bench import disk

    _, usages = disk.image_rows(kit.images.get("busybox"))
    cmd = ["sh", "-c", "dd if=/dev/zero of=/root/blob bs=1M count=4 conv=fsync 2>/dev/null; echo written; exec sleep 600"]
    with kit.start("busybox", ["sleep", "600"], runtime="runc") as idle:
        idle_own = disk.instance_usage(idle.backend, idle.state,
                                       disk.shared_usage("runc", usages, idle.state)).allocated
    h = kit.start("busybox", cmd, runtime="runc")
    h.wait_until(lambda: "written" in h.logs().stdout, 60, what="the writer")
    row = persistence.where_writes_went(h, usages, idle_own)
    assert row["growth_mib"] == pytest.approx(4, rel=0.1) and not row["state_left_after_rm"] and row["kind"] == "container"
