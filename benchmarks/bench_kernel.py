"""Guest kernel benchmark (issue 23): the kit's own minimal kernel against the distribution's.

Parts, each interleaved (every round in a fresh seeded random order, one warm-up round first):

* ``run``: a cold ``kit.run("busybox", ["true"], runtime="qemu", kernel=K)`` for K = kit and distro,
  under the accelerator the kit chose (TCG on this machine kind): launch_to_exit (phase 'requested'
  to 'exited', as the study's metric), the milestones after the request (``init``: the kit init's
  mark), the kernel's own boot (``init`` - ``launched``) and the call's wall time.
* ``memory``: one idle VM per kernel (busybox ``sleep``): ``guest_used`` (MemTotal - MemAvailable
  of the guest's /proc/meminfo, read through exec) and the VM's PSS (its QEMU process), each
  once it is steady (two readings 0.5 s apart within 2 %).
* ``boot``: the issue's table, re-measured: QEMU typed out as the issue did (``-M microvm -accel
  tcg -m 256 -smp 1``, a trivial initramfs: static busybox as /init prints /proc/uptime and
  ``reboot -f``), QEMU start to exit and the kernel's uptime at init, for the distribution's
  bzImage, its vmlinux unpacked from that bzImage (through PVH), and the kit's bzImage (LZ4) and
  vmlinux (PVH). The kernel command line is the kit's (:func:`kit.vm.machine.kernel_args`).
* ``options``: the same trivial boot of the kit's kernel through PVH with the kit's command line
  and machine options, then with each kernel argument or machine option left out (or, for
  ``pci=off``, added): what each costs or saves. Why the kit keeps each word.

Targets (issue 23, against the distribution's kernel in the same run), checked in summary.md:
the kit kernel's median launch_to_exit at most 0.6 s and at most 40 % of the distribution's;
its ``init`` phase at most 0.5 s after the request; guest_used and PSS smaller.

For reference, not measured here: Firecracker's specification promises at most 125 ms from its
InstanceStart API call to the guest's /sbin/init, on an AWS i3.metal host with KVM
(https://github.com/firecracker-microvm/firecracker/blob/0aad46c68d1c83150ca2123a8e7477458acc92ee/SPECIFICATION.md).

Writes ``benchmarks/results/kernel/``: runs.csv, memory.csv, boot.csv, options.csv, summary.md,
record.json.

Usage: ``.venv/bin/python benchmarks/bench_kernel.py [--runs 15] [--boot-runs 7] [--parts run,memory,boot,options]
[--kit-builds kit-<hash>,...]`` (``--kit-builds``: other cached builds of the kit's kernel in the run part, e.g. the
previous fragment's, each booted as the kit kernel is)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kit
from kit import usage
from kit.bench import storage
from kit.bench.footprint import guest_meminfo
from kit.images.builtin import static_busybox
from kit.vm import accel, initramfs, kernel, machine

RESULTS = Path(__file__).resolve().parent / "results" / "kernel"
KERNELS = ("kit", "distro")
PHASES = ["launched", "kernel", "init", "spec", "command", "command_exited", "exited"]
TIMEOUT = 120
#: The trivial init of the boot table (the issue's): uptime at init on the console, then power off.
TRIVIAL_INIT = "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n" \
               "/bin/busybox echo \"INIT uptime: $(/bin/busybox cat /proc/uptime)\"\n/bin/busybox reboot -f\n"
FIRECRACKER = ("Firecracker's specification: at most 125 ms from InstanceStart to the guest's /sbin/init, "
               "AWS i3.metal with KVM ([SPECIFICATION.md](https://github.com/firecracker-microvm/firecracker/blob/"
               "0aad46c68d1c83150ca2123a8e7477458acc92ee/SPECIFICATION.md))")


def _median(xs):
    xs = [x for x in xs if x == x]  # NaN: a failed run
    return statistics.median(xs) if xs else float("nan")


def _interleaved(variants: dict, rounds: int, warmup: int, seed: int, label: str) -> list[dict]:
    """Run every variant once per round in a fresh random order; rows tagged with variant and round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    rows, shuffle = [], random.Random(seed).shuffle
    for i in range(rounds):
        order = list(variants)
        shuffle(order)
        for pos, name in enumerate(order):
            row = {"variant": name, "round": i, "position": pos, **variants[name]()}
            rows.append(row)
            print(f"{label} {name:28s} round {i}: {row.get('wall_s', float('nan')):.3f} s", file=sys.stderr)
    return rows


