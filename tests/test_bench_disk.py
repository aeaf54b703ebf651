"""Disk accounting: apparent vs allocated, hard links and mounts counted once, instances of known size."""

import os
import secrets
import subprocess
from pathlib import Path

import pytest

import kit
from kit._proc import wait_until
from kit.bench import disk
from tests.conftest import need

MIB = 1024 * 1024
CONTAINERS = ["runc", "crun", "lxc", "runsc", "docker"]
#: Directory entries and file tails: whole blocks of 4 KiB each on ext4/overlay, so a handful of
#: files in the tests below allocate at most tens of KiB beyond their contents.
SLACK = 64 * 1024


def _write(path, n):
    path.write_bytes(os.urandom(n))


def test_usage_apparent_allocated_hardlinks_sparse(tmp_path):
    _write(tmp_path / "a", MIB)
    os.link(tmp_path / "a", tmp_path / "a-link")  # same inode: counted once
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(10 * MIB)  # 10 MiB apparent, nothing allocated
    os.symlink("a", tmp_path / "sym")
    u = disk.usage(tmp_path)
    assert 11 * MIB <= u.apparent < 11 * MIB + SLACK
    assert MIB <= u.allocated < MIB + SLACK
    assert len(u.files) == 4  # dir, a, sparse, sym


def test_union_counts_shared_files_once(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "inst").mkdir()
    _write(tmp_path / "img" / "base", 2 * MIB)
    os.link(tmp_path / "img" / "base", tmp_path / "inst" / "base")  # shared with the image
    _write(tmp_path / "inst" / "own", MIB)
    shared = disk.usage(tmp_path / "img")
    own = disk.usage(tmp_path / "inst", exclude=shared.inodes)
    assert MIB <= own.allocated < MIB + SLACK  # the hard-linked base is the image's
    total = shared.add(own).add(own)  # the same instance added twice adds nothing more
    assert total.allocated == shared.allocated + own.allocated


def test_usage_does_not_cross_mounts(tmp_path):
    (tmp_path / "image").mkdir()
    _write(tmp_path / "image" / "big", 4 * MIB)
    inst = tmp_path / "inst"
    (inst / "rootfs").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(tmp_path / "image"), str(inst / "rootfs")], check=True)
    try:
        assert disk.usage(inst).allocated < SLACK  # the 4 MiB behind the mount are not counted
    finally:
        subprocess.run(["umount", str(inst / "rootfs")], check=True)


def test_image_rows_rootfs_matches_store():
    img = kit.images.get("busybox")
    rows, usages = disk.image_rows(img)
    values = {(r["metric"], r["component"]): r["value"] for r in rows}
    assert values[("image_apparent", "rootfs")] >= img.size  # plus directories and symlinks
    # directories and symlinks of a busybox rootfs (some hundred entries) stay far below 256 KiB
    assert values[("image_apparent", "rootfs")] < img.size + 256 * 1024
    assert disk.shared_usage("process", usages).allocated == 0
    assert disk.shared_usage("runc", usages).allocated >= usages["rootfs"].allocated


@pytest.fixture
def started(names):
    """Start detached instances; conftest's ``names`` force-removes them afterwards, even on failure."""

    def start(runtime, argv):
        name = f"tbd-{runtime}-{secrets.token_hex(3)}"
        names.append(name)
        kit.start("busybox", argv, runtime=runtime, name=name)
        _h = kit.api.get(name)
        return _h.backend, _h.state

    return start


