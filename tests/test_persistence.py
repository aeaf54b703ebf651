"""kit.bench.persistence: what an instance's writes survive (stop, rm, a volume), checked on the host."""

from __future__ import annotations

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
