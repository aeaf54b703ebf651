"""Unit tests of the VM pieces that need no boot: command line, spec script, framing, cpio, cache."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kit.errors import InvalidSpec, StartFailed
from kit.runtimes import qemu as qemu_rt
from kit.spec import RunSpec
from kit.vm import accel, channel, initramfs, machine
from kit.vm.kernel import MODULES, Kernel
from tests.conftest import bench_script


def _cfg(**kw):
    base = dict(kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"))
    base.update(kw)
    return machine.VMConfig(**base)


def _after(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_kvm_path_uses_kvm_and_host_cpu():
    a = machine.argv(_cfg(accel="kvm", machine="microvm"))
    assert _after(a, "-accel") == ["kvm"] and _after(a, "-cpu") == ["host"]
    assert _after(a, "-M")[0].startswith("microvm,")
    assert "virtio-serial-device,max_ports=5" in a


def test_tcg_q35_uses_pci_devices_and_no_network_by_default():
    a = machine.argv(_cfg(accel="tcg", machine="q35", disk=Path("/d/root.ext4")))
    assert _after(a, "-accel") == ["tcg"] and "-cpu" not in a
    assert _after(a, "-M") == ["q35"]
    assert "virtio-blk-pci,drive=root" in a
    assert "file=/d/root.ext4,format=raw,if=none,id=root,readonly=on" in a
    assert _after(a, "-nic") == ["none"] and "-netdev" not in a
    assert "-no-reboot" in a and "panic=-1" in _after(a, "-append")[0]


def test_ports_are_forwarded_on_loopback_only_and_guest_is_restricted():
    a = machine.argv(_cfg(ports=[(16379, 6379), (8080, 80)]))
    (netdev,) = _after(a, "-netdev")
    assert netdev == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:16379-:6379,hostfwd=tcp:127.0.0.1:8080-:80"
    assert "-nic" not in a


def test_memory_cpus_and_channels():
    a = machine.argv(_cfg(cpus=machine.vcpus(1.5), memory_mib=384,
                          sockets={"console": Path("/s/console.sock"), "kit.ctl": Path("/s/c,tl.sock")},
                          files={"kit.out": Path("/s/out.log")}, qmp=Path("/s/qmp.sock")))
    assert _after(a, "-smp") == ["2"] and _after(a, "-m") == ["384M"]
    assert "socket,id=console,path=/s/console.sock" in a and _after(a, "-serial") == ["chardev:console"]
    assert "socket,id=p0,path=/s/c,,tl.sock" in a  # commas in paths are escaped QEMU's way
    assert "file,id=p1,path=/s/out.log,append=on" in a
    assert "virtserialport,chardev=p0,name=kit.ctl" in a and "virtserialport,chardev=p1,name=kit.out" in a
    assert not any("name=kit.err" in x for x in a)
    assert _after(a, "-qmp") == ["unix:/s/qmp.sock,server=on,wait=off"]


def test_vcpus_round_up():
    assert [machine.vcpus(c) for c in (None, 0.25, 1, 1.01, 2)] == [1, 1, 1, 2, 2]


def test_bad_machine_or_accel():
    with pytest.raises(InvalidSpec, match="machine"):
        machine.argv(_cfg(machine="pc-i440fx"))
    with pytest.raises(InvalidSpec, match="accelerator"):
        machine.argv(_cfg(accel="hvf"))


def test_default_machine_is_microvm_only_with_kvm_and_mmio(tmp_path):
    conf = tmp_path / "config"
    conf.write_text("CONFIG_VIRTIO_MMIO=m\nCONFIG_ACPI=y\n")
    k = Kernel(tmp_path / "vmlinuz", None, "x", conf)
    assert k.supports_microvm()
    assert qemu_rt._default_machine(k, "kvm") == "microvm"
    assert qemu_rt._default_machine(k, "tcg") == "q35"  # TSC frequency unknown: microvm could hang
    assert qemu_rt._default_machine(k, "tcg", 2_596_134) == "microvm"
    conf.write_text("CONFIG_ACPI=y\n")
    assert not Kernel(tmp_path / "vmlinuz", None, "x", conf).supports_microvm()


def test_spec_script_quotes_everything():
    spec = RunSpec(image="busybox", command=["sh", "-c", "echo 'a b'; echo $HOME\nexit 3"], name="n1",
                   env={"X": "it's \"q\""}, workdir="/tmp", ports=[(1, 2)])
    vm = qemu_rt._VM.__new__(qemu_rt._VM)
    vm.spec, vm.boot = spec, "disk"
    vm.inst = type("I", (), {"image": None, "net": None, "mounts": []})()
    script = vm.spec_script().decode()
    # Run the script in a host shell with the init's own kit_which and an env stub: the command
    # must come back byte-exact, its name resolved on the instance's PATH (here: the host's sh).
    init = (Path(qemu_rt.__file__).parent.parent / "vm" / "init.sh").read_text()
    kit_which = init[init.index("kit_which() {"):init.index("\n}\n", init.index("kit_which() {")) + 3]
    probe = kit_which + script + 'env() { shift; for a; do printf "<%s>" "$a"; done; }\nkit_cmd\n' \
        'printf "|%s|%s|%s|%s" "$KIT_MODE" "$KIT_HOSTNAME" "$KIT_WORKDIR" "$KIT_NET"\n'
    out = subprocess.run(["sh", "-c", probe.replace("exec env", "env")], capture_output=True, text=True).stdout
    assert "<X=it's \"q\">" in out
    sh = next(f"{d}/sh" for d in spec.environment()["PATH"].split(":") if os.access(f"{d}/sh", os.X_OK))
    assert out.endswith(f"<{sh}><-c><echo 'a b'; echo $HOME\nexit 3>|disk|n1|/tmp|1")
    # A name found nowhere on PATH is left as given (env then says it cannot run it).
    out = subprocess.run(["sh", "-c", kit_which + 'kit_which no-such-cmd /bin:/usr/bin; printf %s "$kit_found"'],
                         capture_output=True, text=True).stdout
    assert out == "no-such-cmd"


def test_agent_reply_framing_cannot_be_faked_by_output():
    vm = type("V", (), {})()
    ag = qemu_rt._Agent(vm)
    fake = b"exit 0\nout 3\n"  # the command's own stdout mimicking a reply
    ag.feed(b"out %d\n" % len(fake) + fake + b"err 2\nE\nexit 9\n")
    assert ag._parse() == (9, fake, b"E\n")
    ag.buf = b"out 10\nshort"
    assert ag._parse() is None  # incomplete: wait for more
    ag.buf = b"bogus\n"
    with pytest.raises(StartFailed):
        ag._parse()


def test_line_records_stamp_each_line():
    got = []
    rec = channel.LineRecords(lambda line, t: got.append(line))
    rec(b"comm")
    rec(b"and\nexited 3\npart")
    assert got == ["command", "exited 3"]


def test_cpio_writer_is_readable_by_cpio(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"hello")
    (src / "l").symlink_to("d/f")
    out = tmp_path / "a.cpio"
    with open(out, "wb") as f:
        c = initramfs.Cpio(f)
        c.tree(src, prefix="p")
        c.close()
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(out, "rb"), capture_output=True,
                             text=True, check=True).stdout.split()
    assert listing == ["p/d", "p/l", "p/d/f"]
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], stdin=open(out, "rb"), cwd=dest, check=True)
    assert (dest / "p/l").read_bytes() == b"hello"


def test_accel_precheck_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    kfile = tmp_path / "vmlinuz"
    kfile.write_bytes(b"x")
    k = Kernel(kfile, None, "test")
    calls = []

    def fake_probe(kernel, qemu, deadline):
        calls.append(deadline)
        return accel.AccelVerdict("tcg", "probe boot did not reach init (fake)")

    monkeypatch.setattr(accel, "probe", fake_probe)
    monkeypatch.setattr(accel, "precheck", lambda: None)
    v1 = accel.choose(k)
    v2 = accel.choose(k)
    assert v1.accel == v2.accel == "tcg" and "fake" in v2.reason
    assert len(calls) == 1  # the second answer came from the cache
    monkeypatch.setattr(accel, "precheck", lambda: "no /dev/kvm")
    kfile.write_bytes(b"other kernel")  # a different kernel is a different cache key
    assert accel.choose(k).reason == "no /dev/kvm"


def test_unknown_option_is_refused():
    spec = RunSpec(image="busybox", command=["true"], options={"kernal": "/x"})
    vm = qemu_rt._VM.__new__(qemu_rt._VM)
    vm.spec = spec
    with pytest.raises(InvalidSpec, match="kernal"):
        vm._options()


def test_kernel_args_name_the_bus_and_hand_over_the_tsc_only_under_tcg():
    q35 = machine.kernel_args(_cfg(machine="q35", accel="tcg", tsc_khz=2_596_134))
    assert "kit_bus=pci" in q35.split() and "tsc_early_khz=2596134" in q35.split()
    mvm = machine.kernel_args(_cfg(machine="microvm", accel="kvm", tsc_khz=2_596_134))
    assert "kit_bus=mmio" in mvm.split() and "tsc_early_khz" not in mvm  # kvmclock tells a KVM guest
    assert "tsc_early_khz" not in machine.kernel_args(_cfg(accel="tcg"))  # unknown: the guest calibrates
    # The APIC timer: left out under TCG by a kernel without ACPI (its calibration fails there after
    # ~0.27 s); kept under KVM, and by a kernel that checks it against ACPI's PM timer.
    assert "noapictimer" in machine.kernel_args(_cfg(machine="q35", accel="tcg", acpi=False)).split()
    assert "noapictimer" not in machine.kernel_args(_cfg(machine="microvm", accel="kvm", acpi=False)).split()
    assert "noapictimer" not in q35.split()
    a = machine.argv(_cfg(machine="q35", accel="tcg", tsc_khz=1000, append="quiet"))
    assert _after(a, "-append") == [machine.kernel_args(_cfg(machine="q35", accel="tcg", tsc_khz=1000,
                                                               append="quiet"))]


def test_each_bus_loads_only_its_own_virtio_transport():
    assert "virtio_mmio" not in MODULES["pci"] and "virtio_pci" not in MODULES["mmio"]
    for bus in machine.VIRTIO_BUS.values():
        mods = MODULES[bus]
        assert mods[:2] == ["virtio_ring", "virtio"] and mods[-1] == "virtio_console"


def _fake_host(monkeypatch, tmp_path, cpuinfo: str, tsc_file: str | None = None, cpufreq: bool = False):
    """host_tsc_khz reads /sys/devices/system/cpu/cpu0 and /proc/cpuinfo: point both at files of the test's."""
    cpu0 = tmp_path / "cpu0"
    cpu0.mkdir()
    if tsc_file is not None:
        (cpu0 / "tsc_freq_khz").write_text(tsc_file)
    if cpufreq:
        (cpu0 / "cpufreq").mkdir()
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    where = {"/sys/devices/system/cpu/cpu0": cpu0, "/proc/cpuinfo": tmp_path / "cpuinfo"}
    monkeypatch.setattr(accel, "Path", lambda p, *a: Path(where.get(str(p), p), *a))


