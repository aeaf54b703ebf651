"""The kit's own guest kernel (kit.vm.kbuild, kit.vm.kernel.select) and how a VM boots it (issue 23).

Unit tests of the fragment, the cache key, the fallback to the distribution's kernel and the command
line (PVH or bzImage, KVM or TCG, ACPI or not) need no build; the last tests check the real
fragment and the kernel ``make setup`` built, and boot it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kit.errors import InvalidSpec, RuntimeUnavailable
from kit.vm import kbuild, machine
from kit.vm import kernel as kmod

FRAGMENT = """# comment
CONFIG_A=y
# CONFIG_B is not set
CONFIG_N=16
CONFIG_S="x y"
"""


def test_fragment_is_read_as_kconfig_reads_it():
    assert kbuild.parse_fragment(FRAGMENT) == {"CONFIG_A": "y", "CONFIG_B": None, "CONFIG_N": "16",
                                               "CONFIG_S": '"x y"'}
    assert kbuild.parse_fragment("CONFIG_A=y\nCONFIG_A=n\n") == {"CONFIG_A": "n"}  # the last one wins
    with pytest.raises(kbuild.BuildFailed, match="line 2 is not CONFIG_NAME=value"):
        kbuild.parse_fragment("CONFIG_A=y\nA=y\n")


def test_an_option_the_final_config_lost_is_named():
    wanted = kbuild.parse_fragment(FRAGMENT)
    final = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=16\nCONFIG_S="x y"\nCONFIG_OTHER=y\n'
    assert kbuild.missing_options(wanted, final) == []
    # an unset option may simply be absent; a wanted one that is absent or different is named
    assert kbuild.missing_options(wanted, final.replace("# CONFIG_B is not set\n", "")) == []
    lost = final.replace("CONFIG_A=y\n", "").replace("CONFIG_N=16", "CONFIG_N=8") + "CONFIG_B=y\n"
    assert kbuild.missing_options(wanted, lost) == ["CONFIG_A=y (got: unset)", "CONFIG_B unset (got: y)",
                                                    "CONFIG_N=16 (got: 8)"]


def test_cache_key_covers_source_version_fragment_and_recipe():
    k = kbuild.cache_key("6.1.192-3", b"CONFIG_A=y\n")
    assert k.startswith("kit-") and len(k) == 20
    assert k == kbuild.cache_key("6.1.192-3", b"CONFIG_A=y\n")
    others = {kbuild.cache_key("6.1.193-1", b"CONFIG_A=y\n"), kbuild.cache_key("6.1.192-3", b"CONFIG_A=n\n"),
              kbuild.cache_key("6.1.192-3", b"CONFIG_A=y\n", recipe=kbuild.RECIPE + 1)}
    assert k not in others and len(others) == 3


def _source(tmp_path: Path, version: str = "6.1.192-3") -> kbuild.Source:
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    tarball.write_bytes(b"not really")
    return kbuild.Source(tarball, "linux-source-6.1", version)


def _fake_build(base: Path, key: str, fragment: bytes, built_at: float = 1.0) -> Path:
    d = base / key
    d.mkdir(parents=True)
    (d / "vmlinuz").write_bytes(b"bz")
    (d / "vmlinux").write_bytes(b"\x7fELF")
    (d / "config").write_text("CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_9P_FS=y\n"
                              "CONFIG_NET_9P=y\nCONFIG_NET_9P_VIRTIO=y\n")
    (d / "build.json").write_text(json.dumps({"recipe": kbuild.RECIPE, "fragment_sha256": kbuild.fragment_sha(fragment),
                                              "built_at": built_at}))
    return d


def test_cached_build_by_key_or_without_source_by_fragment(tmp_path):
    src = _source(tmp_path)
    base = tmp_path / "kernels"
    frag = b"CONFIG_A=y\n"
    assert kbuild.cached_build(base, src, frag) is None
    d = _fake_build(base, kbuild.cache_key(src.version, frag), frag)
    assert kbuild.cached_build(base, src, frag) == d
    assert kbuild.cached_build(base, _source(tmp_path, "6.1.200-1"), frag) is None  # a new source: built anew
    # the source package removed since: the newest build of this very fragment still serves
    newer = _fake_build(base, "kit-00000000000000ff", frag, built_at=2.0)
    _fake_build(base, "kit-0000000000000fff", b"CONFIG_B=y\n", built_at=3.0)
    assert kbuild.cached_build(base, None, frag) == newer


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private KIT_HOME with a cached distribution kernel, and a kernel source that is 'installed'."""
    monkeypatch.setenv("KIT_HOME", str(tmp_path / "home"))
    distro = tmp_path / "home" / "kernels" / "6.1.0-57-cloud-amd64"
    distro.mkdir(parents=True)
    (distro / "vmlinuz").write_bytes(b"bz")
    (distro / "config").write_text("CONFIG_ACPI=y\nCONFIG_VIRTIO_MMIO=m\n")
    src = _source(tmp_path)
    monkeypatch.setattr(kbuild, "find_source", lambda *a, **kw: src)
    return tmp_path / "home" / "kernels", src


