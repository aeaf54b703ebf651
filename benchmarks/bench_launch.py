"""Why the kit launches ``runc run`` in a process group of its own, not a session (issue 24).

Where the scheduler's autogroups are on (``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the
default of Debian's and Ubuntu's kernels), every new session is a new CFS task group. This script
storms the plain CLI (bench_overhead.raw_commands: ``runc --root TMP run --bundle B ID``, ``echo
hello``) N at a time, each start launched either in a session of its own (``start_new_session``,
how the kit launched a runtime before) or in a process group of its own (``process_group=0``, how
it launches one now: kit._proc.group_of_its_own), interleaved in a shuffled order, with the same
barrier and host CPU clock as bench_storm.py (its plain_storm). Per way: starts per second (median of the storms),
the CPU of the launched processes per start (runc, its init, the command: this process's reaped
children) and the host's busy CPU per start.

    .venv/bin/python benchmarks/bench_launch.py [--rounds 40] [--n 16]

Writes benchmarks/results/storm/launch.csv (one row per storm) and launch.md (the table, with the
autogroup setting and the host's load when it ran).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from kit.bench import storage, storm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import cleanup, raw_commands  # noqa: E402
from bench_storm import plain_storm  # noqa: E402

HERE = Path(__file__).resolve().parent
#: The two ways of launching, as Popen's keywords.
WAYS = {"session of its own": {"start_new_session": True}, "process group of its own": {"process_group": 0}}
AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def one_storm(argv_of, n: int, popen: dict) -> dict:
    """A storm of ``n`` plain runs launched with ``popen`` (bench_storm.plain_storm); its starts/s, failures
    and CPU per start."""
    t0 = os.times()
    rows = plain_storm(argv_of, n, stdin=subprocess.DEVNULL, **popen)
    t1 = os.times()
    got = {r["metric"]: r["value"] for r in rows if r["metric"].startswith("storm_")}
    ok = n - got["storm_failures"]
    children = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return {"starts_per_s": got["storm_starts_per_s"], "failures": int(got["storm_failures"]),
            "launched_cpu_ms_per_start": children / max(ok, 1) * 1e3,
            "host_cpu_ms_per_start": got.get("storm_cpu_per_start", float("nan")) * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "storm"))
    args = ap.parse_args(argv)
    storm.sizes([args.n])  # 1..MAX_N, or a one-line error
    if sys.version_info < (3, 11):
        ap.error("Popen's process_group needs Python 3.11 or later")
    autogroup = AUTOGROUP.read_text().strip() if AUTOGROUP.exists() else "absent"
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="kit-launch-"))
    rows = []
    try:
        argv_of = raw_commands(tmp)["runc"]
        for popen in WAYS.values():  # a warm-up storm each, not kept
            one_storm(argv_of, args.n, popen)
        order = list(WAYS) * args.rounds
        random.Random(args.seed).shuffle(order)
        for i, way in enumerate(order):
            rows.append({"storm": i, "launch": way, "n": args.n, **one_storm(argv_of, args.n, WAYS[way])})
            print(f"storm {i + 1}/{len(order)}", file=sys.stderr, end="\r")
    finally:
        cleanup(tmp)
    print(file=sys.stderr)
    df = pd.DataFrame(rows)
    table = df.groupby("launch", sort=False).agg(
        storms=("storm", "size"), failures=("failures", "sum"), starts_per_s=("starts_per_s", "median"),
        launched_cpu_ms_per_start=("launched_cpu_ms_per_start", "median"),
        host_cpu_ms_per_start=("host_cpu_ms_per_start", "median")).reset_index()
    group, session = (table.set_index("launch").loc[w] for w in ("process group of its own", "session of its own"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "launch.csv", index=False)
    text = (f"# Launching `runc run` in a session or a process group of its own: storms of {args.n}, "
            f"{args.rounds} of each, interleaved\n\n"
            f"The plain CLI (`runc run` on a `runc spec` bundle, `echo hello`), each start launched by one "
            f"thread of a storm. Autogroups (`{AUTOGROUP}`): {autogroup}; load average before: {load:.1f}. "
            "Medians over the storms: starts/s; CPU of the launched processes (runc, its init, the command) "
            "per start; the host's busy CPU per start.\n\n"
            + table.to_markdown(index=False, floatfmt=".4g") + "\n\n"
            f"In a process group of its own the storm made {group.starts_per_s / session.starts_per_s - 1:+.1%} "
            f"starts per second, its launched processes {group.launched_cpu_ms_per_start - session.launched_cpu_ms_per_start:+.2f} ms "
            f"and the host {group.host_cpu_ms_per_start - session.host_cpu_ms_per_start:+.2f} ms of CPU per start, "
            "against a session of its own each.\n")
    (out / "launch.md").write_text(text)
    storage.record(out, __file__, ["launch.csv", "launch.md"])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
