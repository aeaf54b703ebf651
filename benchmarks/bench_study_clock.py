"""A study's startup clock against an outside timing of the same ``kit.run`` calls (issue 20).

For every runtime (process, runc, lxc, runsc, docker, qemu), busybox ``true``:

- **study**: :class:`kit.bench.Study` over all the runtimes (``parts="startup"``, one warm-up
  round, runtimes interleaved in shuffled rounds, as a user's study runs them); its
  ``launch_to_exit`` median per runtime.
- **outside**: the same ``kit.run("busybox", ["true"], runtime=rt)`` calls timed around the call with
  the host clock (the clock the phases are stamped on): wall = return - call, minus the part before
  the request (the kit's own checks: call -> phase ``requested``) and minus what follows the exit
  (phase ``exited`` -> return: output collected, result built). Shuffled rounds interleaved like the
  study's, one warm-up round, each call on a quiet kit (``kit.api.wait_until_quiet()``) as each study
  sample is. The two alternate in blocks (``--blocks``: outside rounds, then a study of as many
  rounds, and again), so that a drift of the host's load hits both alike. By construction that difference is the call's own ``exited - requested``: what this
  compares is the sampling, a study's (its interleaving, bookkeeping and the background work of its
  earlier samples) against plain calls one at a time.

Target per runtime: |study median - outside median| <= max(5 % of the outside median, 1 ms).

Writes ``benchmarks/results/clock/``: ``runs.csv`` (every outside call and study sample),
``summary.csv`` and ``summary.md`` (the table), ``record.json`` (commit and metric definitions).

Usage: ``.venv/bin/python benchmarks/bench_study_clock.py [--repeat 20] [--vm-repeat 3]
[--runtimes process,runc,...] [--out DIR]``
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kit  # noqa: E402
from kit.bench import Study, envinfo, metrics, storage  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "clock"
RUNTIMES = "process,runc,lxc,runsc,docker,qemu"
COMMAND = ["true"]


def outside_once(runtime: str) -> dict:
    """One ``kit.run`` on a quiet kit, timed around the call (seconds)."""
    kit.api.wait_until_quiet()
    t_call = time.time()
    r = kit.run("busybox", COMMAND, runtime=runtime, timeout=180)
    t_back = time.time()
    kit.api.wait_for_teardown(r.name)
    ok = r.exit_code == 0 and not r.timed_out
    pre, post = r.phases["requested"] - t_call, t_back - r.phases["exited"]
    wall = t_back - t_call
    return {"ok": ok, "wall": wall, "pre_request": pre, "post_exit": post, "launch_to_exit": wall - pre - post}


def outside(runtimes: list[str], rounds: int, vm_rounds: int, warmup: bool, rng: random.Random) -> pd.DataFrame:
    """``rounds`` rounds of outside calls (the first a warm-up when ``warmup``), each a shuffle of the
    runtimes; VMs only in the first ``vm_rounds`` measured rounds (and the warm-up)."""
    rows = []
    for rnd in range(int(warmup) + rounds):
        vm = rnd < int(warmup) + vm_rounds
        order = [rt for rt in runtimes if vm or kit.runtimes.get(rt).kind != "vm"]
        rng.shuffle(order)
        for rt in order:
            rows.append({"source": "outside", "runtime": rt, "warmup": warmup and rnd == 0, **outside_once(rt)})
    return pd.DataFrame(rows)


def study(runtimes: list[str], rounds: int, vm_rounds: int, warmup: bool, seed: int) -> pd.DataFrame:
    """One study of ``rounds`` rounds (after a warm-up round when ``warmup``), VMs in ``vm_rounds`` of them;
    one row per sample, its metrics as columns."""
    s = Study(image="busybox", runtimes=runtimes, workload="true", repeat=rounds, vm_repeat=vm_rounds,
              warmup=int(warmup), parts="startup", seed=seed, timeout=180, progress=False, name="clock")
    df = s.run()
    st = df[(df["part"] == "startup") & (df["component"] == "")]
    wide = st.pivot_table(index=["runtime", "round", "warmup", "status"], columns="metric", values="value").reset_index()
    wide["ok"] = wide["status"] == "ok"
    wide["source"] = "study"
    return wide.drop(columns=["status", "round"])


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` whole numbers, the larger first: 5 in 3 -> [2, 2, 1]."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def measure(runtimes: list[str], repeat: int, vm_repeat: int, blocks: int, seed: int) -> pd.DataFrame:
    """Blocks of outside rounds alternating with studies of as many rounds, so that a drift of the host's
    load over the benchmark hits both sides alike; warm-up rounds in the first block only."""
    rng = random.Random(seed)
    frames = []
    blocks = max(1, min(blocks, repeat))
    for k, (rounds, vm_rounds) in enumerate(zip(spread(repeat, blocks), spread(vm_repeat, blocks))):
        frames.append(outside(runtimes, rounds, vm_rounds, k == 0, rng).assign(block=k))
        frames.append(study(runtimes, rounds, vm_rounds, k == 0, seed + k).assign(block=k))
    return pd.concat(frames, ignore_index=True)


def ms(x: float) -> str:
    return "-" if x != x else f"{x * 1e3:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--vm-repeat", type=int, default=3)
    ap.add_argument("--runtimes", default=RUNTIMES)
    ap.add_argument("--blocks", type=int, default=5, help="alternations of outside rounds and studies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for rt in runtimes:
        kit.runtimes.require(rt)
    args.out.mkdir(parents=True, exist_ok=True)

    env = envinfo.collect()
    load_before = os.getloadavg()
    t0 = time.time()
    runs = measure(runtimes, args.repeat, args.vm_repeat, args.blocks, args.seed)
    elapsed = time.time() - t0
    load_after = os.getloadavg()
    runs.to_csv(args.out / "runs.csv", index=False)
    out_df, st_df = runs[runs["source"] == "outside"], runs[runs["source"] == "study"]

    rows = []
    for rt in runtimes:
        o = out_df[(out_df["runtime"] == rt) & ~out_df["warmup"] & out_df["ok"]]
        t = st_df[(st_df["runtime"] == rt) & ~st_df["warmup"] & st_df["ok"]]
        om = statistics.median(o["launch_to_exit"]) if len(o) else float("nan")
        sm = statistics.median(t["launch_to_exit"]) if len(t) else float("nan")
        bound = max(0.05 * om, 1e-3)
        rows.append({"runtime": rt, "study_runs": len(t), "outside_runs": len(o),
                     "study_launch_to_exit": sm, "outside_launch_to_exit": om, "difference": sm - om,
                     "allowed": bound, "within": abs(sm - om) <= bound,
                     "outside_wall": statistics.median(o["wall"]) if len(o) else float("nan"),
                     "outside_pre_request": statistics.median(o["pre_request"]) if len(o) else float("nan"),
                     "outside_post_exit": statistics.median(o["post_exit"]) if len(o) else float("nan"),
                     "study_teardown": statistics.median(t["teardown"]) if len(t) else float("nan"),
                     "study_total": statistics.median(t["total"]) if len(t) else float("nan")})
    summary = pd.DataFrame(rows)
    summary.to_csv(args.out / "summary.csv", index=False)

    cmd = " ".join(["benchmarks/bench_study_clock.py", *sys.argv[1:]])
    lines = [f"# A study's launch_to_exit against an outside timing of the same kit.run calls "
             f"({time.strftime('%Y-%m-%d')})", "",
             f"`.venv/bin/python {cmd}`: busybox `true`, {args.repeat} measured runs per runtime "
             f"({args.vm_repeat} for VMs) each way, after one warm-up round, in {args.blocks} alternating blocks of "
             f"outside rounds and studies; kit commit {env.get('git_commit', '?')}, "
             f"metric definitions {metrics.fingerprint()}. Host: {env.get('cpu_model', '?')}, "
             f"{env.get('cpu_count', '?')} CPUs, kernel {env.get('kernel', '?')}; VM accelerator "
             f"{env.get('vm_accel', '?') or '-'}. Load average (1 min) {load_before[0]:.2f} before, "
             f"{load_after[0]:.2f} after; {elapsed:.0f} s in all.", "",
             "Medians in ms. outside = wall - pre-request - post-exit of each call; target: |study - outside| "
             "<= max(5 %, 1 ms).", "",
             "| runtime | study launch_to_exit | outside | difference | allowed | within | outside wall | "
             "pre-request | post-exit | study teardown | study total |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {ms(r['study_launch_to_exit'])} | {ms(r['outside_launch_to_exit'])} | "
                     f"{ms(r['difference'])} | {ms(r['allowed'])} | {'yes' if r['within'] else '**no**'} | "
                     f"{ms(r['outside_wall'])} | {ms(r['outside_pre_request'])} | {ms(r['outside_post_exit'])} | "
                     f"{ms(r['study_teardown'])} | {ms(r['study_total'])} |")
    failed = runs[~runs["ok"].astype(bool)]
    if len(failed):
        lines += ["", f"{len(failed)} runs did not complete and are left out: "
                  + ", ".join(f"{rt} {n}" for rt, n in failed.groupby("runtime").size().items()) + "."]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    storage.record(args.out, __file__, ["runs.csv", "summary.csv", "summary.md"])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