# -- run: kit.run with each kernel ---------------------------------------------------------

def run_once(kernel_choice: str) -> dict:
    """One cold run with ``kernel_choice``: kit, distro, or ``kit@KEY`` (another cached build of the kit's
    kernel, ``kernels/KEY``, booted as the kit kernel is: to compare two fragments in one interleaved run)."""
    t0 = time.time()
    if kernel_choice.startswith("kit@"):
        with _kit_build(kernel_choice[4:]):
            r = kit.run("busybox", ["true"], runtime="qemu", kernel="kit", timeout=TIMEOUT)
    else:
        r = kit.run("busybox", ["true"], runtime="qemu", kernel=kernel_choice, timeout=TIMEOUT)
    wall = time.time() - t0
    ph = r.phases
    row = {"wall_s": wall, "ok": r.exit_code == 0 and not r.timed_out, "kernel": r.info.get("kernel"),
           "entry": r.info.get("kernel_entry"), "machine": r.info.get("machine"), "accel": r.info.get("accel"),
           "launch_to_exit_s": ph["exited"] - ph["requested"]}
    for p in PHASES:
        row[f"{p}_s"] = ph[p] - ph["requested"] if p in ph else float("nan")
    row["kernel_boot_s"] = ph["init"] - ph["launched"] if "init" in ph else float("nan")
    return row


@contextlib.contextmanager
def _kit_build(key: str):
    """kit.vm.kernel's "kit" kernel is the cached build ``key`` while this lasts."""
    d = kernel.kernels_dir() / key
    if not (d / "build.json").is_file():
        raise SystemExit(f"bench_kernel: no kit kernel build {key!r} in {kernel.kernels_dir()} "
                         f"(give a kit-<hash> directory name)")
    saved = kernel.kit_kernel
    built = kernel.Kernel(d / "vmlinuz", None, key, d / "config", d / "vmlinux")
    kernel.kit_kernel = lambda: (built, "")
    try:
        yield
    finally:
        kernel.kit_kernel = saved


# -- memory: an idle VM per kernel -------------------------------------------------------------

def memory_once(kernel_choice: str) -> dict:
    with kit.start("busybox", ["sleep", "3600"], runtime="qemu", kernel=kernel_choice) as vm:
        pss = usage.steady(lambda: vm.memory()["pss"])
        info = usage.steady(lambda: _guest_used(vm.name))
        total = guest_meminfo(vm.name)["MemTotal"]
        return {"wall_s": 0.0, "kernel": vm.info.get("kernel"), "pss": pss, "guest_used": info,
                "guest_total": total}


def _guest_used(name: str) -> float:
    m = guest_meminfo(name)
    return float(m["MemTotal"] - m["MemAvailable"])


# -- boot: the table, typed out ---------------------------------------------------------

def trivial_initramfs(directory: Path) -> Path:
    """busybox as /init printing its uptime: the issue's trivial initramfs (kit.vm.initramfs's writer)."""
    out = directory / "trivial.cpio"
    with open(out, "wb") as f:
        c = initramfs.Cpio(f)
        for d in ("bin", "dev", "proc"):
            c.dir(d)
        c.node("dev/console", 0o020600, os.makedev(5, 1))
        c.file("bin/busybox", static_busybox().read_bytes(), 0o755)
        c.file("init", TRIVIAL_INIT.encode(), 0o755)
        c.close()
    return out


