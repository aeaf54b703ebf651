"""The default study (issue 4): busybox ``true`` on every runtime available here.

    .venv/bin/python benchmarks/default_study.py [--out benchmarks/results/default] [--repeat 10]

Writes to the output directory: results.csv (every run, one row per metric),
study.json (parameters, seed and run order, environment, metric definitions),
summary.csv, README.md (the tables, via Study.save), and the figures (startup, phases,
memory, disk, density). ``kit.bench.Study.read(dir).plot()`` re-plots it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from kit.bench import Study, storage  # noqa: E402
from kit.bench.tables import markdown  # noqa: E402

HERE = Path(__file__).resolve().parent

#: The study definition. VMs get 5 measured boots (plus a warmup): under TCG
#: each takes 3-5 s, and 5 keep the whole study near one minute on 2 cores.
DEFAULT = dict(image="busybox", runtimes="all", workload="true", repeat=10, warmup=1, vm_repeat=5,
               parts="startup,memory,disk,density", timeout=120, seed=0, idle_memory="256m",
               density_max=8, vm_density_max=4, density_memory_budget="4g", density_time_budget=60,
               name="default")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results" / "default"))
    ap.add_argument("--repeat", type=int, default=DEFAULT["repeat"])
    ap.add_argument("--runtimes", default=DEFAULT["runtimes"])
    args = ap.parse_args(argv)
    params = {**DEFAULT, "repeat": args.repeat,
              "runtimes": args.runtimes if args.runtimes == "all" else args.runtimes.split(",")}
    t0, started = time.monotonic(), time.time()
    study = Study(**params)
    study.run()
    out = study.save(args.out)
    storage.record(out, __file__, since=started)  # every file the save wrote
    print(markdown(study, figures=False))
    print(f"default study: {time.monotonic() - t0:.0f} s wall, saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