def test_default_is_the_distro_kernel_with_the_reason_until_the_kit_kernel_is_built(home):
    base, src = home
    k, why = kmod.select()
    assert k.kind == "distro" and k.version == "6.1.0-57-cloud-amd64"
    assert "not built yet" in why and "python -m kit.vm.kernel build" in why
    frag = kbuild.FRAGMENT.read_bytes()
    _fake_build(base, kbuild.cache_key(src.version, frag), frag)
    k, why = kmod.select()
    assert k.kind == "kit" and k.vmlinux is not None and k.modules is None and "default" in why
    assert kmod.cached() == k  # what the probe and the disk figures take as the default
    assert kmod.select("distro")[0].kind == "distro"
    assert kmod.has_9p(k) and not k.acpi and k.supports_microvm()  # volumes need no second kernel


def test_a_failed_build_falls_back_with_its_reason_and_is_not_retried_by_a_run(home, monkeypatch):
    base, src = home
    key = kbuild.cache_key(src.version, kbuild.FRAGMENT.read_bytes())

    def failing(dest, source, fragment_path, log, jobs, say):
        log.write_text("cc1: out of memory\n")
        raise kbuild.BuildFailed("make bzImage failed (exit 2): cc1: out of memory")

    monkeypatch.setattr(kbuild, "_build_into", failing)
    with pytest.raises(kbuild.BuildFailed, match="out of memory"):
        kmod.build_kit()
    assert kbuild.failure(base, key)["reason"].endswith("cc1: out of memory")
    k, why = kmod.select()
    assert k.kind == "distro" and "failed to build" in why and "out of memory" in why
    calls = []
    monkeypatch.setattr(kbuild, "_build_into", lambda *a: calls.append(a))
    with pytest.raises(RuntimeUnavailable, match="kernel='kit': the kit's kernel failed to build"):
        kmod.select("kit")  # asked for by name: the recorded failure, not a silent substitute
    assert calls == []  # a run never starts a build that failed: 'python -m kit.vm.kernel build' retries


def test_a_build_without_source_says_what_to_install(home, monkeypatch):
    monkeypatch.setattr(kbuild, "find_source", lambda *a, **kw: None)
    with pytest.raises(kbuild.BuildFailed, match="apt-get install linux-source-6.1"):
        kmod.build_kit()
    k, why = kmod.select()
    assert k.kind == "distro" and "source is not installed" in why


def test_modules_go_only_with_a_kernel_path(home):
    with pytest.raises(InvalidSpec, match="modules= goes with kernel=/path"):
        kmod.select("kit", "/lib/modules/x")
    with pytest.raises(InvalidSpec, match="or kernel='kit' or 'distro'"):
        kmod.select("kitt")


def test_pvh_where_qemu_has_it_else_the_bzimage():
    bz, elf = Path("/k/vmlinuz"), Path("/k/vmlinux")
    assert machine.boot_image(bz, elf, (7, 2, 19)) == elf
    assert machine.boot_image(bz, elf, (4, 0)) == elf
    assert machine.boot_image(bz, elf, (3, 1, 1)) == bz  # QEMU before 4.0 boots no PVH ELF
    assert machine.boot_image(bz, elf, None) == bz  # unknown: the safe choice
    assert machine.boot_image(bz, None, (7, 2)) == bz  # a distribution kernel has no vmlinux here


def _cfg(**kw):
    base = dict(kernel=Path("/k/vmlinux"), initrd=Path("/k/initrd"))
    base.update(kw)
    return machine.VMConfig(**base)


