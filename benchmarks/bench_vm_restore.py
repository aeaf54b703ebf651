"""Warm VM starts: a VM restored from its template against a cold boot (issue 14).

busybox ``true`` under QEMU, with the accelerator the kit chose (TCG on this machine
kind), microvm, the image in the initramfs. Variants, interleaved in every round in a
fresh random order (seeded), after one warm-up round that also builds the templates:

* ``cold 128m``: ``kit.run(..., runtime="qemu", memory="128m")``: a boot.
* ``snapshot 128m`` / ``snapshot 256m``: ``start="snapshot"``: a restore of the
  template of that guest (:mod:`kit.vm.templates`).

The figure compared is QEMU's start (``launched``, which is ``restore`` for a restore)
to the command's exit reported by the guest (``exited``); each run is split into the
phases the host stamps. Targets (issue 14): the restore's median at most 25 % of the
cold boot's in the same run, and at most 0.3 s.

QEMU's CPU time is that of QEMU's own process, from its reap (``RunResult.info["qemu_cpu_s"]``,
wait4 on QEMU's pid), not this process's RUSAGE_CHILDREN, which counts any child reaped meanwhile.
How a template is made and restored: :mod:`kit.vm.templates`. Every sentence the report states is
computed from this run or from the environment record (:func:`kit.bench.envinfo.collect`); a
figure from elsewhere is shown as a reference with its source.

Writes benchmarks/results/warm/vm_restore.md, vm_restore.csv and vm_restore_env.json.
Usage: python benchmarks/bench_vm_restore.py [ROUNDS]
"""

from __future__ import annotations

import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import kit
from kit.bench import envinfo, storage
from kit.vm import templates

OUT = Path(__file__).resolve().parent / "results" / "warm"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 9
VARIANTS = [("cold", "128m"), ("snapshot", "128m"), ("snapshot", "256m")]
STEPS = {
    "cold": [("launched", "kernel"), ("kernel", "init"), ("init", "spec"), ("spec", "command"),
             ("command", "exited")],
    "snapshot": [("restore", "resumed"), ("resumed", "spec"), ("spec", "command"), ("command", "exited")],
}
FIRECRACKER = ("https://github.com/firecracker-microvm/firecracker/blob/0151dbcd4f9703fdbc90abb3a295c4c446df5bf1/"
               "docs/snapshotting/snapshot-support.md#performance")


def one(start: str, memory: str) -> dict:
    r = kit.run("busybox", ["true"], runtime="qemu", start=start, memory=memory, timeout=300)
    if r.exit_code != 0:
        raise SystemExit(f"{start} {memory}: exit {r.exit_code}: {r.stderr[-200:]}")
    cpu = r.info.get("qemu_cpu_s")  # QEMU's own process, from its reap
    if cpu is None:
        raise SystemExit(f"{start} {memory}: the run did not report QEMU's CPU time (info qemu_cpu_s)")
    p = r.phases
    row = {"start": start, "memory": memory, "accel": r.info.get("accel"), "machine": r.info.get("machine"),
           "template": r.info.get("template", ""), "built_s": r.info.get("template_build_s", ""),
           "pool": r.info.get("pool", ""),
           "start_to_exit": p["exited"] - p["launched"], "requested_to_exit": p["exited"] - p["requested"],
           "host_prep": p["launched"] - p["requested"], "qemu_cpu": cpu}
    for a, b in STEPS[start]:
        row[f"{a}->{b}"] = p[b] - p[a] if a in p and b in p else ""
    return row


