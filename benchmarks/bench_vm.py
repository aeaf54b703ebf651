"""VM boot benchmark: hand-written QEMU commands versus kit's VM runs of the same command.

For ``echo hello`` in the busybox image, under the accelerator the kit chose (TCG
on this machine kind), on each machine (q35, microvm) and each boot mode:

* ``hand <machine> initramfs``: what a person would type to get ``hello`` out of a
  VM: the same kernel, the same kernel arguments (:func:`kit.vm.machine.kernel_args`)
  and the same initramfs kit boots (kit's init part and the image), with the image's
  shell as init (``rdinit=/hand-init``, a two-line script ``#!/bin/sh`` + ``echo hello;
  reboot -f`` appended to that initramfs as a second archive) and the answer on the serial console. No disk: the workload does not read one.
* ``hand <machine> disk``: kit's base initramfs and the image's ext4 disk; the
  shell as init loads the virtio modules the disk needs, mounts it read-only and
  runs ``echo hello`` chrooted into it.
* ``literal <machine> <boot>``: the issue's literal baseline: a hand-written command
  that boots kit's very own kernel, kit's initramfs (the same cached file kit uses)
  and, for ``disk``, kit's disk, with the same machine, kernel arguments and devices
  (virtio-serial ports ``kit.ctl``, ``kit.out``, ``kit.err``, ``kit.exec``), so the
  guest runs kit's own init. The differences: each port is a plain ``-chardev file``
  (the output lands in files), the console is QEMU's stdio, no QMP, and the run spec
  rides on the kernel command line (``kit_spec=<base64>``, which the init decodes)
  instead of the control port. kit.out must hold ``hello`` and kit.ctl ``exited 0``.
* ``kit <machine> <boot>``: ``kit.run("busybox", ["echo", "hello"], runtime="qemu",
  machine=..., boot=...)``: kit's own init, run spec over the control port,
  stdout and stderr on ports of their own, exit code reported, files cleaned up.

Each kit row is compared with both baselines. Against ``hand`` the difference is
what kit's init costs on top of what the host adds; against ``literal`` it is only
what kit adds around QEMU on the host (set-up, sockets and readers, QMP, phase
stamps, the spec over the port). Target for kit's overhead: within 5 %.
Variants are interleaved in every round, in a fresh random order (seeded), so
drift in the host's load and any after-effect of one variant on the next hit all
alike (with a fixed order, kit's q35 initramfs boots once took 0.26 s longer to reach
init than in runs of that pair alone); one warm-up round first. Figures are medians (with mean, sd, min, max and
hyperfine's outlier count: runs more than 3 robust standard deviations, 1.4826
MAD, from the median); the overhead is also given paired, as the median over
rounds of kit/hand - 1. Kit rows split the run into the phases the guest marks
(launched -> kernel -> init -> spec -> command -> command_exited -> exited) plus the
host's own work before QEMU starts (setup) and after it ended (teardown); hand
rows into launched -> kernel (first console byte) -> output ("hello" arrives)
-> vm_exited; literal rows into launched -> kernel -> init (the init's mark on the
console) -> vm_exited. Every exit is seen through a pidfd, not by polling.

Writes ``benchmarks/results/vm_runs.csv`` (every run), ``vm_summary.csv`` and
``vm_summary.md`` (the table).

Usage: ``.venv/bin/python benchmarks/bench_vm.py [--runs 15] [--warmup 1] [--machines q35,microvm]
[--baselines hand,literal]``
"""

from __future__ import annotations

import argparse
import atexit
import base64
import csv
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kit
from kit._proc import wait_exit
from kit.bench import storage
from kit.runtimes.base import InstanceState
from kit.runtimes.qemu import DEFAULT_MEMORY, _VM
from kit.spec import RunSpec
from kit.vm import accel, disk, initramfs, kernel, machine, qemubin

RESULTS = Path(__file__).resolve().parent / "results"
KIT_PHASES = ["launched", "kernel", "init", "spec", "command", "command_exited", "exited"]
HAND_PHASES = ["launched", "kernel", "init", "output", "vm_exited"]  # init: literal rows only
TIMEOUT = 60
CMDLINE_MAX = 2048  # x86's COMMAND_LINE_SIZE, with its NUL
#: What each kit row is compared with (the variant prefix) and how the table names it.
BASELINES = {
    "hand": "hand-written, its own minimal init (shell as init)",
    "literal": "hand-written, kit's own kernel, initramfs, disk and init; spec on the kernel command line",
}


def _image(k) -> Path:
    """The kernel file kit boots (the vmlinux through PVH where there is one), so every row boots the same."""
    return machine.boot_image(k.vmlinuz, k.vmlinux, qemubin.version(shutil.which("qemu-system-x86_64") or ""))


