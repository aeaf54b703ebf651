"""VM boot benchmark: a hand-written QEMU command versus kit's VM run of the same command.

In one run, for ``echo hello`` in the busybox image under the accelerator the kit
chose (TCG on this machine kind):

* ``hand q35``: a hand-written ``qemu-system-x86_64`` command booting the same
  kernel and initramfs (the image packed into it) with the same disk attached,
  the shell as init (``rdinit=/bin/sh -- -c 'echo hello; reboot -f'``);
* ``kit q35 initramfs``: ``kit.run(..., machine="q35", boot="initramfs")``;
* ``kit q35 disk``: the image from its read-only ext4 disk under a tmpfs overlay;
* ``kit microvm initramfs``: the same on QEMU's microvm machine.

Each kit row also splits the run into the boot phases the guest marks
(launched -> kernel -> init -> command -> exited -> vm_exited). Prints a table
and writes every run to ``benchmarks/results/vm_runs.csv`` and the summary to
``benchmarks/results/vm_summary.csv``.

Usage: ``.venv/bin/python benchmarks/bench_vm.py [--runs 5] [--warmup 1]``
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

import kit
from kit.vm import accel, disk, initramfs, kernel, machine

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ["launched", "kernel", "init", "command", "exited", "vm_exited"]
TIMEOUT = 60


def hand_written(k, initrd: Path, disk_path: Path, accel_name: str) -> list[str]:
    """What a person would type: no kit channels, the shell as init, console on stdout."""
    return ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-M", "q35", "-accel", accel_name, "-m", "256M", "-smp", "1",
            "-kernel", str(k.vmlinuz), "-initrd", str(initrd),
            "-append", 'loglevel=3 console=ttyS0 panic=-1 rdinit=/bin/sh -- -c "echo hello; reboot -f"',
            "-drive", f"file={disk_path},format=raw,if=none,id=root,readonly=on",
            "-device", "virtio-blk-pci,drive=root", "-serial", "stdio", "-nic", "none"]


def run_hand(argv: list[str]) -> dict:
    t0 = time.time()
    p = subprocess.run(argv, capture_output=True, timeout=TIMEOUT)
    total = time.time() - t0
    ok = b"hello" in p.stdout
    return {"total_s": total, "ok": ok, "error": "" if ok else p.stderr.decode(errors="replace")[-200:]}


def run_kit(**options) -> dict:
    t0 = time.time()
    try:
        r = kit.run("busybox", ["echo", "hello"], runtime="qemu", timeout=TIMEOUT, **options)
    except kit.KitError as e:
        return {"total_s": time.time() - t0, "ok": False, "error": str(e)[:200]}
    total = time.time() - t0
    row = {"total_s": total, "ok": r.stdout == "hello\n" and not r.timed_out,
           "error": "timed out" if r.timed_out else ""}
    base = r.phases.get("launched", t0)
    for a, b in zip(PHASES, PHASES[1:]):
        if a in r.phases and b in r.phases:
            row[f"{a}->{b}_s"] = r.phases[b] - r.phases[a]
    row["setup_s"] = base - t0  # host work before QEMU starts (cached files, accelerator verdict)
    row["teardown_s"] = t0 + total - r.phases.get("vm_exited", t0 + total)
    return row


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        ok = [r["total_s"] for r in rs if r["ok"]]
        s = {"variant": variant, "runs": len(rs), "ok": len(ok),
             "mean_s": statistics.mean(ok) if ok else float("nan"),
             "sd_s": statistics.stdev(ok) if len(ok) > 1 else 0.0,
             "min_s": min(ok) if ok else float("nan"), "max_s": max(ok) if ok else float("nan")}
        for key in [k for k in rs[0] if k.endswith("->" + k.split("->")[-1]) and "->" in k]:
            vals = [r[key] for r in rs if r["ok"] and key in r]
            if vals:
                s[key] = statistics.mean(vals)
        out.append(s)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--skip-microvm", action="store_true", help="leave out microvm (it can hang under TCG)")
    args = ap.parse_args(argv)

    k = kernel.resolve()
    img = kit.images.get("busybox")
    verdict = accel.choose(k)
    initrd = initramfs.with_image(k, img)
    disk_path = disk.base_disk(img)
    hand = hand_written(k, initrd, disk_path, verdict.accel)
    variants = {
        "hand q35 initramfs": lambda: run_hand(hand),
        "kit q35 initramfs": lambda: run_kit(machine="q35", boot="initramfs"),
        "kit q35 disk": lambda: run_kit(machine="q35", boot="disk"),
    }
    if not args.skip_microvm:
        variants["kit microvm initramfs"] = lambda: run_kit(machine="microvm", boot="initramfs")
    print(f"accel={verdict.accel} ({verdict.reason})", file=sys.stderr)
    rows = []
    for _ in range(args.warmup):
        for fn in variants.values():
            fn()
    # Interleave variants so drift in host load hits all of them alike.
    for i in range(args.runs):
        for name, fn in variants.items():
            row = {"variant": name, "run": i, "accel": verdict.accel, **fn()}
            rows.append(row)
            print(f"{name:24s} run {i}: {row['total_s']:.2f} s {'ok' if row['ok'] else 'FAILED ' + row['error']}",
                  file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(RESULTS / "vm_runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    skeys = list(dict.fromkeys(k for s in summary for k in s))
    with open(RESULTS / "vm_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, skeys)
        w.writeheader()
        w.writerows(summary)
    hand_mean = summary[0]["mean_s"]
    print(f"\n{'variant':24s} {'ok':>5s} {'mean s':>7s} {'sd':>6s} {'min':>6s} {'max':>6s} {'vs hand':>8s}  phases (mean s)")
    for s in summary:
        phases = "  ".join(f"{k[:-2].split('->')[1]}+{v:.2f}" for k, v in s.items() if "->" in k)
        print(f"{s['variant']:24s} {s['ok']:>2d}/{s['runs']:<2d} {s['mean_s']:7.2f} {s['sd_s']:6.2f} "
              f"{s['min_s']:6.2f} {s['max_s']:6.2f} {100 * (s['mean_s'] / hand_mean - 1):+7.1f}%  {phases}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