@pytest.mark.parametrize("runtime", CONTAINERS)
def test_instance_writing_5m_adds_5m(started, runtime):
    need(runtime)
    img = kit.images.get("busybox")
    _, usages = disk.image_rows(img)
    shared = disk.shared_usage(runtime, usages)
    # head, not dd: dd takes gVisor's short reads of /dev/urandom as whole blocks
    writer = ["sh", "-c", "head -c 5242880 /dev/urandom > /root/blob && sync && touch /root/done && sleep 3600"]
    idle_rt, idle = started(runtime, ["sleep", "3600"])
    rt, inst = started(runtime, writer)
    wait_until(lambda: rt.exec(inst, ["test", "-e", "/root/done"], timeout=10)[0] == 0, 30, interval=0.2,
               what="the 5 MiB file written")
    wait_until(lambda: idle_rt.running(idle), 30, what="idle instance running")
    base = disk.instance_usage(idle_rt, idle, shared)

    def grown():
        # gVisor's gofer writes back to the host some time after the guest's sync returns
        g = disk.instance_usage(rt, inst, shared).apparent - base.apparent
        return g >= 5 * MIB and g

    growth = wait_until(grown, 30, interval=0.1, what="5 MiB visible on the host")
    # the 5 MiB file plus the writer's marker and its directory's blocks; 1 MiB above that
    # would mean something else was counted (the image, or another instance's layer)
    assert growth < 6 * MIB
    # nothing of the image is counted per instance
    assert base.allocated < shared.allocated or shared.allocated == 0


def test_boot_paths_from_a_qemu_command_line():
    argv = ["qemu-system-x86_64", "-M", "q35", "-kernel", "/k/6.1/vmlinuz", "-initrd", "/img/formats/qemu/i.cpio",
            "-append", "console=ttyS0 -kernel /not/this", "-drive", "file=/img/a,,b.ext4,format=raw,readonly=on",
            "-drive", "if=none,id=x,file=/d2.img"]
    got = disk.boot_paths(argv)
    assert got == {"kernel": [Path("/k/6.1/vmlinuz")], "initrd": [Path("/img/formats/qemu/i.cpio")],
                   "disk": [Path("/img/a,b.ext4"), Path("/d2.img")]}
    assert disk.boot_paths(["qemu"]) == {"kernel": [], "initrd": [], "disk": []}


def _allocated(paths) -> int:
    """Blocks allocated to exactly these files, each inode once (an independent count: os.stat)."""
    seen = {}
    for p in paths:
        st = os.stat(p)
        seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values())


@pytest.mark.slow
def test_vm_shares_only_the_files_it_boots_from(started):
    """A VM's shared bytes are its kernel, initramfs and disk, read here from QEMU's own /proc cmdline:
    not every kernel cached under $KIT_HOME/kernels (other versions, whole module trees, the 9p kernel)."""
    need("qemu")
    img = kit.images.get("busybox")
    rt, inst = started("qemu", ["sleep", "3600"])
    wait_until(lambda: "command" in inst.phases, 120, what="the guest running its command")
    qemu = [p for p in rt.pids(inst) if "qemu" in open(f"/proc/{p}/comm").read()]
    assert len(qemu) == 1, qemu
    argv = open(f"/proc/{qemu[0]}/cmdline", "rb").read().split(b"\0")
    argv = [a.decode() for a in argv if a]
    files = [argv[i + 1] for i, a in enumerate(argv) if a in ("-kernel", "-initrd")]
    files += [o[len("file="):].replace(",,", ",") for i, a in enumerate(argv) if a == "-drive"
              for o in argv[i + 1].split(",") if o.startswith("file=")]
    assert len(files) >= 2 and any(f.endswith(("vmlinuz", "vmlinux")) for f in files), argv
    _, usages = disk.image_rows(img)
    shared = disk.shared_usage("qemu", usages, inst)
    assert shared.allocated == _allocated(files)
    parts = disk.boot_usage("qemu", inst)
    assert parts["kernel"].allocated + parts["qemu"].allocated == shared.allocated  # the parts add up
    kernels = kit.config.home() / "kernels"
    everything = subprocess.run(["du", "-s", "--block-size=1", str(kernels)], capture_output=True, text=True,
                                check=True).stdout.split()[0]
    # the whole kernel cache (every version and module tree) is several times one VM's kernel
    assert parts["kernel"].allocated < int(everything)
    # the image rows count the default kernel file, not the cache
    assert usages["kernel"].allocated == _allocated([argv[argv.index("-kernel") + 1]])
