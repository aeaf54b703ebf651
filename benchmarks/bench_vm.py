"""VM boot benchmark: hand-written QEMU commands versus kit's VM runs of the same command.

For ``echo hello`` in the busybox image, under the accelerator the kit chose (TCG
on this machine kind), on each machine (q35, microvm) and each boot mode:

* ``hand <machine> initramfs``: what a person would type to get ``hello`` out of a
  VM: the same kernel, the same kernel arguments (:func:`kit.vm.machine.kernel_args`)
  and the same initramfs kit boots (kit's init part and the image), with the image's
  shell as init (``rdinit=/bin/sh -- -c 'echo hello; reboot -f'``) and the answer on
  the serial console. No disk: the workload does not read one.
* ``hand <machine> disk``: kit's base initramfs and the image's ext4 disk; the
  shell as init loads the virtio modules the disk needs, mounts it read-only and
  runs ``echo hello`` chrooted into it.
* ``kit <machine> <boot>``: ``kit.run("busybox", ["echo", "hello"], runtime="qemu",
  machine=..., boot=...)``: kit's own init, run spec over the control port,
  stdout and stderr on ports of their own, exit code reported, files cleaned up.

What kit adds over the hand-written command is its overhead (target: within 5 %).
Variants are interleaved in every round, in a fresh random order (seeded), so
drift in the host's load and any after-effect of one variant on the next hit all
alike (with a fixed order, kit's q35 initramfs boots once took 0.26 s longer to reach
init than in runs of that pair alone); one warm-up round first. Figures are medians (with mean, sd, min, max and
hyperfine's outlier count: runs more than 3 robust standard deviations, 1.4826
MAD, from the median); the overhead is also given paired, as the median over
rounds of kit/hand - 1. Kit rows split the run into the phases the guest marks
(launched -> kernel -> init -> spec -> command -> exited -> vm_exited) plus the
host's own work before QEMU starts (setup) and after it ended (teardown); hand
rows into launched -> kernel (first console byte) -> output ("hello" arrives)
-> vm_exited. Every exit is seen through a pidfd, not by polling.

Writes ``benchmarks/results/vm_runs.csv`` (every run), ``vm_summary.csv`` and
``vm_summary.md`` (the table).

Usage: ``.venv/bin/python benchmarks/bench_vm.py [--runs 15] [--warmup 1] [--machines q35,microvm]``
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import kit
from kit._proc import wait_exit
from kit.runtimes.qemu import DEFAULT_MEMORY
from kit.vm import accel, disk, initramfs, kernel, machine

RESULTS = Path(__file__).resolve().parent / "results"
KIT_PHASES = ["launched", "kernel", "init", "spec", "command", "exited", "vm_exited"]
HAND_PHASES = ["launched", "kernel", "output", "vm_exited"]
TIMEOUT = 60


def hand_written(k, mach: str, boot: str, accel_name: str, tsc_khz: int | None, initrd: Path,
                 disk_path: Path | None) -> list[str]:
    """The command a person would type: no kit channels, the shell as init, console on stdout."""
    cfg = machine.VMConfig(kernel=k.vmlinuz, initrd=initrd, accel=accel_name, machine=mach, tsc_khz=tsc_khz)
    if boot == "initramfs":
        script = "echo hello; reboot -f"
        init = "/bin/sh"
    else:
        mods = " ".join(initramfs.MODULES[machine.VIRTIO_BUS[mach]][:-1] + ["virtio_blk"])  # no virtio_console
        script = (f"export PATH=/.kit/bin; mount -t devtmpfs dev /dev; "
                  f"for m in {mods}; do insmod /.kit/lib/$m.ko; done; "
                  "while [ ! -b /dev/vda ]; do usleep 2000; done; "
                  "mount -t ext4 -o ro,noload /dev/vda /mnt; PATH=/bin:/usr/bin chroot /mnt echo hello; reboot -f")
        init = "/.kit/bin/sh"
    argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-M", machine.MACHINE_ARGS[mach], "-accel", accel_name, "-smp", "1",
            "-m", f"{DEFAULT_MEMORY // 1024**2}M", "-kernel", str(k.vmlinuz), "-initrd", str(initrd),
            "-append", f'{machine.kernel_args(cfg)} rdinit={init} -- -c "{script}"',
            "-serial", "stdio", "-nic", "none"]
    if disk_path is not None:
        argv += ["-drive", f"file={disk_path},format=raw,if=none,id=root,readonly=on",
                 "-device", f"virtio-blk-{machine.DEVICE_SUFFIX[mach]},drive=root"]
    return argv


def run_hand(argv: list[str]) -> dict:
    t0 = time.time()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stamps, seen = {"launched": t0}, bytearray()

    def read():  # stamp the first console byte and the workload's answer as they arrive
        for chunk in iter(lambda: p.stdout.read1(65536), b""):
            now = time.time()
            stamps.setdefault("kernel", now)
            seen.extend(chunk)
            if b"hello" in seen:
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
    ok = "output" in stamps and p.returncode == 0
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
    row["teardown_s"] = t0 + total - r.phases.get("vm_exited", t0 + total)  # until the result is complete
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
    """One row per variant: run statistics, median phases, overhead against its hand-written twin."""
    out = []
    for variant in order or dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        ok = [r for r in rs if r["ok"]]
        s = {"variant": variant, "accel": rs[0]["accel"], "runs": len(rs), "ok": len(ok),
             **_stats([r["total_s"] for r in ok])}
        if variant.startswith("kit "):
            twin = "hand " + variant[4:]
            hand = {r["run"]: r["total_s"] for r in rows if r["variant"] == twin and r["ok"]}
            paired = [r["total_s"] / hand[r["run"]] - 1 for r in ok if r["run"] in hand]
            hand_med = statistics.median(hand.values()) if hand else float("nan")
            s["overhead_pct"] = 100 * (s["median_s"] / hand_med - 1) if hand else float("nan")
            s["overhead_paired_pct"] = 100 * statistics.median(paired) if paired else float("nan")
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
    """The summary as a markdown table (seconds; phases as medians)."""
    head = ("| variant | ok | median s | mean s | sd | min | max | outliers | kit vs hand (medians) "
            "| kit vs hand (paired) | phases, median s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        phases = ", ".join(f"{k[:-2].split('->')[1] if '->' in k else k[:-2]} {v:.3f}"
                           for k, v in s.items() if "->" in k or k in ("setup_s", "teardown_s"))
        ov = f"{s['overhead_pct']:+.1f} %" if "overhead_pct" in s else ""
        ovp = f"{s['overhead_paired_pct']:+.1f} %" if "overhead_paired_pct" in s else ""
        lines.append(f"| {s['variant']} | {s['ok']}/{s['runs']} | {s['median_s']:.3f} | {s['mean_s']:.3f} "
                     f"| {s['sd_s']:.3f} | {s['min_s']:.3f} | {s['max_s']:.3f} | {s['outliers']} | {ov} | {ovp} "
                     f"| {phases} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--machines", default="q35,microvm")
    ap.add_argument("--boots", default="initramfs,disk")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    k = kernel.resolve()
    img = kit.images.get("busybox")
    verdict = accel.choose(k)
    tsc_khz = accel.guest_tsc_khz(verdict.accel)
    initrd_image, initrd_base = initramfs.with_image(k, img), initramfs.base(k)
    disk_path = disk.base_disk(img)
    variants = {}
    for mach in args.machines.split(","):
        for boot in args.boots.split(","):
            hand = hand_written(k, mach, boot, verdict.accel, tsc_khz,
                                initrd_image if boot == "initramfs" else initrd_base,
                                None if boot == "initramfs" else disk_path)
            variants[f"hand {mach} {boot}"] = lambda hand=hand: run_hand(hand)
            variants[f"kit {mach} {boot}"] = lambda mach=mach, boot=boot: run_kit(machine=mach, boot=boot)
    print(f"accel={verdict.accel} ({verdict.reason}); tsc_khz={tsc_khz}", file=sys.stderr)
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write_csv(RESULTS / "vm_runs.csv", rows)
    summary = summarize(rows, list(variants))
    _write_csv(RESULTS / "vm_summary.csv", summary)
    md = table(summary)
    (RESULTS / "vm_summary.md").write_text(
        f"accel={verdict.accel} ({verdict.reason}); {args.runs} interleaved rounds after {args.warmup} warm-up\n\n"
        + md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