AMD = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\ncpu MHz\t\t: 2445.428\n\nprocessor\t: 1\ncpu MHz\t: 1.0\n"
INTEL = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.60GHz\ncpu MHz\t\t: 1200.000\n"


@pytest.mark.parametrize("cpuinfo,tsc_file,cpufreq,khz", [
    (AMD, "2596134\n", False, 2_596_134),  # the kernel's own export wins
    (AMD, None, False, 2_445_428),  # a fixed clock: cpu MHz of the first CPU is the TSC calibration
    (AMD, None, True, None),  # a cpufreq driver varies cpu MHz, and AMD names no nominal rate
    (INTEL, None, True, 2_600_000),  # Intel's TSC ticks at the nominal rate of the model name
    ("", "garbage", False, None),
])
def test_host_tsc_khz_sources(monkeypatch, tmp_path, cpuinfo, tsc_file, cpufreq, khz):
    _fake_host(monkeypatch, tmp_path, cpuinfo, tsc_file, cpufreq)
    assert accel.host_tsc_khz() == khz


def test_host_tsc_khz_is_known_here():
    # This machine kind (a Firecracker VM, no cpufreq) reports cpu MHz in /proc/cpuinfo.
    khz = accel.host_tsc_khz()
    assert khz is not None and 100_000 < khz < 10_000_000, khz
    assert accel.guest_tsc_khz("tcg") == khz and accel.guest_tsc_khz("kvm") is None