def _after(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("acpi", [True, False])
def test_microvm_acpi_follows_the_kernel_and_q35_is_q35(acpi):
    mvm = machine.argv(_cfg(machine="microvm", acpi=acpi))
    (m,) = _after(mvm, "-M")
    assert m.startswith("microvm,") and f"acpi={'on' if acpi else 'off'}" in m.split(",")
    assert _after(mvm, "-kernel") == ["/k/vmlinux"]
    assert _after(machine.argv(_cfg(machine="q35", acpi=acpi)), "-M") == ["q35"]


@pytest.mark.parametrize("accel,cpu", [("kvm", ["host"]), ("tcg", [])])
def test_the_kit_kernel_command_line_under_kvm_and_tcg(accel, cpu):
    a = machine.argv(_cfg(machine="microvm", acpi=False, accel=accel, tsc_khz=2_000_000))
    assert _after(a, "-accel") == [accel] and _after(a, "-cpu") == cpu
    words = _after(a, "-append")[0].split()
    assert "kit_bus=mmio" in words and "console=ttyS0" in words
    assert ("tsc_early_khz=2000000" in words) == (accel == "tcg")  # KVM: kvmclock says it


def test_the_kernel_make_setup_built_is_the_default():
    """make setup builds it: the VM tests run on it, not on a fallback."""
    k, why = kmod.kit_kernel()
    assert k is not None, why
    assert kmod.cached() == k and k.vmlinux is not None and k.modules is None
    meta = json.loads((k.vmlinuz.parent / "build.json").read_text())
    assert meta["source_version"] == kbuild.find_source().version
    assert kbuild.missing_options(kbuild.parse_fragment(kbuild.FRAGMENT.read_text()), k.config.read_text()) == []
    assert os.path.getsize(k.vmlinuz) < 8 * 1024**2  # a minimal kernel: Debian's cloud bzImage is ~14 MB


def test_the_built_kernel_is_a_hit_and_a_changed_fragment_a_miss(tmp_path, monkeypatch):
    """By the hash: building again finds the kernel make setup built and compiles nothing; the fragment
    with one more option is another key, so a build (a stand-in for the compiler here), then a hit."""
    k, why = kmod.kit_kernel()
    assert k is not None, why
    calls = []

    def compiler(dest, source, fragment_path, log, jobs, say):
        calls.append(fragment_path)
        _fake_build(dest.parent, dest.name, fragment_path.read_bytes())

    monkeypatch.setattr(kbuild, "_build_into", compiler)
    assert kmod.build_kit() == k and calls == []
    frag = tmp_path / "kernel.config"
    frag.write_bytes(kbuild.FRAGMENT.read_bytes() + b"CONFIG_KIT_TEST=y\n")
    base = tmp_path / "kernels"
    d = kbuild.build(base, fragment_path=frag)
    assert calls == [frag] and d.name == kbuild.cache_key(kbuild.find_source().version, frag.read_bytes())
    assert d.name != k.version
    assert kbuild.build(base, fragment_path=frag) == d and calls == [frag]


# -- booting each kernel (slow: real VMs under TCG here) -----------------------------------------

@pytest.mark.slow
def test_each_kernel_boots_and_says_which_it_is(ip):
    """kit.run with kernel='kit' and 'distro', and %vm run --kernel: the run's info names the kernel, how
    it was entered and why it was chosen; the kit's kernel needs no modules and says nothing before init."""
    import kit
    from conftest import need

    need("qemu")
    mine = kit.run("busybox", ["cat", "/proc/version"], runtime="qemu", timeout=120)
    assert mine.exit_code == 0 and mine.info["kernel_kind"] == "kit" and mine.info["kernel_entry"] == "pvh"
    assert mine.info["kernel_reason"] == "the kit's own kernel (the default)"
    assert mine.stdout.startswith("Linux version 6.1.") and "kit@kit" in mine.stdout
    assert "kernel" not in mine.phases and mine.phases["launched"] < mine.phases["init"] < mine.phases["exited"]
    theirs = kit.run("busybox", ["cat", "/proc/version"], runtime="qemu", kernel="distro", timeout=120)
    assert theirs.exit_code == 0 and theirs.info["kernel_kind"] == "distro" and theirs.info["kernel_entry"] == "bzimage"
    assert "kit@kit" not in theirs.stdout and theirs.phases["kernel"] < theirs.phases["init"]
    r = ip.run_line_magic("vm", "run --kernel distro busybox cat /proc/version")
    assert r.info["kernel_kind"] == "distro" and r.stdout == theirs.stdout


@pytest.mark.slow
def test_a_study_compares_kernels():
    """Study(kernels=[...]): each VM cell once per kernel, rows with a kernel column, views keep them apart."""
    from conftest import need

    from kit.bench import Study

    need("qemu")
    study = Study(runtimes="process,qemu", kernels="kit,distro", repeat=1, warmup=0, parts="startup,memory",
                  progress=False)
    df = study.run()
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"]
    for part in ("startup", "memory"):  # the startup runs and the steady-state pass, once per kernel
        rows = df[df["part"] == part]
        vm = rows[rows["runtime"] == "qemu"]
        assert set(vm["kernel"]) == {"kit", "distro"} and set(rows[rows["runtime"] == "process"]["kernel"]) == {""}
        assert set(vm[vm["kernel"] == "kit"]["metric"]) == set(vm[vm["kernel"] == "distro"]["metric"])
    s = study.summary("startup")
    runs = s[(s["metric"] == "launch_to_exit")].set_index("runtime")
    assert {"process", "qemu/kit", "qemu/distro"} <= set(runs.index)
    assert study.meta["params"]["kernels"] == ["kit", "distro"]


@pytest.mark.slow
def test_the_kit_kernel_has_bpf_for_cgroup_v2_device_rules():
    """runc and crun enforce device rules on cgroup v2 as BPF programs attached to the container's group:
    the kit's kernel must have bpf() (its sysctl exists only then) and cgroup BPF (BPF_CGROUP_DEVICE)."""
    import kit
    from conftest import need

    need("qemu")
    k, why = kmod.kit_kernel()
    assert k is not None, why
    assert k.option("BPF_SYSCALL") == "y" and k.option("CGROUP_BPF") == "y"
    r = kit.run("busybox", ["cat", "/proc/sys/kernel/unprivileged_bpf_disabled"], runtime="qemu", timeout=120)
    # 2: only root loads BPF programs (BPF_UNPRIV_DEFAULT_OFF, as in Debian's kernel)
    assert r.info["kernel_kind"] == "kit" and (r.exit_code, r.stdout.strip()) == (0, "2"), r
