"""Volumes (issue 10): ``-v SRC:DEST[:ro]`` in every runtime, named volumes, bad input, in-use refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import kit
from kit import config, volumes
from kit.bench import disk
from kit.errors import InvalidSpec, VolumeInUse, VolumeNotFound
from tests.conftest import need, unique


@pytest.fixture
def vols():
    """Volume names a test uses; removed afterwards (after its instances), even on failure."""
    made: list[str] = []
    yield made
    kit.api.wait_for_teardown()
    for v in made:
        try:
            volumes.rm(v)
        except (VolumeNotFound, VolumeInUse):
            pass


@pytest.fixture
def hostdir(tmp_path):
    d = tmp_path / "shared dir"  # a space: every runtime must pass the path through intact
    d.mkdir()
    d.chmod(0o777)
    return d


def _mounts_of(path) -> list[str]:
    text = Path("/proc/mounts").read_text()
    return [ln for ln in text.splitlines() if str(path).replace(" ", "\\040") in ln]


BAD = {
    "relative path": ("data/sub:/x", "neither an absolute host path nor a volume name"),
    "missing host dir": ("/nonexistent-kit-volume-dir:/x", "does not exist"),
    "dest not absolute": ("data:x", "must be an absolute path"),
    "source is /": ("/:/host", "cannot be /"),
    "name with ..": ("..:/x", "neither an absolute host path nor a volume name"),
    "host path with ..": ("/tmp/../etc:/x", "cannot be / or contain '..'"),
    "a device": ("/dev/null:/x", "neither a directory nor a file"),
}


@pytest.mark.parametrize("runtime", ["process", "runc", "runsc", "lxc", "docker", "qemu"])
def test_bad_input_is_one_line_and_leaves_nothing(runtime, names, vols):
    need(runtime)
    fresh = unique("never")
    vols.append(fresh)
    for why, (bad, says) in BAD.items():
        name = unique("bad")
        names.append(name)
        # A good named volume before the bad one: it must not be created either.
        with pytest.raises(InvalidSpec) as e:
            kit.run("busybox", ["true"], runtime=runtime, name=name, volumes=[f"{fresh}:/ok", bad])
        msg = str(e.value)
        assert "\n" not in msg, (why, msg)
        if runtime == "process":
            assert "cannot mount volumes" in msg or says in msg, (why, msg)
        else:
            assert says in msg, (why, msg)
        assert name not in set(kit.ps()["name"]), why
        assert not (kit.api.default_session().state_dir / name).exists(), why
    assert fresh not in volumes.names()


@pytest.mark.parametrize("runtime, opts", [(rt, {}) for rt in ("process", "runc", "runsc", "lxc", "docker", "qemu")]
                         + [("qemu", {"boot": "disk", "read_only": True})],
                         ids=["process", "runc", "runsc", "lxc", "docker", "qemu", "qemu-disk-ro-root"])
def test_a_single_file_mounts_read_only_and_read_write(runtime, opts, names, hostdir):
    """``-v ./nginx.conf:/etc/nginx/nginx.conf:ro``: a host file alone at a target whose parent the image
    lacks (read-only) and one beside the image's files (read-write, seen on the host); nothing is left.
    A VM booted from its disk with a read-only root has the mount points made in its thin layer."""
    need(runtime)
    conf, log, name = hostdir / "app.conf", hostdir / "log.txt", unique("file")
    names.append(name)
    conf.write_text("worker 1;\n")
    log.write_text("old\n")
    log.chmod(0o666)
    mounts = [f"{conf}:/etc/kit app/new/app.conf:ro", f"{log}:/var/log.txt"]
    if runtime == "process":  # it shares the host's files: no volumes at all, said in one line
        with pytest.raises(InvalidSpec, match="cannot mount volumes") as e:
            kit.run("busybox", ["true"], runtime=runtime, name=name, volumes=mounts)
        assert "\n" not in str(e.value)
        return
    script = ("cat '/etc/kit app/new/app.conf'; echo no >> '/etc/kit app/new/app.conf'; echo ro=$?; "
              "cat /var/log.txt; echo new > /var/log.txt; echo rw=$?")
    r = kit.run("busybox", ["sh", "-c", script], runtime=runtime, name=name, volumes=mounts, **opts)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["worker 1;", "ro=1", "old", "rw=0"], (r.stdout, r.stderr)
    assert "Read-only file system" in r.stderr
    assert conf.read_text() == "worker 1;\n" and log.read_text() == "new\n"
    kit.api.wait_for_teardown()
    assert not _mounts_of(hostdir)
    assert (conf.stat().st_nlink, log.stat().st_nlink) == (1, 1)  # a VM's hard links went with it
    assert not (kit.api.default_session().state_dir / name).exists()
    assert sorted(p.name for p in hostdir.iterdir()) == ["app.conf", "log.txt"]


def test_a_vm_refuses_a_read_write_file_it_cannot_link(names):
    """A VM serves a file through a hard link: across filesystems a read-write one is refused in one line
    saying what to do (a read-only one is copied), and nothing is left."""
    need("qemu")
    shm = Path("/dev/shm")
    if shm.stat().st_dev == config.home().stat().st_dev:
        pytest.skip("/dev/shm is on the kit's filesystem here: a hard link would work")
    f, name = shm / unique("kit-file"), unique("link")
    names.append(name)
    f.write_text("shm\n")
    try:
        with pytest.raises(InvalidSpec, match="mount its directory, or mount it read-only") as e:
            kit.run("busybox", ["true"], runtime="qemu", name=name, volumes=[f"{f}:/a/b"])
        assert "\n" not in str(e.value)
        kit.api.wait_for_teardown()
        assert not (kit.api.default_session().state_dir / name).exists() and f.stat().st_nlink == 1
    finally:
        f.unlink()


def test_a_compose_files_single_file_bind_plans_and_runs(tmp_path):
    """A compose service's ``./nginx.conf:/etc/nginx/nginx.conf:ro`` (relative to the file) runs on runc."""
    import kit.compose as compose

    need("runc")
    (tmp_path / "nginx.conf").write_text("events {}\n")
    (tmp_path / "compose.yml").write_text(
        "services:\n  web:\n    image: busybox\n    command: [sleep, '300']\n"
        "    volumes:\n      - ./nginx.conf:/etc/nginx/nginx.conf:ro\n")
    project = unique("cfile")
    proj = compose.read(tmp_path / "compose.yml", project=project)
    assert proj.services["web"].volumes == [(str(tmp_path / "nginx.conf"), "/etc/nginx/nginx.conf", True, "bind")]
    compose.up(tmp_path / "compose.yml", runtime="runc", project=project, timeout=120)
    try:
        r = kit.exec(f"{project}-web-1", ["sh", "-c", "cat /etc/nginx/nginx.conf; : > /etc/nginx/nginx.conf"])
        assert r.stdout == "events {}\n" and "Read-only file system" in r.stderr, (r.stdout, r.stderr)
    finally:
        compose.down(project)
    assert (tmp_path / "nginx.conf").read_text() == "events {}\n"


