"""Warm starts against cold starts, runtime by runtime (issue 14).

One study (:class:`kit.bench.Study`, workload busybox ``true``, interleaved rounds, one warm-up
round) over process, runc, runsc, docker, lxc and qemu with ``starts=["cold", "precreated",
"snapshot"]``: each runtime runs every start mode it offers; a mode it does not offer is listed
with the runtime's own reason, and a mode it offers but fails in is a failed row with its error
(e.g. a qemu snapshot restore that does not work yet).

Then the breakdown the target asks for: runc ``start`` -> exit of a pre-created container against
a bare process plus ``runc exec`` of ``true`` in a running container (the runtime's exec time:
what entering an existing container costs, which a pre-created start also pays), and what the
pre-creation itself costs (``create`` ahead, measured apart), and what a VM template costs on disk.

Writes ``benchmarks/results/warm/``: ``runs.csv`` (every row of the study), ``relative.csv``
(warm against cold per runtime), ``summary.md``.

Usage: ``.venv/bin/python benchmarks/bench_warm.py [--repeat 10] [--runtimes process,runc,...]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kit  # noqa: E402
from kit import warm  # noqa: E402
from kit.bench import Study, storage  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "warm"
RUNTIMES = "process,runc,runsc,docker,lxc,qemu"


def ms(x) -> str:
    return "-" if x is None or x != x else f"{x * 1e3:.1f}"


def exec_times(n: int) -> list[float]:
    """``runc exec ID true`` in a running container, timed on the host clock (the runtime's exec time)."""
    name = f"warm-exec-{time.time_ns() % 10**6}"
    handle = kit.start("busybox", ["sleep", "300"], runtime="runc", name=name)
    try:
        # the runtime's own exec (runc exec ID true, through the rootless launcher where there is one),
        # not the handle's, which first asks the runtime whether the container still runs
        rt, inst = handle.backend, handle.state
        out = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            code, _, err = rt.exec(inst, ["true"], timeout=30)
            out.append(time.perf_counter() - t0)
            if code != 0:
                raise RuntimeError(f"runc exec true exited {code}: {err.decode(errors='replace').strip()[-200:]}")
        return out[1:]  # the first one warms runc's binary in the page cache
    finally:
        kit.rm(name, force=True)


def prepare_times(runtime: str, n: int) -> list[float]:
    """How long pre-creating one container takes (the preparation a warm start does not pay)."""
    out = []
    for _ in range(n):
        e = kit.api.default_session().warm.pool.prepare(
            kit.runtimes.get(runtime), kit.spec.RunSpec(image="busybox", command=["true"]), kit.images.get("busybox"))
        out.append(e.prepare_s)
        e.runtime.remove(e.inst)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--vm-repeat", type=int, default=5)
    ap.add_argument("--runtimes", default=RUNTIMES)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    study = Study(runtimes=args.runtimes, workload="true", repeat=args.repeat, vm_repeat=args.vm_repeat,
                  warmup=1, parts=["startup"], starts=["cold", "precreated", "snapshot"], name="warm",
                  timeout=180, progress=False)
    df = study.run()
    df.to_csv(args.out / "runs.csv", index=False)
    rel = study.relative(baseline="cold")
    rel.to_csv(args.out / "relative.csv", index=False)
    m = df[(df["metric"] == "launch_to_exit") & (df["status"] == "ok") & ~df["warmup"]]
    med = m.groupby(["runtime", "start"])["value"].median()
    lines = start_modes(study, rel, med, args) + runc_breakdown(study, med, args.repeat) + vm_templates()
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    storage.record(args.out, __file__, ["runs.csv", "relative.csv", "summary.md"])
    print("\n".join(lines))
    warm.clear()
    kit.prune(dead_sessions=False)
    return 0


def start_modes(study, rel, med, args) -> list[str]:
    """The summary's head: launch -> exit per runtime and start mode, the modes not offered, the failures."""
    df = study.df
    env = study.meta.get("environment", {})
    accel = env.get("vm_accel", "") or "-"
    failed = df[(df["status"] != "ok") & (df["metric"] == "failed")]
    lines = [f"# Warm starts against cold starts ({time.strftime('%Y-%m-%d')})", "",
             f"busybox `true`, {args.repeat} measured runs per runtime and start mode ({args.vm_repeat} for VMs), "
             f"one warm-up round, interleaved. VM accelerator: **{accel}**. Host: {env.get('cpu_model', '?')}, "
             f"{env.get('cpu_count', '?')} CPUs, kernel {env.get('kernel', '?')}.", "",
             "Start request -> command exit (`launch_to_exit`), median ms; ratio = warm / cold of the same runtime:", "",
             "| runtime | cold | precreated | snapshot | warm/cold |", "|---|---|---|---|---|"]
    for rt in study.meta["runtimes"]:
        row = [ms(med.get((rt, s))) for s in ("cold", "precreated", "snapshot")]
        ratios = ", ".join(f"{r.start} {r.ratio:.2f} [{r.ratio_low:.2f}, {r.ratio_high:.2f}]"
                           for r in rel[rel["runtime"] == rt].itertuples()) or "-"
        lines.append(f"| {rt} | {' | '.join(row)} | {ratios} |")
    lines += ["", "Start modes not offered (the runtime's own reason):", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(study.meta.get("skipped_starts", {}).items())]
    if len(failed):
        lines += ["", "Runs that failed (start mode offered but not working):", ""]
        for (rt, start), grp in failed.groupby(["runtime", "start"]):
            lines.append(f"- {rt}/{start}: {len(grp)} failed: {grp['status'].iloc[-1][:300]}")
    return lines


def runc_breakdown(study, med, repeat: int) -> list[str]:
    """runc precreated: start -> exit against a bare process plus runc's exec time, from this run's own
    phases; and what pre-creating a container costs, measured apart."""
    df = study.df
    ok_phases = df[(df["metric"] == "phase") & (df["status"] == "ok") & ~df["warmup"]]
    phase = ok_phases.groupby(["runtime", "start", "component"])["value"].median()
    started = phase.get(("runc", "precreated", "started"))
    runc_warm, bare = med.get(("runc", "precreated")), med.get(("process", "cold"))
    prep = {rt: prepare_times(rt, 3) for rt in ("runc", "runsc", "docker") if rt in study.meta["runtimes"]}
    lines: list[str] = []
    if runc_warm is not None and bare is not None:
        ex = exec_times(repeat)
        ex_med = statistics.median(ex)
        budget = 2 * (bare + ex_med)
        runc_cold, cold_prep = med.get(("runc", "cold")), phase.get(("runc", "cold", "prepare"))
        lines += ["", "## runc precreated: the breakdown", "",
                  f"- `runc start` returned {ms(started)} ms after the request; the kit saw the exit "
                  f"{ms(runc_warm - started) if started is not None else '-'} ms later; start -> exit: "
                  f"**{ms(runc_warm)} ms**.",
                  f"- bare process (`true`, request -> exit): {ms(bare)} ms; `runc exec ID true` in a running "
                  f"container: {ms(ex_med)} ms (median of {len(ex)}).",
                  f"- target: start -> exit within 2 x (bare + exec) = {ms(budget)} ms: "
                  f"**{'met' if runc_warm <= budget else 'not met'}** ({runc_warm / (bare + ex_med):.2f} x)."]
        if runc_cold is not None:
            # What the pre-created start leaves out of its clock, from this run's own phases.
            lines.append(f"- cold runc in this run: {ms(runc_cold)} ms, of which the kit's preparation (phase "
                         f"`prepare`) {ms(cold_prep)} ms and launch -> exit "
                         f"{ms(runc_cold - cold_prep) if cold_prep is not None else '-'} ms (medians); "
                         f"the pre-created start is {ms(runc_cold - runc_warm)} ms shorter"
                         + (f", and pre-creating one container took {ms(statistics.median(prep['runc']))} ms "
                            f"(median of {len(prep['runc'])}, measured apart)." if prep.get("runc") else "."))
    if prep:
        lines += ["", "Pre-creating one container (measured apart, outside the start -> exit span), median of 3: "
                  + ", ".join(f"{rt} {ms(statistics.median(v))} ms" for rt, v in prep.items()) + "."]
    return lines


def vm_templates() -> list[str]:
    """The VM templates stored, with their size on disk."""
    try:
        from kit.vm import templates

        tl = templates.ls()
    except Exception as e:  # noqa: BLE001  (the VM side may not be there yet)
        tl, why = [], str(e)
    else:
        why = ""
    lines = ["", "## VM templates on disk", ""]
    if tl:
        lines += ["| machine | accel | memory MiB | state bytes | on disk | built in |", "|---|---|---|---|---|---|"]
        for t in tl:
            lines.append(f"| {t.get('machine')} | {t.get('accel')} | {t.get('memory_mib')} | {t.get('state_bytes')} "
                         f"| {(t.get('disk_bytes') or 0) / 2**20:.1f} MiB | {t.get('build_s')} s |")
    else:
        lines.append(f"No template stored{': ' + why if why else ''}.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