def execs_after_restore(n: int = 3) -> list[float]:
    """Seconds of ``kit.exec(true)`` in one restored VM, one after the other: the first pays for
    the guest code that runs for the first time since the restore."""
    name = f"bench-restore-{os.getpid()}"
    kit.start("busybox", ["sleep", "120"], runtime="qemu", start="snapshot", memory="128m", name=name)
    try:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            kit.exec(name, ["true"])
            out.append(time.perf_counter() - t0)
        return out
    finally:
        kit.rm(name, force=True)


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) != ""]
    return statistics.median(vals) if vals else float("nan")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    warmup = [one(s, m) for s, m in VARIANTS]  # builds the templates when missing
    rng = random.Random(14)
    rows = []
    for i in range(ROUNDS):
        order = VARIANTS[:]
        rng.shuffle(order)
        for s, m in order:
            rows.append({"round": i, **one(s, m)})
            print(f"round {i} {s} {m}: {rows[-1]['start_to_exit']:.3f} s", flush=True)
    execs = [execs_after_restore() for _ in range(3)]
    load1 = os.getloadavg()
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "round", k))
    with open(OUT / "vm_restore.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

    env = {**envinfo.collect(), "load_before": load0, "load_after": load1, "rounds": ROUNDS, "execs": execs}
    (OUT / "vm_restore_env.json").write_text(json.dumps(env, indent=1, default=str) + "\n")
    lines = report(rows, warmup, execs, env, {t["key"]: t for t in templates.ls()})
    (OUT / "vm_restore.md").write_text("\n".join(lines))
    # the commit and definitions measured under
    storage.record(OUT, __file__, ["vm_restore.csv", "vm_restore.md", "vm_restore_env.json"])
    print("\n".join(lines))


def spread(vals) -> float:
    """(max - min) / median of the values: how far apart the rounds were."""
    vals = [v for v in vals if v != ""]
    return (max(vals) - min(vals)) / statistics.median(vals) if vals else float("nan")


def report(rows: list[dict], warmup: list[dict], execs: list[list[float]], env: dict, tpl: dict) -> list[str]:
    """The report's lines: every sentence computed from the rows or the environment record."""
    by = {(s, m): [r for r in rows if r["start"] == s and r["memory"] == m] for s, m in VARIANTS}
    return _measured(rows, by, env) + _findings(by, execs) + _templates(warmup, tpl) + _references(rows[0]["accel"])


def _measured(rows: list[dict], by: dict, env: dict) -> list[str]:
    """The head: how it was measured, the spread across rounds, each variant's medians and steps."""
    cold_rows, warm_rows = by[("cold", "128m")], by[("snapshot", "128m")]
    cold, warm = med(cold_rows, "start_to_exit"), med(warm_rows, "start_to_exit")
    cold_cpu = med(cold_rows, "qemu_cpu")
    per_round = [w["start_to_exit"] / c["start_to_exit"] for c in cold_rows for w in warm_rows
                 if w["round"] == c["round"]]
    accel = rows[0]["accel"]
    host = (f"{env.get('cpu_count')} CPUs ({env.get('cpu_model')}), {env.get('os')}, kernel {env.get('kernel')}"
            + (f", virtualised: {env['virtualised']}" if env.get("virtualised") else ""))
    lines = [
        "# Warm VM starts: restore from a template against a cold boot",
        "",
        f"busybox `true`, QEMU {accel.upper()}, {rows[0]['machine']}, image in the initramfs; {len(cold_rows)} "
        f"rounds, variants interleaved in a random order per round after a warm-up round; medians. "
        f"Host: {host}. VM accelerator: {env.get('vm_accel') or 'none'} ({env.get('vm_accel_reason', '')}). "
        f"Load average (1 min) {env['load_before'][0]:.1f} at the start, {env['load_after'][0]:.1f} at the end. "
        f"Generated by `benchmarks/bench_vm_restore.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        "QEMU CPU: the user + system CPU time of QEMU's own process, from its reap (wait4 on its pid).",
        f"Spread across rounds ((max - min) / median): wall {spread(r['start_to_exit'] for r in cold_rows):.0%} "
        f"cold, {spread(r['start_to_exit'] for r in warm_rows):.0%} restore; QEMU CPU "
        f"{spread(r['qemu_cpu'] for r in cold_rows):.0%} cold, {spread(r['qemu_cpu'] for r in warm_rows):.0%} "
        f"restore; restore / cold wall within a round {spread(per_round):.0%}.",
        "",
        "| variant | QEMU start -> exit (s) | vs cold | QEMU CPU (s) | vs cold | request -> exit (s) | host prep (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (s, m), rs in by.items():
        st, cpu = med(rs, "start_to_exit"), med(rs, "qemu_cpu")
        lines.append(f"| {s} {m} | {st:.3f} | {st / cold:.0%} | {cpu:.3f} | {cpu / cold_cpu:.0%} | "
                     f"{med(rs, 'requested_to_exit'):.3f} | {med(rs, 'host_prep'):.3f} |")
    lines += ["", "Steps (medians, s):", ""]
    for (s, m), rs in by.items():
        lines.append(f"- {s} {m}: " + ", ".join(f"{a} -> {b} {med(rs, f'{a}->{b}'):.3f}" for a, b in STEPS[s]))
    return lines


def _findings(by: dict, execs: list[list[float]]) -> list[str]:
    """What the figures say, and the targets."""
    cold_rows, warm_rows = by[("cold", "128m")], by[("snapshot", "128m")]
    cold, warm = med(cold_rows, "start_to_exit"), med(warm_rows, "start_to_exit")
    firsts, laters = [e[0] for e in execs], [x for e in execs for x in e[1:]]
    first, later = statistics.median(firsts), statistics.median(laters)
    loaded = med(warm_rows, "restore->resumed")
    big = med(by[("snapshot", "256m")], "start_to_exit")
    return [
        "", f"`kit.exec(true)` in a restored VM ({len(execs)} VMs): the first {first:.3f} s, the next ones "
            f"{later:.3f} s (medians).",
        "",
        "## What the figures say",
        "",
        f"- Of the restore's {warm:.3f} s (128m), loading the state and resuming (restore -> resumed) took "
        f"{loaded:.3f} s ({loaded / warm:.0%}); the rest is the guest's work after it resumed.",
        f"- The command's own step (command -> exited): {med(warm_rows, 'command->exited'):.3f} s after a restore, "
        f"{med(cold_rows, 'command->exited'):.3f} s in a cold boot; the first `kit.exec` in a restored VM took "
        f"{first / later:.1f}x the later ones.",
        f"- Guest memory: the 256m restore took {big / warm:.2f}x the 128m one (restore -> resumed "
        f"{med(by[('snapshot', '256m')], 'restore->resumed'):.3f} s against {loaded:.3f} s).",
        "",
        "## Targets",
        "",
        f"- restore -> exit at most 25 % of the cold boot: {warm / cold:.0%} "
        f"({'met' if warm <= 0.25 * cold else 'NOT met'}).",
        f"- at most 0.3 s: {warm:.3f} s wall ({'met' if warm <= 0.3 else 'NOT met'} at this load); "
        f"QEMU's CPU time for it {med(warm_rows, 'qemu_cpu'):.3f} s.",
    ]


def _templates(warmup: list[dict], tpl: dict) -> list[str]:
    """The templates the warm-up round made."""
    lines = [
        "",
        "## Templates",
        "",
        "How a template is made and restored: `kit/vm/templates.py` (its docstring).",
        "",
        "| key | memory | state (KB) | on disk (MB) | build (s) |",
        "|---|---|---|---|---|",
    ]
    for r in warmup[1:]:
        t = tpl.get(r["template"])
        if t:
            lines.append(f"| {t['key']} | {t['memory_mib']} MiB | {t['state_bytes'] / 1e3:.0f} | "
                         f"{t['disk_bytes'] / 1e6:.0f} | {t['build_s']} |")
    return lines


def _references(accel: str) -> list[str]:
    """Figures from elsewhere, labelled as references with their source."""
    return [
        "",
        "## For reference, not measured here",
        "",
        f"- Firecracker (another VMM, on KVM) documents a snapshot resume latency target under 8 ms, p90 5 ms, "
        f"for a 2 vCPU / 512 MB microVM with one block and one net device on AWS m5d.metal: "
        f"[snapshot-support.md, Performance]({FIRECRACKER}).",
        f"- This run's accelerator was {accel}: "
        + ("the KVM path (`-accel kvm -cpu host`) was not measured; its command line is unit-tested "
           "(`tests/test_vm_snapshot.py::test_restore_command_line`)." if accel != "kvm" else "KVM."),
        "",
    ]


if __name__ == "__main__":
    main()