@pytest.mark.parametrize("runtime", ["runc", "runsc", "lxc", "docker"])
def test_ro_is_enforced_and_rw_writes_reach_the_host(runtime, vols, hostdir):
    need(runtime)
    v = unique("ro")
    vols.append(v)
    volumes.create(v)
    Path(volumes.inspect(v)["path"], "seed").write_text("seeded\n")
    script = ("cat /ro/seed; echo no > /ro/new; echo ro=$?; "
              f"echo {runtime} > '/rw dir/out'; echo rw=$?")
    r = kit.run("busybox", ["sh", "-c", script], runtime=runtime,
                volumes=[f"{v}:/ro:ro", f"{hostdir}:/rw dir"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["seeded", "ro=1", "rw=0"], (r.stdout, r.stderr)
    assert "Read-only file system" in r.stderr
    assert (hostdir / "out").read_text() == f"{runtime}\n"
    assert not Path(volumes.inspect(v)["path"], "new").exists()
    kit.api.wait_for_teardown()
    assert not _mounts_of(hostdir) and not _mounts_of(volumes.root() / v)


def test_instance_removal_keeps_the_volume_and_rm_refuses_in_use(names, vols):
    need("runc")
    v, name = unique("keep"), unique("user")
    vols.append(v)
    names.append(name)
    kit.start("busybox", ["sh", "-c", "head -c 1048576 /dev/urandom > /d/big; echo kept > /d/f; sleep 300"],
              runtime="runc", name=name, volumes=[f"{v}:/d"])
    kit.wait_until(lambda: (Path(volumes.root(), v, "data", "f")).exists(), 10, what="the write")
    # A study's disk part counts the volume apart from the instance's own bytes.
    _h = kit.api.get(name)
    rt, inst = _h.backend, _h.state
    rows, _ = disk.instance_rows(rt, inst, disk.Usage())
    by = {(r["metric"], r["component"]): r["value"] for r in rows}
    assert by[("volume_allocated", v)] >= 2**20
    assert by[("instance_allocated", "")] < 2**20, by
    info = volumes.inspect(v)
    assert [u.split()[0] for u in info["users"]] == [name], info
    with pytest.raises(VolumeInUse, match=name):
        volumes.rm(v)
    row = volumes.ls().set_index("name").loc[v]
    assert name in row["users"] and row["size"] > 0
    kit.rm(name, force=True)
    assert volumes.inspect(v)["users"] == []
    assert Path(volumes.inspect(v)["path"], "f").read_text() == "kept\n"
    # A marker left by a session whose owner is gone does not count.
    marker = volumes.root() / v / "users" / "deadbeef.ghost"
    marker.write_text(json.dumps({"session": "deadbeef", "instance": "ghost"}))
    volumes.rm(v)
    assert v not in volumes.names()
    with pytest.raises(VolumeNotFound):
        volumes.inspect(v)


def test_volume_api_checks_names(vols):
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(InvalidSpec):
            volumes.create(bad)
    v = unique("api")
    vols.append(v)
    assert volumes.create(v)["name"] == v
    assert volumes.create(v)["path"] == str(volumes.root() / v / "data")  # a second create keeps it
    assert v in set(volumes.ls()["name"])
    with pytest.raises(VolumeNotFound):
        volumes.rm(unique("missing"))


def test_magic_volume_flags_and_subcommand(ip, vols, capsys):
    need("runc")
    v = unique("magic")
    vols.append(v)
    ip.run_line_magic("container", f"volume create {v}")
    assert v in set(ip.run_line_magic("container", "volume ls")["name"])
    r = ip.run_line_magic("container", f"run -r runc -v {v}:/a --volume {v}:/b:ro busybox "
                                       f"sh -c 'echo hi > /a/f; cat /b/f; touch /b/g'")
    assert r.stdout == "hi\n" and "Read-only" in r.stderr
    assert ip.run_line_magic("container", f"volume inspect {v}")["size"] > 0
    r = ip.run_cell_magic("container", f"-r runc -v {v}:/data busybox", "cat /data/f\n")
    assert r.stdout == "hi\n"
    from kit.magics import run_parser

    assert run_parser("%vm run", "vm").parse_args(["-v", f"{v}:/x", "-v", "/tmp:/y:ro"]).volume == \
        [f"{v}:/x", "/tmp:/y:ro"]
    with pytest.raises(UsageError, match="cannot mount volumes"):
        ip.run_line_magic("container", f"run -r process -v {v}:/x busybox true")
    with pytest.raises(UsageError, match="give the volume's NAME"):
        ip.run_line_magic("container", "volume rm")
    kit.api.wait_for_teardown()
    ip.run_line_magic("container", f"volume rm {v}")
    assert v not in volumes.names()


@pytest.mark.slow
def test_one_volume_through_runc_a_vm_and_lxc(vols, hostdir):
    """Data written by a container is read and extended by a VM (QEMU's 9p), then read by LXC;
    the VM's ``:ro`` mount refuses writes."""
    for rt in ("runc", "qemu", "lxc"):
        need(rt)
    v = unique("trip")
    vols.append(v)
    r = kit.run("busybox", ["sh", "-c", "echo from-runc > /data/log"], runtime="runc", volumes=[f"{v}:/data"])
    assert r.exit_code == 0, r.stderr
    r = kit.run("busybox", ["sh", "-c", "cat /data/log && echo from-vm >> /data/log; echo no > /ro/x; echo ro=$?"],
                runtime="qemu", volumes=[f"{v}:/data", f"{hostdir}:/ro:ro"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["from-runc", "ro=1"], (r.stdout, r.stderr)
    assert not (hostdir / "x").exists()
    r = kit.run("busybox", ["cat", "/data/log"], runtime="lxc", volumes=[f"{v}:/data:ro"])
    assert r.stdout == "from-runc\nfrom-vm\n", (r.stdout, r.stderr)
    kit.api.wait_for_teardown()
    assert volumes.inspect(v)["users"] == []


def test_vm_mounts_each_volume_by_tag_with_its_target_quoted():
    """The guest init's kit_volumes calls kit_mount TAG TARGET [ro] per volume, byte-exact; QEMU gets one
    9p device of the machine's bus per volume, readonly=on for :ro."""
    import subprocess

    from kit.runtimes import qemu as qemu_rt
    from kit.spec import RunSpec
    from kit.vm import machine

    mounts = [volumes.Resolved("v", "/data dir", True, "volume", Path("/h/a,b")),
              volumes.Resolved("/srv", "/it's", False, "bind", Path("/srv"))]
    vm = qemu_rt._VM.__new__(qemu_rt._VM)
    vm.spec, vm.boot = RunSpec(image="busybox", command=["true"], name="n1"), "disk"
    vm.inst = type("I", (), {"image": None, "net": None, "mounts": mounts})()
    probe = vm.spec_script().decode() + 'kit_mount() { printf "<%s>" "$@"; echo; }\nkit_volumes\necho "9p=$KIT_9P"\n'
    out = subprocess.run(["sh", "-c", probe], capture_output=True, text=True).stdout
    assert out.splitlines() == ["<kit0></data dir><ro>", "<kit1></it's>", "9p=1"]
    for mach, dev in (("microvm", "virtio-9p-device"), ("q35", "virtio-9p-pci")):
        cfg = machine.VMConfig(kernel=Path("k"), initrd=Path("i"), machine=mach,
                               shares=[("kit0", Path("/h/a,b"), True, "passthrough")])
        a = machine.argv(cfg)
        assert a[a.index("-fsdev") + 1] == "local,id=fs0,path=/h/a,,b,security_model=passthrough,readonly=on"
        assert a[a.index("-fsdev") + 3] == f"{dev},fsdev=fs0,mount_tag=kit0"
