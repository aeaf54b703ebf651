"""Planning a study: which runtimes it measures (and which it leaves out, why), the startup rounds
in their seeded order, how many idle instances the steady-state parts start, and what a run (or a
resumed run) still has to measure.

A startup cell is (image, runtime, workload) in one round; a steady-state cell is (image, runtime);
a load cell is (load, runtime). Each round is a seeded shuffle of its cells, so runtimes
interleave and a slowly changing host does not always hit the same one; the order is saved with
the study (``meta["order"]``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from .. import runtimes as _runtimes
from ..errors import RuntimeUnavailable
from . import kernels, loadpart, metrics, storm
from .params import StudyParams

#: The parts measured in one steady-state pass per runtime (:mod:`kit.bench.density`).
STEADY = ("memory", "disk", "density")

#: Rough seconds one startup run or one idle instance costs, by runtime kind:
#: only used to weight the progress bar so its time-left estimate is sensible.
COST = {"process": 0.02, "container": 0.4, "sandbox": 0.8, "vm": 6.0}


def resolve_runtimes(params: StudyParams) -> tuple[list[str], dict[str, str]]:
    """(runtimes to measure, process first, then by kind; {runtime left out: why}).

    Raises:
        RuntimeUnavailable: a runtime named explicitly cannot run here.
    """
    if params.runtimes == "all":
        table = _runtimes.available()
        chosen = [r for r, ok in zip(table["name"], table["available"]) if ok]
        skipped = {r: why for r, ok, why in zip(table["name"], table["available"], table["reason"]) if not ok}
    else:
        chosen = [_runtimes.require(r).name for r in params.runtimes]
        skipped = {}
    if not chosen:
        raise RuntimeUnavailable("no runtime is available here: see kit.runtimes.available() for why")
    order = {k: i for i, k in enumerate(metrics.KINDS)}
    chosen.sort(key=lambda r: (order.get(_runtimes.get(r).kind, 9), r))
    return chosen, skipped


def rounds(params: StudyParams, runtimes: list[str]) -> list[list[tuple[str, str, object]]]:
    """The startup rounds (warmups first): each a seeded shuffle of (image, runtime, workload) cells; a VM
    runtime takes part in the first ``warmup + vm_repeat`` only."""
    rng = random.Random(params.seed)
    out = []
    for r in range(params.warmup + params.repeat):
        cells = [(img, rt, w) for img in params.image for rt in runtimes for w in params.workloads
                 if _runtimes.get(rt).kind != "vm" or r < params.warmup + params.vm_repeat]
        rng.shuffle(cells)
        out.append(cells)
    return out


def storms(params: StudyParams, runtimes: list[str]) -> list[tuple[int, str, str, object, int]]:
    """The storms (warmups first): (round, image, runtime, workload, size), each round's sizes smallest
    first and its runtimes in a seeded order; a VM runtime storms in the first ``warmup + vm_repeat``
    rounds only. None without the storm part.

    Raises:
        InvalidSpec: they would start more instances than :data:`kit.bench.storm.MAX_TOTAL`.
    """
    if "storm" not in params.parts:
        return []
    rng = random.Random(params.seed + 2)
    out = []
    for r in range(params.warmup + params.repeat):
        for n in params.storm:
            cells = [(r, img, rt, w, n) for img in params.image for rt in runtimes for w in params.workloads
                     if _runtimes.get(rt).kind != "vm" or r < params.warmup + params.vm_repeat]
            rng.shuffle(cells)
            out += cells
    storm.check_total(out)
    return out


def sweeps(params: StudyParams, runtime: str) -> list[tuple[bool, int | None]]:
    """The steady-state passes of ``runtime``: (KSM on, guest MiB or None) for each KSM setting and, for a
    VM runtime, each of ``vm_memory`` (None: the study's ``idle_memory``)."""
    sizes = params.vm_memory if params.vm_memory and _runtimes.get(runtime).kind == "vm" else (None,)
    return [(k, m) for k in params.ksm for m in sizes]


def idle_counts(params: StudyParams, runtimes: list[str]) -> dict[str, int]:
    """The most idle instances the steady-state pass starts per runtime: up to ``density_max`` (a VM's
    ``vm_density_max``) with the density part, else 2 for disk (what a second instance adds), else 1."""
    def most(rt: str) -> int:
        if "density" in params.parts:
            return params.vm_density_max if _runtimes.get(rt).kind == "vm" else params.density_max
        return 2 if "disk" in params.parts else 1

    return {rt: most(rt) for rt in runtimes}


def planned_cells(params: StudyParams, runtimes: list[str]) -> int:
    """How many batches of rows a fresh run adds (a startup run, a steady-state runtime, an image's
    bytes): a fleet host's progress total."""
    n = sum(len(c) for c in rounds(params, runtimes)) if "startup" in params.parts else 0
    n += len(storms(params, runtimes))
    if any(p in params.parts for p in STEADY):
        n += len(params.image) * sum(len(sweeps(params, rt)) for rt in runtimes) \
            + (len(params.image) if "disk" in params.parts else 0)
    return n


def done_cells(df: pd.DataFrame) -> set[tuple]:
    """The cells a frame already holds: ("startup", round, image, runtime, workload, kernel) per startup
    run, ("storm", round, image, runtime, workload, size) per storm, ("disk-image", image) for the image's
    bytes, ("steady", image, runtime, KSM on, guest MiB or None, kernel) per steady-state measurement;
    kernel is "" for a runtime measured without one (:mod:`kit.bench.kernels`)."""
    if "kernel" not in df.columns:
        df = df.assign(kernel="")
    df = df.assign(kernel=df["kernel"].fillna(""))
    st = df[df["part"] == "startup"]
    cells = {("startup", int(r), i, rt, w, k) for r, i, rt, w, k in
             st[["round", "image", "runtime", "workload", "kernel"]].drop_duplicates().itertuples(index=False)}
    sm = df[(df["part"] == "storm") & df["metric"].isin(["storm_wall", "failed"])]
    cells |= {("storm", int(r), i, rt, w, int(n)) for r, i, rt, w, n in
              sm[["round", "image", "runtime", "workload", "n"]].drop_duplicates().itertuples(index=False)}
    other = df[~df["part"].isin(["startup", "storm", "load"])]  # load cells: loadpart.unfinished
    cells |= {("disk-image", i) for i in other[other["runtime"] == "-"]["image"].unique()}
    steady = other[other["runtime"] != "-"]
    for i, rt, k, m, kern in zip(steady["image"], steady["runtime"], _column(steady, "ksm"),
                                 _column(steady, "vm_memory"), steady["kernel"]):
        cells.add(("steady", i, rt, k == "on", int(m) if m else None, kern))
    return cells


def _column(df: pd.DataFrame, name: str) -> list:
    """A column of optional cells (``ksm``, ``vm_memory``), or "" for every row of a frame without it."""
    return df[name].tolist() if name in df.columns else [""] * len(df)


@dataclass
class Todo:
    """What a run still measures: every cell of the plan not in ``done``."""

    runtimes: list[str]
    kinds: dict[str, str]
    rounds: list[list[tuple]]
    startup: list[tuple[int, int, tuple]]
    """(round, position in it, (image, runtime, workload)) of each startup run still to measure."""
    storms: list[tuple[int, str, str, object, int]]
    """(round, image, runtime, workload, size) of each storm still to measure."""
    steady: list[tuple[str, str, bool, int | None]]
    """(image, runtime, KSM on, guest MiB or None) of each steady-state measurement still to make."""
    loads: dict[str, list[str]]
    """{load: runtimes still to measure} (see :func:`kit.bench.loadpart.unfinished`)."""
    idle: dict[str, int]
    done: set[tuple]

    def weight(self, params: StudyParams) -> float:
        """Rough seconds of it all: the progress bar's total (see :data:`COST`)."""
        cost = {rt: COST.get(kind, 1) for rt, kind in self.kinds.items()}
        total = sum(cost[rt] for _, _, (_, rt, _) in self.startup)
        total += sum(cost[rt] * n / 2 + 1 for _, _, rt, _, n in self.storms)  # 2 cores: about n/2 at once
        total += sum(cost[rt] * self.idle[rt] + 1 for _, rt, _, _ in self.steady)
        total += sum(len(rts) for rts in self.loads.values()) * (params.warmup + params.repeat) * (params.seconds + 1)
        return total


def todo(params: StudyParams, runtimes: list[str], df: pd.DataFrame | None = None) -> Todo:
    """What a run on ``runtimes`` measures, without the cells ``df`` (a resumed study's frame) holds."""
    done = done_cells(df) if df is not None else set()
    plan = rounds(params, runtimes) if "startup" in params.parts else []
    startup = [(r, pos, cell) for r, cells in enumerate(plan) for pos, cell in enumerate(cells)
               if any(("startup", r, cell[0], cell[1], cell[2].name, k) not in done
                      for k in kernels.for_runtime(cell[1], params.kernels))]
    storm_cells = [(r, i, rt, w, n) for r, i, rt, w, n in storms(params, runtimes)
                   if ("storm", r, i, rt, w.name, n) not in done]
    steady = [(image, rt, k, m) for image in params.image for rt in runtimes for k, m in sweeps(params, rt)
              if any(("steady", image, rt, k, m, kern) not in done for kern in kernels.for_runtime(rt, params.kernels))]\
        if any(p in params.parts for p in STEADY) else []
    loads = loadpart.unfinished(df, list(params.loads), runtimes, params.warmup + params.repeat - 1) \
        if "load" in params.parts else {}
    return Todo(list(runtimes), {r: _runtimes.get(r).kind for r in runtimes}, plan, startup, storm_cells, steady,
                loads, idle_counts(params, runtimes), done)