def hand_written(k, mach: str, boot: str, accel_name: str, tsc_khz: int | None, initrd: Path,
                 disk_path: Path | None, workdir: Path) -> list[str]:
    """The command a person would type: no kit channels, the shell as init, console on stdout.

    The shell's script is a file the initramfs gains (a second cpio archive appended to kit's, which
    the kernel unpacks on top; written into ``workdir``), not ``rdinit=/bin/sh -- -c SCRIPT``: microvm
    names its virtio-mmio devices by appending ``virtio_mmio.device=`` words to the end of the kernel
    command line, which after a ``--`` become the init's arguments, so a kernel that learns its devices
    from the command line (the kit's own) would never see the disk.
    """
    cfg = machine.VMConfig(kernel=_image(k), initrd=initrd, accel=accel_name, machine=mach, tsc_khz=tsc_khz,
                           acpi=k.acpi)
    if boot == "initramfs":
        script = "echo hello; reboot -f"
        init = "/bin/sh"
    else:
        # no virtio_console; none at all for a kernel that builds them in (the kit's own)
        mods = " ".join(initramfs.MODULES[machine.VIRTIO_BUS[mach]][:-1] + ["virtio_blk"]) if k.modules else ""
        script = (f"export PATH=/.kit/bin; mount -t devtmpfs dev /dev; "
                  f"for m in {mods}; do insmod /.kit/lib/$m.ko; done; "
                  "while [ ! -b /dev/vda ]; do usleep 2000; done; "
                  "mount -t ext4 -o ro,noload /dev/vda /mnt; PATH=/bin:/usr/bin chroot /mnt echo hello; reboot -f")
        init = "/.kit/bin/sh"
    hand_initrd = workdir / f"hand-{mach}-{boot}.cpio"
    with open(hand_initrd, "wb") as f:
        f.write(initrd.read_bytes())
        c = initramfs.Cpio(f)
        c.file("hand-init", f"#!{init}\n{script}\n".encode(), 0o755)
        c.close()
    argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-M", machine.machine_arg(cfg), "-accel", accel_name, "-smp", "1",
            "-m", f"{DEFAULT_MEMORY // 1024**2}M", "-kernel", str(cfg.kernel), "-initrd", str(hand_initrd),
            "-append", f"{machine.kernel_args(cfg)} rdinit=/hand-init",
            "-serial", "stdio", "-nic", "none"]
    if disk_path is not None:
        argv += ["-drive", f"file={disk_path},format=raw,if=none,id=root,readonly=on",
                 "-device", f"virtio-blk-{machine.DEVICE_SUFFIX[mach]},drive=root"]
    return argv


def spec_b64(img, boot: str) -> str:
    """Kit's own run spec for ``echo hello`` (what it sends on the control port), in base64."""
    vm = _VM.__new__(_VM)  # only spec_script is used: no QEMU, no files
    vm.spec, vm.boot = RunSpec(image=img.name, command=["echo", "hello"]), boot
    # the runtime's own record of an instance with no volumes and no network, as kit.run makes one
    vm.inst = InstanceState(name="bench-vm", runtime="qemu", spec=vm.spec, image=img, id="bench-vm",
                            state_dir=Path("/nonexistent"), ctx=None)
    return base64.b64encode(vm.spec_script()).decode()


def literal_written(k, mach: str, accel_name: str, tsc_khz: int | None, initrd: Path,
                    disk_path: Path | None, spec: str, port_dir: str) -> list[str]:
    """The issue's literal baseline: kit's kernel, initramfs, disk, devices and init, typed out.

    Written out flag by flag (not through :func:`kit.vm.machine.argv`) as a person would,
    with each port on a plain file in ``port_dir`` and the spec on the kernel command line.
    """
    cfg = machine.VMConfig(kernel=_image(k), initrd=initrd, accel=accel_name, machine=mach, tsc_khz=tsc_khz,
                           append=f"kit_spec={spec}", acpi=k.acpi)
    append = machine.kernel_args(cfg)
    if len(append) >= CMDLINE_MAX:
        raise SystemExit(f"the spec makes the kernel command line {len(append)} bytes, over x86's "
                         f"{CMDLINE_MAX - 1}: the literal baseline only takes small specs")
    bus = machine.DEVICE_SUFFIX[mach]
    serial = f"virtio-serial-{bus},max_ports=5" + (",vectors=0" if bus == "pci" and accel_name == "tcg" else "")
    argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-M", machine.machine_arg(cfg), "-accel", accel_name, "-smp", "1",
            "-m", f"{DEFAULT_MEMORY // 1024**2}M", "-kernel", str(cfg.kernel), "-initrd", str(initrd),
            "-append", append, "-serial", "stdio", "-device", serial]
    for i, name in enumerate(("kit.ctl", "kit.out", "kit.err", "kit.exec")):
        argv += ["-chardev", f"file,id=p{i},path={port_dir}/{name},append=on",
                 "-device", f"virtserialport,chardev=p{i},name={name}"]
    if disk_path is not None:
        argv += ["-drive", f"file={disk_path},format=raw,if=none,id=root,readonly=on",
                 "-device", f"virtio-blk-{bus},drive=root"]
    return argv + ["-nic", "none"]