def unpacked_vmlinux(bzimage: Path, directory: Path) -> tuple[Path | None, str]:
    """The ELF kernel inside a bzImage (Debian's: LZ4, legacy frame), unpacked with lz4; or None and why."""
    data = bzimage.read_bytes()
    at = data.find(b"\x02\x21\x4c\x18")  # the LZ4 legacy frame's magic
    if at < 0:
        return None, "not an LZ4 bzImage"
    if not shutil.which("lz4"):
        return None, "lz4 is not installed (apt-get install lz4)"
    out = directory / "vmlinux-distro"
    p = subprocess.run(["lz4", "-dc"], input=data[at:], capture_output=True, timeout=60)
    elf = p.stdout
    if not elf.startswith(b"\x7fELF"):
        return None, f"lz4 gave no ELF ({p.stderr.decode(errors='replace').strip()[-100:]})"
    out.write_bytes(elf)
    return out, ""


def boot_argv(kernel_file: Path, initrd: Path, acpi: bool, append: str, machine_opts: str = "") -> list[str]:
    cfg = machine.VMConfig(kernel=kernel_file, initrd=initrd, acpi=acpi)
    return ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-M", machine.machine_arg(cfg) + machine_opts, "-accel", "tcg", "-smp", "1", "-m", "256M",
            "-kernel", str(kernel_file), "-initrd", str(initrd), "-append", append,
            "-serial", "stdio", "-nic", "none"]


def boot_once(argv: list[str]) -> dict:
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=60)
        out = p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        out = ""
    wall = time.monotonic() - t0
    up = float(out.split("INIT uptime: ")[1].split()[0]) if "INIT uptime: " in out else float("nan")
    return {"wall_s": wall if up == up else float("nan"), "uptime_at_init_s": up}


def boot_variants(tmp: Path, kit_k, distro_k, tsc_khz: int | None) -> tuple[dict, dict]:
    """The issue's table rows: name -> run function; and rows left out -> why."""
    initrd = trivial_initramfs(tmp)
    variants, left_out = {}, {}
    distro_elf, why = unpacked_vmlinux(distro_k.vmlinuz, tmp)
    files = [("Debian cloud 6.1 (bzImage)", distro_k.vmlinuz, distro_k.acpi),
             ("Debian cloud 6.1, uncompressed through PVH", distro_elf, distro_k.acpi),
             ("the kit's own 6.1, LZ4 bzImage", kit_k.vmlinuz, kit_k.acpi),
             ("the kit's own 6.1, uncompressed through PVH", kit_k.vmlinux, kit_k.acpi)]
    for name, f, acpi in files:
        if f is None:
            left_out[name] = why
            continue
        # each kernel's own command line (the kit's, without ACPI, leaves out its APIC timer)
        append = machine.kernel_args(machine.VMConfig(kernel=f, initrd=initrd, accel="tcg", tsc_khz=tsc_khz, acpi=acpi))
        variants[name] = lambda a=boot_argv(f, initrd, acpi, append): boot_once(a)
    return variants, left_out


def option_variants(tmp: Path, kit_k, tsc_khz: int | None) -> dict:
    """The kit's own kernel through PVH: the kit's command line, then without each word / machine option."""
    initrd = trivial_initramfs(tmp)
    cfg = machine.VMConfig(kernel=kit_k.vmlinux, initrd=initrd, accel="tcg", tsc_khz=tsc_khz, acpi=kit_k.acpi)
    words = machine.kernel_args(cfg).split()
    variants = {"the kit's": lambda a=boot_argv(kit_k.vmlinux, initrd, kit_k.acpi, " ".join(words)): boot_once(a)}
    for w in words:
        if w.startswith(("console=", "kit_bus=", "panic=", "reboot=")):
            continue  # needed: the console, the init's bus, power-off on panic (QEMU exits)
        rest = " ".join(x for x in words if x != w)
        variants[f"without {w.split('=')[0]}"] = lambda a=boot_argv(kit_k.vmlinux, initrd, kit_k.acpi, rest): boot_once(a)
    variants["with pci=off"] = lambda a=boot_argv(kit_k.vmlinux, initrd, kit_k.acpi, " ".join(words + ["pci=off"])): \
        boot_once(a)
    for opt in ("rtc=on", "x-option-roms=off"):
        mo = machine.MACHINE_ARGS["microvm"].replace("," + opt, "")
        a = boot_argv(kit_k.vmlinux, initrd, kit_k.acpi, " ".join(words))
        a[a.index("-M") + 1] = machine.machine_arg(cfg).replace(machine.MACHINE_ARGS["microvm"], mo)
        variants[f"without machine {opt.split('=')[0]}"] = lambda a=a: boot_once(a)
    return variants


