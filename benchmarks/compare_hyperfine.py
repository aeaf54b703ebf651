"""Kit's startup timing against hyperfine's, for the same raw commands, in one go (issue 4).

For every runtime available here, the runtime's own command line running
``echo hello`` (``runc run``, ``lxc-execute``, ``runsc run``, ``docker run
--rm``, a bare ``/bin/echo``; built by benchmarks/bench_overhead.py) is timed

- by hyperfine (``-N``: no shell; its median of every run's wall time), and
- by kit's benchmark harness (``kit.bench.startup.run_to_exit``, what a Study
  runs for each sample, on that same command line as a bare-process
  workload; median ``launch_to_exit``),

in short alternating blocks, so drift (and the neighbours' load) hits both
alike. Target: the two medians within 10 %. A Python harness pays about
0.5 ms to fork, exec and collect a child that hyperfine (Rust, output to
/dev/null) does not, so for commands under ~10 ms (the bare ``echo``) the
check also accepts a difference under 1 ms, and the table says which rule
passed. For context the table also shows kit running ``echo hello`` through
its own runtime backend (median ``launch_to_exit`` and ``total``).

    .venv/bin/python benchmarks/compare_hyperfine.py [--runs 20] [--runtimes runc,lxc]

Writes benchmarks/results/hyperfine.csv (every run, both timers) and hyperfine.md (the table).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from kit.bench import Study, Workload, envinfo, startup, storage, tables

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_overhead import CMD, cleanup, raw_commands  # noqa: E402  (the raw command lines live there)

TARGET = 0.10
FLOOR_MS = 1.0


def hyperfine(argv: list[str], runs: int, warmup: int, out: Path) -> list[float]:
    """Every run's wall time (s) of ``argv`` as hyperfine measures it (no shell in between)."""
    subprocess.run(["hyperfine", "-N", "--style", "none", "--warmup", str(warmup), "--runs", str(runs),
                    "--export-json", str(out), shlex.join(argv)], check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())["results"][0]["times"]


def kit_harness(argv: list[str], runs: int, warmup: int, block: int) -> list[float]:
    """Every run's launch_to_exit (s) of ``argv`` as kit.bench measures a bare-process workload.

    Calls the very function a Study calls for each run (kit.bench.startup.run_to_exit), without a
    Study around it: a Study's set-up (environment record, git status) would sit between the blocks.
    """
    w = Workload.exit("raw", argv)
    out = []
    for i in range(warmup + runs):
        s = startup.run_to_exit("process", "busybox", w, f"hf{block}-{i}", timeout=60)
        if i >= warmup and s.status == "ok":
            out += [r["value"] for r in s.rows if r["metric"] == "launch_to_exit"]
    return out


def kit_runtime(runtime: str, runs: int, seed: int) -> dict:
    """Kit running ``echo hello`` through its own backend: median launch_to_exit and total (s)."""
    s = Study(runtimes=[runtime], workload=shlex.join(CMD), repeat=runs, warmup=1, parts="startup", seed=seed,
              progress=False)
    df = s.run()
    ok = df[~df["warmup"] & (df["status"] == "ok")]
    return {m: float(ok[ok["metric"] == m]["value"].median()) for m in ("launch_to_exit", "total")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60, help="measured runs per timer and runtime (default 60: at 30, the run-to-run noise of an LXC start is near the 10 % target)")
    ap.add_argument("--warmup", type=int, default=2, help="warmup runs of each timer, first block only (default 2)")
    ap.add_argument("--per-block", type=int, default=2,
                    help="runs per block; blocks alternate between the timers (default 2: the neighbours' "
                         "load on a shared host drifts within seconds, so blocks must be short)")
    ap.add_argument("--runtimes", default="", help="comma-separated subset (default: every available one)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if not shutil.which("hyperfine"):
        print("hyperfine is not installed: apt-get install hyperfine", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="kit-hyperfine-"))
    rows, context = [], {}
    per_block = max(2, args.per_block)  # hyperfine's minimum is 2 runs
    blocks = max(1, args.runs // per_block)
    try:
        raws = raw_commands(tmp)
        wanted = [r for r in (args.runtimes.split(",") if args.runtimes else raws) if r in raws]
        for rt in wanted:
            raw = raws[rt]()  # one fixed id: each raw run deletes its container at exit
            for block in range(blocks):
                print(f"{rt}: block {block + 1}/{blocks}", file=sys.stderr, end="\r")
                warm = args.warmup if block == 0 else 0
                for t in hyperfine(raw, per_block, warm, tmp / f"{rt}-{block}.json"):
                    rows.append({"runtime": rt, "timer": "hyperfine", "block": block, "seconds": t})
                for t in kit_harness(raw, per_block, warm, block):
                    rows.append({"runtime": rt, "timer": "kit", "block": block, "seconds": t})
            context[rt] = kit_runtime(rt, per_block, seed=0)
            context[rt]["command"] = shlex.join(raw).replace(str(tmp), "$TMP")
    finally:
        cleanup(tmp)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "hyperfine.csv", index=False)
    med = df.groupby(["runtime", "timer"])["seconds"].median().unstack() * 1000
    table = pd.DataFrame({
        "hyperfine_ms": med["hyperfine"], "kit_harness_ms": med["kit"],
        "diff_pct": (med["kit"] / med["hyperfine"] - 1) * 100,
        "runs": df.groupby("runtime").size() // 2,
        "kit_runtime_launch_to_exit_ms": pd.Series({r: c["launch_to_exit"] * 1000 for r, c in context.items()}),
        "kit_runtime_total_ms": pd.Series({r: c["total"] * 1000 for r, c in context.items()}),
    }).reindex(wanted)
    table.index.name = "runtime"
    table["within_10pct"] = table["diff_pct"].abs() <= TARGET * 100
    table["within_1ms"] = (table["kit_harness_ms"] - table["hyperfine_ms"]).abs() <= FLOOR_MS
    table["ok"] = table["within_10pct"] | table["within_1ms"]
    table = table.round(2)
    commands = "\n".join(f"- {r}: `{c['command']}`" for r, c in context.items())
    text = (f"# kit.bench vs hyperfine: the same raw command line (`{shlex.join(CMD)}`), medians of "
            f"{blocks * per_block} runs each, in {blocks} alternating blocks of {per_block}\n\n"
            + tables.table(table, index=True) + f"\n\nRaw commands:\n{commands}\n\nhost: {envinfo.collect()['host']}, "
            f"{int(table['within_10pct'].sum())}/{len(table)} within 10 %, "
            f"{int(table['ok'].sum())}/{len(table)} within 10 % or {FLOOR_MS:g} ms\n")
    (out / "hyperfine.md").write_text(text)
    storage.record(out, __file__, ["hyperfine.csv", "hyperfine.md"])  # the commit and definitions measured under
    print(text)
    return 0 if table["ok"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