def run_literal(make_argv) -> dict:
    """One literal run in a fresh directory for the port files; ok if they say hello and exit 0."""
    port_dir = tempfile.mkdtemp(prefix="kit-bench-literal-")
    try:
        row = run_hand(make_argv(port_dir), check_output=False)
        out = Path(port_dir, "kit.out").read_bytes()
        ctl = Path(port_dir, "kit.ctl").read_bytes()
        if row["ok"] and not (out == b"hello\n" and b"exited 0\n" in ctl):
            row.update(ok=False, error=f"kit.out {out[:40]!r}, kit.ctl {ctl[-40:]!r}")
        return row
    finally:
        shutil.rmtree(port_dir, ignore_errors=True)


def run_hand(argv: list[str], check_output: bool = True) -> dict:
    t0 = time.time()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stamps, seen = {"launched": t0}, bytearray()

    def read():  # stamp the first console byte, kit's init mark and the workload's answer as they arrive
        for chunk in iter(lambda: p.stdout.read1(65536), b""):
            now = time.time()
            stamps.setdefault("kernel", now)
            seen.extend(chunk)
            if b"kit:init" in seen:
                stamps.setdefault("init", now)
            if check_output and b"hello" in seen:
                stamps.setdefault("output", now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_exit(p, TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
    p.wait()
    stamps["vm_exited"] = time.time()
    reader.join(5)
    err = p.stderr.read().decode(errors="replace")[-200:]
    p.stdout.close()
    p.stderr.close()
    total = time.time() - t0
    ok = ("output" in stamps or not check_output) and p.returncode == 0
    row = {"total_s": total, "ok": ok, "error": "" if ok else (err or f"exit {p.returncode}, no hello")}
    row.update(_phase_deltas(stamps, HAND_PHASES))
    row["teardown_s"] = t0 + total - stamps["vm_exited"]
    return row


def run_kit(**options) -> dict:
    t0 = time.time()
    try:
        r = kit.run("busybox", ["echo", "hello"], runtime="qemu", timeout=TIMEOUT, **options)
    except kit.KitError as e:
        return {"total_s": time.time() - t0, "ok": False, "error": str(e)[:200]}
    total = time.time() - t0
    row = {"total_s": total, "ok": r.stdout == "hello\n" and r.exit_code == 0 and not r.timed_out,
           "error": "timed out" if r.timed_out else ""}
    row.update(_phase_deltas(r.phases, KIT_PHASES))
    row["setup_s"] = r.phases.get("launched", t0) - t0  # host work before QEMU starts
    row["teardown_s"] = t0 + total - r.phases.get("exited", t0 + total)  # QEMU ended -> the result is complete
    return row


def _phase_deltas(stamps: dict, order: list[str]) -> dict:
    have = [p for p in order if p in stamps]
    return {f"{a}->{b}_s": stamps[b] - stamps[a] for a, b in zip(have, have[1:])}


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"median_s": float("nan"), "mean_s": float("nan"), "sd_s": float("nan"),
                "min_s": float("nan"), "max_s": float("nan"), "outliers": 0}
    med = statistics.median(xs)
    mad = statistics.median(abs(x - med) for x in xs) * 1.4826
    return {"median_s": med, "mean_s": statistics.mean(xs), "sd_s": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min_s": min(xs), "max_s": max(xs),
            "outliers": sum(1 for x in xs if mad and abs(x - med) / mad > 3)}


def summarize(rows: list[dict], order: list[str] | None = None) -> list[dict]:
    """One row per variant: run statistics, median phases, kit's overhead against each baseline twin."""
    out = []
    for variant in order or dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        ok = [r for r in rs if r["ok"]]
        s = {"variant": variant, "accel": rs[0]["accel"], "runs": len(rs), "ok": len(ok),
             **_stats([r["total_s"] for r in ok])}
        for base in BASELINES if variant.startswith("kit ") else ():
            twin = f"{base} {variant[4:]}"
            hand = {r["run"]: r["total_s"] for r in rows if r["variant"] == twin and r["ok"]}
            if not hand:
                continue  # that baseline was not measured in this run
            paired = [r["total_s"] / hand[r["run"]] - 1 for r in ok if r["run"] in hand]
            s[f"vs_{base}_median_s"] = statistics.median(hand.values())
            s[f"vs_{base}_pct"] = 100 * (s["median_s"] / s[f"vs_{base}_median_s"] - 1)
            s[f"vs_{base}_paired_pct"] = 100 * statistics.median(paired) if paired else float("nan")
        for key in dict.fromkeys(k for r in ok for k in r if "->" in k or k in ("setup_s", "teardown_s")):
            vals = [r[key] for r in ok if key in r]
            s[key] = statistics.median(vals)
        out.append(s)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def table(summary: list[dict]) -> str:
    """The summary as two markdown tables: every variant (seconds; phases as medians), then
    one row per kit variant and baseline (kit's overhead against that baseline)."""
    head = "| variant | ok | median s | mean s | sd | min | max | outliers | phases, median s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        phases = ", ".join(f"{k[:-2].split('->')[1] if '->' in k else k[:-2]} {v:.3f}"
                           for k, v in s.items() if "->" in k or k in ("setup_s", "teardown_s"))
        lines.append(f"| {s['variant']} | {s['ok']}/{s['runs']} | {s['median_s']:.3f} | {s['mean_s']:.3f} "
                     f"| {s['sd_s']:.3f} | {s['min_s']:.3f} | {s['max_s']:.3f} | {s['outliers']} | {phases} |")
    head = ("| kit variant | compared with (baseline) | kit median s | baseline median s "
            "| kit vs baseline (medians) | kit vs baseline (paired) |")
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        for base, what in BASELINES.items():
            if f"vs_{base}_pct" in s:
                lines.append(f"| {s['variant']} | {base} {s['variant'][4:]}: {what} | {s['median_s']:.3f} "
                             f"| {s[f'vs_{base}_median_s']:.3f} | {s[f'vs_{base}_pct']:+.1f} % "
                             f"| {s[f'vs_{base}_paired_pct']:+.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--machines", default="q35,microvm")
    ap.add_argument("--boots", default="initramfs,disk")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baselines", default="literal,hand", help="which hand-written baselines to run (hand,literal)")
    ap.add_argument("--out", default=str(RESULTS),
                    help="results folder (default: the committed benchmarks/results; a scratch folder for trials)")
    ap.add_argument("--kernel", default=None, help="kit or distro (default: the kernel kit boots by default)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    workdir = Path(tempfile.mkdtemp(prefix="kit-bench-hand-"))  # the hand baselines' initramfs files
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)

    k, why = kernel.select(args.kernel)
    img = kit.images.get("busybox")
    verdict = accel.choose(k)
    tsc_khz = accel.guest_tsc_khz(verdict.accel)
    initrd_image, initrd_base = initramfs.with_image(k, img), initramfs.base(k)
    disk_path = disk.base_disk(img)
    baselines = args.baselines.split(",")
    variants = {}
    for mach in args.machines.split(","):
        for boot in args.boots.split(","):
            initrd = initrd_image if boot == "initramfs" else initrd_base
            drive = None if boot == "initramfs" else disk_path
            if "hand" in baselines:
                hand = hand_written(k, mach, boot, verdict.accel, tsc_khz, initrd, drive, workdir)
                variants[f"hand {mach} {boot}"] = lambda hand=hand: run_hand(hand)
            if "literal" in baselines:
                make = lambda port_dir, mach=mach, initrd=initrd, drive=drive, spec=spec_b64(img, boot): \
                    literal_written(k, mach, verdict.accel, tsc_khz, initrd, drive, spec, port_dir)  # noqa: E731
                variants[f"literal {mach} {boot}"] = lambda make=make: run_literal(make)
            variants[f"kit {mach} {boot}"] = lambda mach=mach, boot=boot: run_kit(machine=mach, boot=boot,
                                                                                  kernel=k.kind if k.kind != "user" else None)
    print(f"accel={verdict.accel} ({verdict.reason}); tsc_khz={tsc_khz}; kernel {k.version}: {why}", file=sys.stderr)
    for _ in range(args.warmup):
        for fn in variants.values():
            fn()
    rows = []
    shuffle = random.Random(args.seed).shuffle
    for i in range(args.runs):
        order = list(variants)
        shuffle(order)
        for pos, name in enumerate(order):
            row = {"variant": name, "run": i, "position": pos, "accel": verdict.accel, **variants[name]()}
            rows.append(row)
            print(f"{name:24s} run {i}: {row['total_s']:.3f} s {'ok' if row['ok'] else 'FAILED ' + row['error']}",
                  file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "vm_runs.csv", rows)
    summary = summarize(rows, list(variants))
    _write_csv(out / "vm_summary.csv", summary)
    md = table(summary)
    (out / "vm_summary.md").write_text(
        f"accel={verdict.accel} ({verdict.reason}); kernel {k.version} ({why}); {args.runs} interleaved rounds "
        f"after {args.warmup} warm-up\n\n"
        + md + "\n")
    storage.record(out, __file__, ["vm_runs.csv", "vm_summary.csv", "vm_summary.md"])
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