# -- output -----------------------------------------------------------------------------------

def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _by(rows, key, variant):
    return [r[key] for r in rows if r["variant"] == variant and key in r]


def run_section(rows: list[dict]) -> list[str]:
    variants = list(dict.fromkeys([*KERNELS, *(r["variant"] for r in rows)]))  # kit, distro, then kit@KEY ones
    med = {k: {m: _median(_by(rows, m, k)) for m in ("launch_to_exit_s", "init_s", "kernel_boot_s", "wall_s")}
           for k in variants}
    ok = {k: sum(1 for r in rows if r["variant"] == k and r["ok"]) for k in variants}
    out = ["## Cold `kit.run(\"busybox\", [\"true\"], runtime=\"qemu\")`, kit kernel against the distribution's",
           "", "| kernel | entry | launch_to_exit (median) | init after the request | kernel boot (init - launched) "
           "| call's wall time | ok runs |", "|---|---|---|---|---|---|---|"]
    for k in variants:
        entry = next((r["entry"] for r in rows if r["variant"] == k), "")
        out.append(f"| {k} ({next((r['kernel'] for r in rows if r['variant'] == k), '')}) | {entry} | "
                   f"{med[k]['launch_to_exit_s']:.3f} s | {med[k]['init_s']:.3f} s | {med[k]['kernel_boot_s']:.3f} s | "
                   f"{med[k]['wall_s']:.3f} s | {ok[k]}/{len(_by(rows, 'ok', k))} |")
    kit_l, dis_l = med["kit"]["launch_to_exit_s"], med["distro"]["launch_to_exit_s"]
    paired = [a / b for a, b in zip(_by(rows, "launch_to_exit_s", "kit"), _by(rows, "launch_to_exit_s", "distro"))]
    out += ["", "Targets (issue 23):", "",
            f"- median launch_to_exit at most 0.6 s: {kit_l:.3f} s, {'met' if kit_l <= 0.6 else 'NOT met'}",
            f"- at most 40 % of the distribution's in the same run: {kit_l / dis_l:.0%} "
            f"(paired by round: median {_median(paired):.0%}), {'met' if kit_l <= 0.4 * dis_l else 'NOT met'}",
            f"- the init phase at most 0.5 s: {med['kit']['init_s']:.3f} s, "
            f"{'met' if med['kit']['init_s'] <= 0.5 else 'NOT met'}"]
    return out


def memory_section(rows: list[dict]) -> list[str]:
    out = ["## An idle VM (busybox `sleep`), each kernel", "", "| kernel | guest_used | guest_total | VM PSS (QEMU) |",
           "|---|---|---|---|"]
    med = {}
    for k in KERNELS:
        med[k] = {m: _median(_by(rows, m, k)) for m in ("guest_used", "guest_total", "pss")}
        out.append(f"| {k} | {med[k]['guest_used'] / 2**20:.1f} MiB | {med[k]['guest_total'] / 2**20:.1f} MiB | "
                   f"{med[k]['pss'] / 2**20:.1f} MiB |")
    smaller = med["kit"]["guest_used"] < med["distro"]["guest_used"] and med["kit"]["pss"] < med["distro"]["pss"]
    out += ["", f"- the minimal kernel smaller in guest_used and PSS: {'met' if smaller else 'NOT met'}"]
    return out


