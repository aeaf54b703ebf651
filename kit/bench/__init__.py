"""Benchmarks: startup time, memory, disk and density of workloads across process, containers and VMs.

>>> from kit.bench import Study
>>> study = Study(image="busybox", runtimes="all", workload="true", repeat=10)
>>> df = study.run()            # one row per (run, metric); every run kept
>>> study.summary(); study.relative(); study.plot()
>>> study.save("results"); Study.read("results").plot()
>>> Study.read("results").run(resume=True)   # a study that was interrupted: measure only what is missing
>>> study.run(client=dask_client)            # on every host of a Dask cluster (kit.bench.fleet)
>>> compare(["results/monday", "results/friday"])  # differences beyond the noise, per runtime and metric

A study's parameters are one :class:`StudyParams` (``Study(...)`` takes its fields). The same from a
terminal: ``kit bench -r all -n 10 true``; in IPython: ``%bench ...`` (see :func:`build_parser` and
:func:`magic`). What every number means: :data:`METRICS` (also in the docs' metrics reference, in every saved
``study.json`` and in ``df.attrs["metrics"]``). The explorer widget: ``kit.widgets.explore(study)``.
"""

from __future__ import annotations

from . import stats, tables
from .compare import compare
from .metrics import METRICS
from .options import build_parser, magic
from .params import PARTS, StudyParams
from .study import Study
from .workloads import PRESETS, Workload

__all__ = ["Study", "StudyParams", "Workload", "PRESETS", "METRICS", "PARTS", "stats", "tables", "build_parser",
           "magic", "compare"]
