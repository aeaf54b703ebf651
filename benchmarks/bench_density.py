"""Density with page sharing (issue 24): memory per idle instance against n, with KSM off and on,
and for VMs against the guest's memory size.

A study of the density part (kit.bench.Study, parts="density") with ``ksm=[off, on]`` and
``vm_memory``: per runtime and setting, n = 1, 2, 4, ... idle instances (``sleep``), and at each n
the PSS sum of their host processes and the host's MemAvailable method (gVisor's: before minus
after, divided by n); with KSM on, after merging has settled (kit.bench.ksm's rule), KSM's
pages_shared and pages_sharing. KSM is on for those passes only and back to its first settings
afterwards.

    .venv/bin/python benchmarks/bench_density.py [--runtimes process,runc,runsc,qemu] [--density-max 16]
        [--vm-density-max 4] [--vm-memory 128,256,512]

Writes benchmarks/results/density/: the study (results.csv, study.json, summary, figures with the
field's references) and density.md: memory per instance at the largest n with and without KSM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from kit.bench import Study, storage, stormplots  # noqa: E402

HERE = Path(__file__).resolve().parent


def largest_n(study: Study):
    """Per runtime, KSM setting and guest size: the rows of the largest n measured (the table's)."""
    t = stormplots.sweep_table(study.df)
    keys = [c for c in ("runtime", "ksm", "vm_memory") if c in t.columns]
    return t.sort_values("n").groupby(keys, sort=True).tail(1).sort_values(keys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", default="process,runc,runsc,docker,qemu")
    ap.add_argument("--density-max", type=int, default=16)
    ap.add_argument("--vm-density-max", type=int, default=4)
    ap.add_argument("--vm-memory", default="128,256,512")
    ap.add_argument("--out", default=str(HERE / "results" / "density"))
    args = ap.parse_args(argv)
    t0 = time.time()
    study = Study(runtimes=args.runtimes, parts="density", ksm="off,on", vm_memory=args.vm_memory,
                  density_max=args.density_max, vm_density_max=args.vm_density_max, name="density")
    study.run()
    out = Path(args.out)
    study.save(out)
    text = ("# Density: memory per idle instance at the largest n, KSM off and on\n\n"
            "PSS MiB/instance: the instances' host processes' PSS summed, over n; host MiB/instance: the host's "
            "MemAvailable before minus with n running, over n (gVisor's method: on a shared host the "
            "neighbours move it); pages_shared/pages_sharing: KSM's counters once merging settled.\n\n"
            + largest_n(study).to_markdown(index=False, floatfmt=".4g") + "\n")
    (out / "density.md").write_text(text)
    storage.record(out, __file__, since=t0)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