def table_section(rows: list[dict], left_out: dict, title: str, note: str) -> list[str]:
    names = list(dict.fromkeys(r["variant"] for r in rows))
    out = [title, "", note, "", "| variant | wall, QEMU start to exit (median) | kernel uptime at init | runs |",
           "|---|---|---|---|"]
    for n in names:
        out.append(f"| {n} | {_median(_by(rows, 'wall_s', n)):.3f} s | {_median(_by(rows, 'uptime_at_init_s', n)):.2f} s "
                   f"| {len(_by(rows, 'wall_s', n))} |")
    out += [f"| {n} | not measured: {why} | | |" for n, why in left_out.items()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="rounds of the run part")
    ap.add_argument("--memory-runs", type=int, default=3)
    ap.add_argument("--boot-runs", type=int, default=7, help="rounds of the boot and options parts")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--parts", default="run,memory,boot,options")
    ap.add_argument("--out", default=str(RESULTS),
                    help="results folder (default: the committed benchmarks/results/kernel; a scratch folder for trials)")
    ap.add_argument("--kit-builds", default="",
                    help="comma-separated kit-<hash> keys of other cached kit kernel builds to add to the run part "
                         "(e.g. the previous fragment's, to compare two fragments in one interleaved run)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    parts = set(args.parts.split(","))
    started = time.time()
    kit_k, why = kernel.kit_kernel()
    if kit_k is None:
        raise SystemExit(f"bench_kernel: {why}")
    distro_k = kernel.distro()
    verdict = accel.choose(kit_k)
    tsc_khz = accel.guest_tsc_khz(verdict.accel)
    out.mkdir(parents=True, exist_ok=True)
    head = [f"# The kit's guest kernel against the distribution's ({time.strftime('%Y-%m-%d %H:%M')})", "",
            f"accel={verdict.accel} ({verdict.reason}); kit kernel {kit_k.version}, distribution kernel "
            f"{distro_k.version}; load average before: {os.getloadavg()[0]:.2f}", ""]
    body, outputs = [], ["summary.md"]
    if "run" in parts:
        choices = [*KERNELS, *(f"kit@{key}" for key in args.kit_builds.split(",") if key)]
        rows = _interleaved({k: (lambda k=k: run_once(k)) for k in choices}, args.runs, args.warmup, args.seed, "run")
        _write_csv(out / "runs.csv", rows)
        body += run_section(rows) + [""]
        outputs.append("runs.csv")
    if "memory" in parts:
        rows = _interleaved({k: (lambda k=k: memory_once(k)) for k in KERNELS}, args.memory_runs, 0, args.seed, "memory")
        _write_csv(out / "memory.csv", rows)
        body += memory_section(rows) + [""]
        outputs.append("memory.csv")
    with tempfile.TemporaryDirectory(prefix="kit-bench-kernel-") as tmp:
        if "boot" in parts:
            variants, left_out = boot_variants(Path(tmp), kit_k, distro_k, tsc_khz)
            rows = _interleaved(variants, args.boot_runs, args.warmup, args.seed, "boot")
            _write_csv(out / "boot.csv", rows)
            body += table_section(rows, left_out, "## The issue's table, re-measured",
                                  "QEMU typed out: `-M microvm -accel tcg -m 256M -smp 1`, a trivial initramfs "
                                  "(static busybox as /init: prints /proc/uptime, `reboot -f`), the kit's kernel "
                                  "command line.") + [""]
            outputs.append("boot.csv")
        if "options" in parts:
            rows = _interleaved(option_variants(Path(tmp), kit_k, tsc_khz), args.boot_runs, args.warmup, args.seed,
                                "options")
            _write_csv(out / "options.csv", rows)
            body += table_section(rows, {}, "## Each kernel argument and machine option (kit kernel, PVH)",
                                  "The same trivial boot with the kit's command line and machine options, then "
                                  "with one left out (or pci=off added).") + [""]
            outputs.append("options.csv")
    body += [f"For reference, not measured here: {FIRECRACKER}.", "",
             f"Took {time.time() - started:.0f} s; seed {args.seed}, {args.warmup} warm-up round(s)."]
    (out / "summary.md").write_text("\n".join(head + body) + "\n")
    storage.record(out, __file__, outputs)
    print("\n".join(head + body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