def test_module_signature_is_stripped():
    body = b"\x7fELF" + b"x" * 100
    sig = b"S" * 40
    info = bytes(8) + len(sig).to_bytes(4, "big")
    signed = body + sig + info + b"~Module signature appended~\n"
    assert initramfs.unsigned(signed) == body
    assert initramfs.unsigned(body) == body


def test_spec_script_is_nul_free_so_a_nul_can_end_it():
    spec = RunSpec(image="busybox", command=["printf", "a\nb"], name="n", env={"K": "v\nw"})
    vm = qemu_rt._VM.__new__(qemu_rt._VM)
    vm.spec, vm.boot = spec, "initramfs"
    vm.inst = type("I", (), {"image": None, "net": None, "mounts": []})()
    assert b"\0" not in vm.spec_script()


def test_init_script_parses():
    sh = shutil.which("busybox") or shutil.which("sh")
    args = [sh, "sh", "-n", str(initramfs.INIT_SCRIPT)] if sh.endswith("busybox") else [sh, "-n",
                                                                                          str(initramfs.INIT_SCRIPT)]
    subprocess.run(args, check=True, timeout=10)


@pytest.mark.parametrize("mach", machine.MACHINES)
def test_literal_baseline_is_kits_own_command_line_but_for_the_console(mach):
    # The benchmark's hand-written baseline must boot exactly what kit boots (same devices,
    # same kernel arguments), with ports on files and the console on stdio, and no QMP.
    bench = bench_script("bench_vm")
    # the distribution's kernel (a bzImage, ACPI) and the kit's own (its vmlinux through PVH, no ACPI)
    for k in (type("K", (), {"vmlinuz": Path("/k/vmlinuz"), "vmlinux": None, "acpi": True})(),
              type("K", (), {"vmlinuz": Path("/k/vmlinuz"), "vmlinux": Path("/k/vmlinux"), "acpi": False})()):
        lit = bench.literal_written(k, mach, "tcg", 2_596_134, Path("/k/initrd"), Path("/k/disk"), "QUJD", "/p")
        cfg = machine.VMConfig(kernel=k.vmlinux or k.vmlinuz, initrd=Path("/k/initrd"), disk=Path("/k/disk"),
                               accel="tcg", machine=mach, tsc_khz=2_596_134, acpi=k.acpi,
                               memory_mib=qemu_rt.DEFAULT_MEMORY // 1024**2,
                               files={n: Path("/p") / n for n in machine.PORTS}, append="kit_spec=QUJD")
        i = lit.index("-serial")
        assert lit[i + 1] == "stdio"
        assert lit[:i] + lit[i + 2:] == machine.argv(cfg)
        with pytest.raises(SystemExit):
            bench.literal_written(k, mach, "tcg", None, Path("/i"), None, "A" * 2000, "/p")


