"""Running a study: its startup, steady-state and load parts, each run's rows added as it completes.

:func:`run` measures what :mod:`kit.bench.plan` says is still to measure into a
:class:`~kit.bench.storage.Results`: every cell for a fresh run, the missing ones when resuming.
Interrupted (Ctrl-C) or stopped by an error, the results keep every completed run and
``meta["partial"]`` says why; a run that fails with an error is a ``failed`` row whose status is
the error, and the other runtimes go on. :func:`measure` is the same as a fleet host runs it.
"""

from __future__ import annotations

import random
import secrets
import time
from datetime import datetime, timezone

import pandas as pd

from .. import images
from ..runtimes import qemu
from ..spec import parse_memory
from . import density, disk, envinfo, footprint, ksm, loadpart, loads, metrics, plan, startup, storm
from . import kernels as kernels_
from . import starts as starts_
from .params import StudyParams
from .storage import Results, normalise

#: A runtime that fails this many runs in a row is dropped from the rest of the study.
MAX_CONSECUTIVE_FAILURES = 3


def run(params: StudyParams, results: Results, resume: bool = False) -> pd.DataFrame:
    """Measure every part of ``params`` into ``results``; return (and keep in ``results.df``) the frame.

    Args:
        resume: continue the results held (after an interruption, or read from a directory) with
            the same plan: cells already measured are skipped, and an unfinished load cell is measured
            again whole.
    """
    from tqdm.auto import tqdm

    t_start = time.time()
    if resume and results.df is not None:
        todo = plan.todo(params, list(results.meta["runtimes"]), results.df)
        _forget_unfinished_loads(results, todo)
        results.meta.setdefault("resumed", []).append(_iso(t_start))
        dropped = dict(results.meta.get("dropped", {}))
    else:
        runtimes, skipped = plan.resolve_runtimes(params)
        results.df = None
        todo = plan.todo(params, runtimes)
        results.meta = {
            "params": params.to_dict(), "environment": environment(params), "metrics": metrics.definitions(),
            "runtimes": runtimes, "skipped": skipped,
            "order": [[f"{rt}/{img}/{w.name}" for img, rt, w in cells] for cells in todo.rounds],
            "started": _iso(t_start), "elapsed_s": 0.0,
        }
        dropped = {}
    results.meta.update(dropped=dropped, partial="running")
    elapsed_before = results.meta.get("elapsed_s") or 0.0
    bar = tqdm(total=round(todo.weight(params), 2), disable=not params.progress, unit="s(est)", desc="bench",
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
    parts = _Parts(params, results, todo, bar, dropped)
    try:
        parts.startup()
        parts.storm()
        parts.steady()
        parts.load()
    except BaseException as e:
        n_done = len(plan.done_cells(results.df)) if results.df is not None else 0
        results.meta["partial"] = (f"stopped by {type(e).__name__}{': ' + str(e) if str(e) else ''} "
                                   f"with {n_done} cells measured; Study.run(resume=True) measures the rest")
        raise
    else:
        results.meta["partial"] = None
    finally:
        bar.close()
        results.meta["elapsed_s"] = round(elapsed_before + time.time() - t_start, 1)
        if results.df is None:
            results.df = normalise(pd.DataFrame())
    return results.df


def measure(params: StudyParams, on_rows=None) -> tuple[pd.DataFrame, dict]:
    """A fresh run of ``params`` on this machine, as a fleet host runs it (:func:`kit.bench.fleet.run`'s
    ``runner``): its frame and metadata. ``on_rows(frame, meta)`` receives each batch of rows as it
    completes (:attr:`kit.bench.storage.Results.on_rows`)."""
    results = Results(name=params.name)
    results.on_rows = on_rows
    run(params, results)
    return results.df, results.meta


def environment(params: StudyParams) -> dict:
    """The environment record of a run (:func:`kit.bench.envinfo.collect`), with the load part's CPU pinning."""
    env = envinfo.collect()
    if "load" in params.parts:
        env["load_pinning"] = loads.pinning()
    return env


def startup_sample(params: StudyParams, rt: str, image: str, w, name: str, mode: str = "cold",
                   kernel: str = "") -> startup.Sample:
    """One startup sample (of a VM, with ``kernel`` when given); an unexpected error becomes a failed
    sample, not the end of the study."""
    try:
        return startup.measure(rt, image, w, name, params.timeout, params.memory,
                               **({"start_mode": mode} if mode != "cold" else {}),
                               **({"options": kernels_.options(kernel)} if kernel else {}))
    except Exception as e:  # noqa: BLE001  (recorded in the frame; the other runtimes go on)
        s = startup.Sample(status=f"error: {type(e).__name__}: {e}")
        s.add("failed", 1)
        return s


def _forget_unfinished_loads(results: Results, todo: plan.Todo) -> None:
    """A resumed study measures an unfinished load cell again whole: its rows and raw outputs go."""
    df = results.df
    cells = {(n, rt) for n, rts in todo.loads.items() for rt in rts}
    if not cells:
        return
    stale = pd.Series([(w, rt) in cells for w, rt in zip(df["workload"], df["runtime"])],
                      index=df.index) & (df["part"] == "load")
    results.df = normalise(df[~stale], results.meta.get("metrics"))
    results.outputs.drop(cells)


class _Parts:
    """The parts of one run: what it still measures, its progress bar, the runtimes dropped so far."""

    def __init__(self, params: StudyParams, results: Results, todo: plan.Todo, bar, dropped: dict):
        self.params, self.results, self.todo, self.bar, self.dropped = params, results, todo, bar, dropped
        self.uid = secrets.token_hex(3)

    def _cost(self, rt: str) -> float:
        return plan.COST.get(self.todo.kinds[rt], 1)

    def startup(self) -> None:
        """Every startup run still to measure, once per start mode its runtime offers; a runtime that
        fails :data:`MAX_CONSECUTIVE_FAILURES` runs in a row is dropped."""
        p, meta = self.params, self.results.meta
        failures = {r: 0 for r in self.todo.runtimes}
        for r, pos, (image, rt, w) in self.todo.startup:
            if rt in self.dropped:
                continue
            modes, refused = starts_.offered(rt, p.starts)
            meta.setdefault("skipped_starts", {}).update(refused)
            runs = [(m, k) for m in modes for k in kernels_.for_runtime(rt, p.kernels)
                    if ("startup", r, image, rt, w.name, k) not in self.todo.done]
            for i, (mode, kern) in enumerate(runs):
                if rt in self.dropped:
                    break
                self.bar.set_postfix_str(f"startup {rt} {w.name} {mode} {kern} round {r + 1}/{len(self.todo.rounds)}")
                s = startup_sample(p, rt, image, w, f"b{self.uid}-{r}-{pos}-{mode[0]}{i}", mode, kern)
                failures[rt] = 0 if s.status == "ok" else failures[rt] + 1
                if failures[rt] >= MAX_CONSECUTIVE_FAILURES:
                    self.dropped[rt] = s.status
                self.results.add([{**self._startup_ctx(r, pos, image, rt, w, s, mode, kern), **row} for row in s.rows])
            self.bar.update(self._cost(rt))

    def storm(self) -> None:
        """Every storm still to measure (:func:`kit.bench.storm.run`), smallest first in each round; a
        runtime whose storm had no room, or ran the host out of memory or PIDs, storms no more
        (``meta["storm_stopped"]``), and the rows measured so far stay."""
        p, meta = self.params, self.results.meta
        halted = meta.setdefault("storm_stopped", {})
        for r, image, rt, w, n in self.todo.storms:
            if rt in self.dropped or rt in halted:
                continue
            self.bar.set_postfix_str(f"storm {rt} {w.name} N={n} round {r + 1}/{p.warmup + p.repeat}")
            warm = r < p.warmup
            ctx = {"image": image, "runtime": rt, "kind": self.todo.kinds[rt], "workload": w.name, "round": r,
                   "warmup": warm}
            # a VM's guest RAM: the study's memory, else the VM's default
            guest = (parse_memory(p.memory) if p.memory else qemu.DEFAULT_MEMORY) if self.todo.kinds[rt] == "vm" else None
            why = storm.headroom(self.todo.kinds[rt], n, guest)
            if why is None:
                try:
                    rows = storm.run(rt, image, w, n, f"b{self.uid}-t{r}-{n}", p.timeout, p.memory)
                except Exception as e:  # noqa: BLE001  (recorded in the frame; the other runtimes go on)
                    rows = [{"part": "storm", "metric": "failed", "n": n, "value": 1.0,
                             "status": f"error: {type(e).__name__}: {e}"}]
                why = storm.stopped(rows)
            else:
                rows = [{"part": "storm", "metric": "failed", "n": n, "value": 1.0, "component": "storm",
                         "status": f"stopped: no room: {why}"}]
            if why:
                halted[rt] = f"storm of {n}: {why}"
            self.results.add([{**ctx, **row} for row in rows])
            self.bar.update(self._cost(rt) * n / 2 + 1)

    def _startup_ctx(self, r: int, pos: int, image: str, rt: str, w, s: startup.Sample, mode: str, kern: str) -> dict:
        """The columns of one startup sample's rows besides its metrics."""
        p = self.params
        warm = r < p.warmup
        return {"part": "startup", "image": image, "runtime": rt, "kind": self.todo.kinds[rt],
                "workload": w.name, "round": r, "order": pos, "warmup": warm,
                "repeat": r if warm else r - p.warmup, "accel": s.accel, "status": s.status,
                **({"start": mode, "pool": s.pool} if p.starts != ("cold",) else {}),
                **({"kernel": kern} if p.kernels else {})}

    def steady(self) -> None:
        """The steady-state parts (memory, disk, density): per image, its bytes, then one pass per runtime
        in a seeded order (:func:`kit.bench.density.steady_state`), once per KSM setting and, for VMs, per
        guest memory size of the study (:func:`kit.bench.plan.sweeps`)."""
        p, todo = self.params, self.todo
        if not any(part in p.parts for part in plan.STEADY):
            return
        rng = random.Random(p.seed + 1)
        first = next(part for part in p.parts if part in plan.STEADY)
        for image in p.image:
            usages = self._image_bytes(image) if "disk" in p.parts else {}
            order = list(todo.runtimes)
            rng.shuffle(order)  # so a slowly filling host does not always hit the same runtime
            for i, rt in enumerate(order):
                sweeps = plan.sweeps(p, rt)
                # each guest kernel's passes measure as a runtime's do: memory and disk in its first
                passes = [(on, mib, kern) for kern in kernels_.for_runtime(rt, p.kernels) for on, mib in sweeps]
                for k, (on, mib, kern) in enumerate(passes):
                    if rt in self.dropped or (image, rt, on, mib) not in todo.steady \
                            or ("steady", image, rt, on, mib, kern) in todo.done:
                        continue
                    self.bar.set_postfix_str(f"steady state {rt} ({image}){' KSM' if on else ''}"
                                             f"{f' {mib} MiB' if mib else ''}{f' {kern} kernel' if kern else ''}")
                    try:
                        with ksm.enabled(on):
                            rows = self._steady_rows(image, rt, f"{i}{k}", usages, on, mib,
                                                     first=(on, mib) == sweeps[0], kernel=kern)
                    except Exception as e:  # noqa: BLE001  (recorded in the frame; the other runtimes go on)
                        rows = [{"part": first, "metric": "failed", "value": 1,
                                 "status": f"error: {type(e).__name__}: {e}"}]
                    self.results.add([{**self._steady_context(image, rt, i, on, mib, kern), **r} for r in rows])
                    self.bar.update(1)

    def _steady_context(self, image: str, rt: str, i: int, on: bool, mib: int | None, kern: str = "") -> dict:
        """What every row of one steady-state pass shares: a ``ksm`` column in a study of KSM settings, a
        ``vm_memory`` column (guest MiB, "" for other runtimes) in a study of guest sizes, a ``kernel``
        column ("" for runtimes without one) in a study of guest kernels."""
        p = self.params
        ctx = {"image": image, "runtime": rt, "kind": self.todo.kinds[rt], "workload": "idle", "warmup": False,
               "order": i}
        if p.ksm != (False,):
            ctx["ksm"] = "on" if on else "off"
        if p.vm_memory:
            ctx["vm_memory"] = str(mib) if mib else ""
        if p.kernels:
            ctx["kernel"] = kern
        return ctx

    def _image_bytes(self, image: str) -> dict:
        """The disk part's image rows (once per image, unless a resumed study has them); each format's usage."""
        image_rows, usages = disk.image_rows(images.get(image))
        if ("disk-image", image) not in self.todo.done:
            self.results.add([{"part": "disk", "image": image, "runtime": "-", "kind": "-", "workload": "-",
                               "warmup": False, "status": "ok", **r} for r in image_rows])
        return usages

    def _steady_rows(self, image: str, rt: str, i: str, usages: dict, on: bool = False, mib: int | None = None,
                     first: bool = True, kernel: str = "") -> list[dict]:
        """One runtime's steady-state pass: its daemons' memory, then its idle instances' rows; the
        memory and disk parts in its first pass only (the others are density sweeps); a VM's with ``kernel``
        when given."""
        p = self.params
        rows = []
        parts = p.parts if first else tuple(x for x in p.parts if x == "density")
        if "memory" in parts:
            rows += [{"part": "memory", "status": "ok", "n": 0, **r} for r in footprint.daemon_rows(rt)]
        rows += density.steady_state(
            rt, image, parts=parts, max_n=self.todo.idle[rt], memory_budget=p.density_memory_budget,
            time_budget=p.density_time_budget, timeout=p.timeout, prefix=f"b{self.uid}-s{i}{'k' if on else ''}"
            f"{mib or ''}", image_usages=usages, memory_limit=f"{mib}m" if mib else p.idle_memory,
            tick=lambda: self.bar.update(self._cost(rt)), settle=ksm.measure if on else None,
            options=kernels_.options(kernel))
        return rows

    def load(self) -> None:
        """The load part: every unfinished (load, runtime) cell (:func:`kit.bench.loadpart.run`)."""
        p = self.params
        if not self.todo.loads:
            return

        def progress(text):
            self.bar.set_postfix_str(text)
            self.bar.update(p.seconds + 1)

        loadpart.run(list(p.loads), [r for r in self.todo.runtimes if r not in self.dropped], repeat=p.repeat,
                     warmup=p.warmup, seconds=p.seconds, seed=p.seed, timeout=p.timeout, add=self.results.add,
                     outputs=self.results.outputs, progress=progress, done=self.todo.loads)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