@pytest.mark.parametrize("boot", ["initramfs", "disk"])
def test_hand_baseline_gives_its_init_no_arguments_after_a_double_dash(tmp_path, boot):
    # microvm appends virtio_mmio.device= words to the end of the command line: after a '--' they
    # would be the init's arguments, and a kernel that reads its devices there would miss the disk.
    bench = bench_script("bench_vm")
    k = type("K", (), {"vmlinuz": Path("/k/vmlinuz"), "vmlinux": Path("/k/vmlinux"), "acpi": False, "modules": None})()
    (tmp_path / "initrd").write_bytes(b"070701 kit's own archive")
    argv = bench.hand_written(k, "microvm", boot, "tcg", 2_000_000, tmp_path / "initrd",
                              Path("/k/disk") if boot == "disk" else None, tmp_path)
    words = argv[argv.index("-append") + 1].split()
    assert "--" not in words and "rdinit=/hand-init" in words
    initrd = Path(argv[argv.index("-initrd") + 1]).read_bytes()
    assert initrd.startswith(b"070701 kit's own archive")  # kit's initramfs, then the script's archive
    assert b"hand-init" in initrd and b"echo hello" in initrd and b"TRAILER!!!" in initrd


def test_init_decodes_a_spec_from_the_kernel_command_line(tmp_path):
    # The init's kit_spec branch, cut out of init.sh and run in busybox sh: the spec must
    # come back byte-exact (a hand-written QEMU command has no host to send it).
    busybox = shutil.which("busybox")
    assert busybox, "busybox is not installed: `make setup` installs busybox-static"
    text = initramfs.INIT_SCRIPT.read_text()
    start = text.index('    if [ -n "$kit_spec" ]; then')
    branch = text[start:text.index("    else\n", start)] + "    fi\n"
    spec = RunSpec(image="busybox", command=["sh", "-c", "echo 'a b'"], name="n", env={"X": "y z"})
    vm = qemu_rt._VM.__new__(qemu_rt._VM)
    vm.spec, vm.boot = spec, "initramfs"
    vm.inst = type("I", (), {"image": None, "net": None, "mounts": []})()
    want = vm.spec_script()
    env = {"PATH": os.environ["PATH"], "K": str(tmp_path), "kit_spec": base64.b64encode(want).decode()}
    subprocess.run([busybox, "sh", "-c", "die() { echo \"$*\"; exit 1; }\n" + branch], env=env, check=True,
                   timeout=10)
    assert (tmp_path / "spec.sh").read_bytes() == want


def test_qmp_calls_work_where_an_event_loop_already_runs(tmp_path):
    """A notebook kernel's main thread runs an asyncio loop: a graceful quit must still be sent.

    The QMP peer is a few lines of socket server speaking QEMU's protocol (greeting, capabilities,
    one command): what is tested is the kit's client, not QEMU.
    """
    import asyncio
    import json
    import socket
    import threading

    from kit.vm import qmp

    path = tmp_path / "qmp.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    seen = []

    def serve():
        for _ in range(2):
            conn, _ = srv.accept()
            with conn, conn.makefile("rb") as r:
                conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
                for line in r:
                    name = json.loads(line)["execute"]
                    seen.append(name)
                    reply = {"status": "running"} if name == "query-status" else {}
                    conn.sendall(json.dumps({"return": reply}).encode() + b"\n")
                    if name == "quit":
                        break

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def in_a_running_loop():
        return qmp.status(path), qmp.quit(path)

    try:
        assert asyncio.run(in_a_running_loop()) == ("running", True)
        assert seen == ["qmp_capabilities", "query-status", "qmp_capabilities", "quit"]
    finally:
        srv.close()
    assert qmp.status(tmp_path / "gone.sock") is None and qmp.quit(tmp_path / "gone.sock") is False
