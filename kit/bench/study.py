"""A study: images x runtimes x workloads, measured for startup, memory, disk, density and under load.

>>> from kit.bench import Study
>>> study = Study(image="busybox", runtimes="all", workload="true", repeat=10)
>>> df = study.run()           # tidy: one row per (run, metric)
>>> study.summary()            # median, IQR, CI, mean ± sd, outliers per runtime and metric
>>> study.plot()               # startup, memory, disk, density figures
>>> study.save("results/"); Study.load("results/").plot()
>>> study.run(client=dask_client)  # the same study on every host of a Dask cluster (kit.bench.fleet)
>>> Study(runtimes="process,runc", workload=["cpu", "redis"], repeat=3, seconds=5).run()  # load part
"""

from __future__ import annotations

import html
import random
import secrets
import time
from datetime import datetime, timezone

import pandas as pd

from .. import runtimes as _runtimes
from ..errors import InvalidSpec, RuntimeUnavailable
from ..spec import parse_memory
from . import density, disk, envinfo, footprint, loadpart, metrics, startup, stats, storage
from . import starts as starts_
from .workloads import PRESETS, Workload, parse, parse_many

PARTS = ("startup", "memory", "disk", "density", "load")

#: Rough seconds one startup run or one idle instance costs, by runtime kind:
#: only used to weight the progress bar so its time-left estimate is sensible.
_COST = {"process": 0.02, "container": 0.4, "sandbox": 0.8, "vm": 6.0}

#: A runtime that fails this many runs in a row is dropped from the rest of the study.
MAX_CONSECUTIVE_FAILURES = 3


def _as_list(value, what: str) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = [str(v) for v in value]
    if not items:
        raise InvalidSpec(f"no {what} given: name at least one")
    return items


class Study:
    """Startup time, memory, disk and density of workloads across runtimes, with every run kept.

    Args:
        image: image name or list of names (``busybox``).
        runtimes: ``"all"`` (every runtime available here), a list, or a comma-separated string.
        workload: a preset (``true``, ``echo``, ``httpd``, ``redis``), a command line, a
            :class:`~kit.bench.workloads.Workload`, a load workload (``cpu``, ``memory``, ``syscall``,
            ``fileio``, ``fileio-volume``, ``network``, ``redis``, ``mariadb``: see
            :mod:`kit.bench.loadpart`), or a list of them. ``redis`` is the load unless ``parts``
            leaves ``load`` out (then it is the startup preset).
        repeat: measured startup runs per runtime, image and workload.
        warmup: extra startup runs first, kept in the frame but flagged ``warmup``.
        vm_repeat: measured runs for VM runtimes (boots take seconds); default ``min(repeat, 5)``.
        parts: which of ``startup``, ``memory``, ``disk``, ``density``, ``load`` to measure; default:
            ``load`` for load workloads, the other four for anything else.
        seconds: how long each load run lasts (the tool's own bound; it also has a deadline).
        timeout: seconds before one run (or one instance becoming ready) is abandoned.
        seed: seeds the interleaving of runtimes in each round and the bootstrap.
        memory: memory limit of startup runs (None: no limit, each runtime's default).
        idle_memory: memory limit of the idle instances (memory, density, disk); a VM's RAM.
        density_max: most idle instances at once; ``vm_density_max`` for VMs.
        density_memory_budget: stop adding instances before their memory would pass this.
        density_time_budget: stop adding instances (per runtime) before this many seconds.
        name: the study's label in the frame.
        progress: show a tqdm progress bar.
        starts: start modes of the startup runs (``cold``, ``precreated``, ``snapshot``): each cell runs
            once per mode its runtime offers; rows get a ``start`` column (see :mod:`kit.bench.starts`).
    """

    def __init__(self, image="busybox", runtimes="all", workload="true", repeat: int = 10, *,
                 warmup: int = 1, vm_repeat: int | None = None, parts=None, timeout: float = 120.0,
                 seed: int = 0, seconds: float = 5.0, memory=None, idle_memory="256m", density_max: int = 8,
                 vm_density_max: int = 4, density_memory_budget="4g", density_time_budget: float = 60.0,
                 name: str = "study", progress: bool = True, starts=("cold",)):
        self.starts = starts_.check(starts)
        self.images = _as_list(image, "image")
        self.runtimes = runtimes if runtimes == "all" else _as_list(runtimes, "runtime")
        startup_items, self.loads, parts = loadpart.split(workload, None if parts is None else
                                                          _as_list(parts, "part"))
        self.workloads = parse_many(startup_items) if startup_items else []
        for label, v, low in (("repeat", repeat, 1), ("warmup", warmup, 0), ("density_max", density_max, 1),
                              ("vm_density_max", vm_density_max, 1)):
            if not isinstance(v, int) or v < low:
                raise InvalidSpec(f"{label} {v!r} must be a whole number >= {low}")
        self.repeat, self.warmup = repeat, warmup
        self.vm_repeat = min(repeat, 5) if vm_repeat is None else int(vm_repeat)
        self.parts = tuple(parts)
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise InvalidSpec(f"unknown part(s) {', '.join(bad)}: choose from {', '.join(PARTS)}")
        if "load" in self.parts:
            loadpart.check(self.loads, seconds)
        self.seconds = float(seconds)
        if not timeout > 0:
            raise InvalidSpec(f"timeout {timeout!r} must be a positive number of seconds")
        self.timeout, self.seed = float(timeout), int(seed)
        self.memory = memory
        parse_memory(memory)
        self.idle_memory = idle_memory
        parse_memory(idle_memory)
        self.density_max, self.vm_density_max = density_max, vm_density_max
        self.density_memory_budget = parse_memory(density_memory_budget)
        self.density_time_budget = float(density_time_budget)
        self.name, self.progress = name, progress
        #: Rows completed since ``.df`` was last read: they join it when it is (see :meth:`_add`).
        self._pending: list[dict] = []
        self._df: pd.DataFrame | None = None
        self.meta: dict = {}
        #: Each load run's raw tool output (:meth:`raw`), saved beside the frame.
        self.outputs = loadpart.Outputs()
        #: Called with each batch of new rows (a normalised frame) as it joins ``.df``: how a
        #: fleet host streams its completed runs back (see :mod:`kit.bench.fleet`).
        self.on_rows = None

    @property
    def df(self) -> pd.DataFrame | None:
        """The tidy frame of every completed run (None before :meth:`run`)."""
        if self._pending:
            rows, self._pending = self._pending, []
            new = storage.normalise(pd.DataFrame(rows), self.meta.get("metrics"))
            self._df = new if self._df is None or self._df.empty else \
                storage.normalise(pd.concat([self._df, new], ignore_index=True), self.meta.get("metrics"))
        return self._df

    @df.setter
    def df(self, value: pd.DataFrame | None) -> None:
        self._pending, self._df = [], value

    # -- parameters ----------------------------------------------------------
    def params(self) -> dict:
        return {"images": self.images, "runtimes": self.runtimes,
                "workloads": [_workload_record(w) for w in self.workloads], "loads": list(self.loads),
                "seconds": self.seconds,
                "repeat": self.repeat, "warmup": self.warmup, "vm_repeat": self.vm_repeat,
                "parts": list(self.parts), "timeout": self.timeout, "seed": self.seed, "memory": self.memory,
                "idle_memory": self.idle_memory, "density_max": self.density_max,
                "vm_density_max": self.vm_density_max, "density_memory_budget": self.density_memory_budget,
                "density_time_budget": self.density_time_budget, "name": self.name, "starts": list(self.starts)}

    def resolve_runtimes(self) -> tuple[list[str], dict[str, str]]:
        """(runtimes to measure, {runtime left out: why}).

        Raises:
            RuntimeUnavailable: a runtime named explicitly cannot run here.
        """
        if self.runtimes == "all":
            table = _runtimes.available()
            chosen = [r for r, ok in zip(table["name"], table["available"]) if ok]
            skipped = {r: why for r, ok, why in zip(table["name"], table["available"], table["reason"]) if not ok}
        else:
            chosen = [_runtimes.require(r).name for r in self.runtimes]
            skipped = {}
        if not chosen:
            raise RuntimeUnavailable("no runtime is available here: see kit.runtimes.available() for why")
        order = {k: i for i, k in enumerate(metrics.KINDS)}
        chosen.sort(key=lambda r: (order.get(_runtimes.get(r).kind, 9), r))
        return chosen, skipped

    def plan(self, runtimes: list[str]) -> list[list[tuple[str, str, object]]]:
        """The startup rounds: each a seeded shuffle of (image, runtime, workload) cells."""
        rng = random.Random(self.seed)
        rounds = []
        for r in range(self.warmup + self.repeat):
            cells = [(img, rt, w) for img in self.images for rt in runtimes for w in self.workloads
                     if _runtimes.get(rt).kind != "vm" or r < self.warmup + self.vm_repeat]
            rng.shuffle(cells)
            rounds.append(cells)
        return rounds

    # -- running ---------------------------------------------------------------
    def run(self, resume: bool = False, client=None, **fleet_options) -> pd.DataFrame:
        """Measure every part; return (and keep in ``.df``) the tidy frame.

        With ``client`` (a ``dask.distributed.Client``) the whole study runs once on every worker
        host instead, and the frame gains a ``host`` column: see :func:`kit.bench.fleet.run`
        (``fleet_options``: ``per``, ``poll``) and :meth:`status`.

        Rows join ``.df`` as each run (or each runtime's steady-state measurement) completes.
        Interrupted (Ctrl-C: KeyboardInterrupt in a notebook) or stopped by an error, the study
        keeps every completed run in ``.df``, says why it stopped in ``.meta["partial"]``, and
        lets the exception through; ``.save()`` writes it as it is. A run that fails with an
        error is a ``failed`` row whose status is the error, and the other runtimes go on.

        Args:
            resume: continue the results this study holds (after an interruption, or from
                ``Study.load(directory)``) with the same plan: cells already measured are
                skipped, so only the rest run.
        """
        if client is not None:
            if resume:
                raise InvalidSpec("resume=True is for a study on this machine; a fleet run starts afresh")
            from . import fleet

            return fleet.run(self, client, **fleet_options)
        if fleet_options:
            raise InvalidSpec(f"{', '.join(fleet_options)}: only with client= (a fleet run)")
        from tqdm.auto import tqdm

        t_start = time.time()
        resume = resume and self.df is not None
        if resume:
            runtimes, skipped = list(self.meta["runtimes"]), dict(self.meta.get("skipped", {}))
            dropped = dict(self.meta.get("dropped", {}))
            done = _done_cells(self.df)
        else:
            runtimes, skipped = self.resolve_runtimes()
            dropped, done = {}, set()
            self.df = None
        kinds = {r: _runtimes.get(r).kind for r in runtimes}
        rounds = self.plan(runtimes) if "startup" in self.parts else []
        steady = [p for p in self.parts if p in ("memory", "disk", "density")]
        n_idle = {r: (self.vm_density_max if kinds[r] == "vm" else self.density_max) if "density" in steady
                  else (2 if "disk" in steady else 1) for r in runtimes}
        todo = [(r, pos, cell) for r, cells in enumerate(rounds) for pos, cell in enumerate(cells)
                if ("startup", r, cell[0], cell[1], cell[2].name) not in done]
        todo_steady = [(image, rt) for image in self.images for rt in runtimes
                       if ("steady", image, rt) not in done] if steady else []
        total = sum(_COST.get(kinds[rt], 1) for _, _, (_, rt, _) in todo)
        total += sum(_COST.get(kinds[rt], 1) * n_idle[rt] + 1 for _, rt in todo_steady)
        todo_load = {}
        if "load" in self.parts:
            todo_load = loadpart.unfinished(self.df if resume else None, self.loads, runtimes,
                                            self.warmup + self.repeat - 1)
            if resume:  # an unfinished load cell is measured again whole
                cells = {(n, rt) for n, rts in todo_load.items() for rt in rts}
                stale = pd.Series([(w, rt) in cells for w, rt in zip(self.df["workload"], self.df["runtime"])],
                                  index=self.df.index) & (self.df["part"] == "load")
                self.df = storage.normalise(self.df[~stale], self.meta.get("metrics"))
                self.outputs.drop(cells)
            total += sum(len(rts) for rts in todo_load.values()) * (self.warmup + self.repeat) * (self.seconds + 1)
        if resume:
            self.meta.setdefault("resumed", []).append(_iso(t_start))
        else:
            self.meta = {
                "params": self.params(), "environment": self._environment(), "metrics": metrics.definitions(),
                "runtimes": runtimes, "skipped": skipped,
                "order": [[f"{rt}/{img}/{w.name}" for img, rt, w in cells] for cells in rounds],
                "started": _iso(t_start), "elapsed_s": 0.0,
            }
        self.meta.update(dropped=dropped, partial="running")
        elapsed_before = self.meta.get("elapsed_s") or 0.0
        bar = tqdm(total=round(total, 2), disable=not self.progress, unit="s(est)", desc="bench",
                   bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        uid = secrets.token_hex(3)
        failures = {r: 0 for r in runtimes}
        try:
            for r, pos, (image, rt, w) in todo:
                if rt in dropped:
                    continue
                modes, refused = starts_.offered(rt, self.starts)
                self.meta.setdefault("skipped_starts", {}).update(refused)
                for mode in modes:
                    if rt in dropped:
                        break
                    bar.set_postfix_str(f"startup {rt} {w.name} {mode} round {r + 1}/{len(rounds)}")
                    s = self._startup_run(rt, image, w, f"b{uid}-{r}-{pos}-{mode[0]}", mode)
                    failures[rt] = 0 if s.status == "ok" else failures[rt] + 1
                    if failures[rt] >= MAX_CONSECUTIVE_FAILURES:
                        dropped[rt] = s.status
                    warm = r < self.warmup
                    ctx = {"part": "startup", "image": image, "runtime": rt, "kind": kinds[rt],
                           "workload": w.name, "round": r, "order": pos, "warmup": warm,
                           "repeat": r if warm else r - self.warmup, "accel": s.accel, "status": s.status,
                           **({"start": mode, "pool": s.pool} if self.starts != ("cold",) else {})}
                    self._add([{**ctx, **row} for row in s.rows])
                bar.update(_COST.get(kinds[rt], 1))
            if steady:
                self._steady(runtimes, kinds, n_idle, uid, bar, dropped, done)
            if todo_load:
                def progress(text, bar=bar):
                    bar.set_postfix_str(text)
                    bar.update(self.seconds + 1)

                loadpart.run(self.loads, [r for r in runtimes if r not in dropped], repeat=self.repeat,
                             warmup=self.warmup, seconds=self.seconds, seed=self.seed, timeout=self.timeout,
                             add=self._add, outputs=self.outputs, progress=progress, done=todo_load)
        except BaseException as e:
            n_done = len(_done_cells(self.df)) if self.df is not None else 0
            self.meta["partial"] = (f"stopped by {type(e).__name__}{': ' + str(e) if str(e) else ''} "
                                    f"with {n_done} cells measured; Study.run(resume=True) measures the rest")
            raise
        else:
            self.meta["partial"] = None
        finally:
            bar.close()
            self.meta["elapsed_s"] = round(elapsed_before + time.time() - t_start, 1)
            if self.df is None:
                self.df = storage.normalise(pd.DataFrame())
        return self.df

    def _environment(self) -> dict:
        env = envinfo.collect()
        if "load" in self.parts:
            from .loads import pinning

            env["load_pinning"] = pinning()
        return env

    def _startup_run(self, rt: str, image: str, w, name: str, mode: str = "cold") -> startup.Sample:
        """One startup sample; an unexpected error becomes a failed sample, not the end of the study."""
        try:
            return startup.measure(rt, image, w, name, self.timeout, self.memory,
                                   **({"start_mode": mode} if mode != "cold" else {}))
        except Exception as e:  # noqa: BLE001  (recorded in the frame; the other runtimes go on)
            s = startup.Sample(status=f"error: {type(e).__name__}: {e}")
            s.add("failed", 1)
            return s

    def _add(self, rows: list[dict]) -> None:
        """Completed rows join ``.df`` at once, so an interruption keeps them.

        They are kept as rows and made into the frame when ``.df`` is next read: rebuilding the
        whole frame after every sample cost ~25 ms of CPU per sample in a study of a few hundred
        rows (more as it grew), and on 2 busy cores that burst made the next sample measurably
        slower (LXC's launch_to_exit by ~6 ms; benchmarks/bench_study_clock.py).
        """
        if not rows:
            return
        now = time.time()
        vm_accel = self.meta.get("environment", {}).get("vm_accel", "")
        for row in rows:
            row.setdefault("study", self.name)
            row.setdefault("unit", metrics.unit(row["metric"]))
            row.setdefault("timestamp", now)
            if not row.get("accel") and row.get("kind") == "vm":
                row["accel"] = vm_accel
        self._pending.extend(rows)
        if self.on_rows is not None:  # a fleet host streams them back at once
            self.on_rows(storage.normalise(pd.DataFrame(rows), self.meta.get("metrics")))

    def _steady(self, runtimes, kinds, n_idle, uid, bar, dropped, done) -> None:
        rng = random.Random(self.seed + 1)
        first = next(p for p in self.parts if p in ("memory", "disk", "density"))
        for image in self.images:
            usages: dict = {}
            if "disk" in self.parts:
                from .. import images

                image_rows, usages = disk.image_rows(images.get(image))
                if ("disk-image", image) not in done:
                    self._add([{"part": "disk", "image": image, "runtime": "-", "kind": "-", "workload": "-",
                                "warmup": False, "status": "ok", **r} for r in image_rows])
            order = list(runtimes)
            rng.shuffle(order)  # so a slowly filling host does not always hit the same runtime
            for i, rt in enumerate(order):
                if rt in dropped or ("steady", image, rt) in done:
                    continue
                bar.set_postfix_str(f"steady state {rt} ({image})")
                ctx = {"image": image, "runtime": rt, "kind": kinds[rt], "workload": "idle", "warmup": False,
                       "order": i}
                rows = []
                try:
                    if "memory" in self.parts:
                        rows += [{**ctx, "part": "memory", "status": "ok", "n": 0, **r}
                                 for r in footprint.daemon_rows(rt)]
                    part_rows = density.steady_state(
                        rt, image, parts=self.parts, max_n=n_idle[rt], memory_budget=self.density_memory_budget,
                        time_budget=self.density_time_budget, timeout=self.timeout, prefix=f"b{uid}-s{i}",
                        image_usages=usages, memory_limit=self.idle_memory,
                        tick=lambda rt=rt: bar.update(_COST.get(kinds[rt], 1)))
                    rows += [{**ctx, **r} for r in part_rows]
                except Exception as e:  # noqa: BLE001  (recorded in the frame; the other runtimes go on)
                    rows = [{**ctx, "part": first, "metric": "failed", "value": 1,
                             "status": f"error: {type(e).__name__}: {e}"}]
                self._add(rows)
                bar.update(1)

    # -- results ---------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        """The results frame (:attr:`df`).

        Raises:
            InvalidSpec: the study has none yet (saying how to get one).
        """
        if self.df is None:
            raise InvalidSpec("this study has no results yet: call .run() first, or Study.load(directory)")
        return self.df

    def summary(self, part: str | None = None, misses: bool = False) -> pd.DataFrame:
        """Statistics per runtime, image, workload and metric (warmups and failed runs left out, and
        warm starts that missed their pool unless ``misses``: then apart, by their ``pool``); per host
        too when the frame has a ``host`` column (a fleet run)."""
        df = self.results()
        if part:
            df = df[df["part"] == part]
        res = stats.summarize(df, seed=self.seed, misses=misses)
        if res.empty:  # the same columns, so that callers can select from a part that was not measured
            cols = [k for k in stats.GROUP if k in df.columns] + ["runs" if k == "n" else k for k in stats.describe([])]
            res = pd.DataFrame(columns=cols)
        return res

    def relative(self, metric: str | None = None, baseline: str = "process", misses: bool = False) -> pd.DataFrame:
        """Each runtime against the bare-process baseline (ratio of medians with its 95 % CI), on
        each host apart when the frame has a ``host`` column. ``baseline="cold"``: each runtime's
        warm start modes against its own cold start (:func:`kit.bench.starts.relative`). Warm starts
        that missed their pool are left out unless ``misses``.

        ``metric`` defaults to ``launch_to_exit``, or ``throughput`` in a study of loads only. Load
        metrics (throughput, p99, cpu_per_op, ...) compare per operation: see
        :func:`kit.bench.loadpart.relative`."""
        df = self.results()
        if metric is None:
            metric = "throughput" if set(df["part"]) == {"load"} else "launch_to_exit"
        if baseline == "cold":  # warm start modes against each runtime's own cold start
            return starts_.relative(df, metric=metric, seed=self.seed, misses=misses)
        df = starts_.labelled(df)  # RUNTIME/MODE for warm rows: modes stay apart
        if metric in loadpart.METRICS:
            return loadpart.relative(df, metric=metric, baseline=baseline, seed=self.seed)
        return stats.relative(df, metric=metric, baseline=baseline, seed=self.seed, misses=misses)

    def raw(self, workload: str, runtime: str, round: int | None = None) -> str:
        """What the load tool printed in one run (the last one when ``round`` is None): where a number
        of the frame came from."""
        return self.outputs.get(workload, runtime, round)

    def findings(self) -> pd.DataFrame:
        """The reference study's findings (Felter et al. 2015; gVisor's syscall cost), each reproduced,
        not reproduced or not measured here, and why: see :func:`kit.bench.findings.compute`."""
        from .findings import compute

        return compute(self.results(), self.meta.get("environment") or {}, self.meta.get("skipped") or {})

    def plot(self, which=None):
        """Figures for every part with data: a dict name -> matplotlib Figure.

        A fleet study (several hosts) gives ``hosts`` (every host overlaid, startup) and each
        figure once per host, named ``NAME@HOST``."""
        from . import plots

        df = self.results()
        figs = plots.all_figures(df, self.meta, which=which)
        if "host" not in df.columns:
            figs.update(loadpart.figures(df, self.meta, which=which))
        return figs

    # -- fleet (several hosts) -------------------------------------------------
    def status(self) -> pd.DataFrame:
        """Per host of a fleet run: state (ok, failures, failed, lost, ...), why, cells measured
        of those planned, rows, failed rows, start and end. Empty for a study on this machine."""
        from .fleet import status

        return status(self.meta)

    def hosts(self) -> list[str]:
        """The host labels of a fleet run (none for a study on this machine)."""
        df = self.results()
        return list(dict.fromkeys(df["host"])) if "host" in df.columns else []

    def host(self, label: str) -> "Study":
        """One host of a fleet run as a study of its own (its rows and its environment)."""
        df = self.results()
        if label not in self.hosts():
            raise InvalidSpec(f"no host {label!r} in this study: choose from {', '.join(self.hosts()) or 'none'}")
        sub = Study.from_params(self.meta.get("params", {}))
        sub.progress = False
        h = (self.meta.get("hosts") or {}).get(label, {})
        sub.df = storage.normalise(df[df["host"] == label].drop(columns="host"), self.meta.get("metrics"))
        sub.meta = {**self.meta, "environment": h.get("environment") or {}, "skipped": h.get("skipped") or {},
                    "dropped": h.get("dropped") or {}, "partial": h.get("partial"), "elapsed_s": h.get("elapsed_s"),
                    "runtimes": sorted(set(sub.df["runtime"]) - {"-"})}
        for k in ("hosts", "fleet"):
            sub.meta.pop(k, None)
        return sub

    def explore(self):
        """Controls (part, metric, runtimes, log scale, runs or summary) that redraw the figure and the
        matching :meth:`summary` rows: see :func:`kit.widgets.explore`."""
        from .. import widgets

        return widgets.explore(self)

    def save(self, directory, figures: bool = True):
        """Write results.csv (+ parquet), study.json, summary.csv, README.md (tables) and, with ``figures``, the PNGs."""
        from .tables import markdown

        df = self.results()
        d = storage.save(directory, df, self.meta)
        self.outputs.save(d)
        self.summary().to_csv(d / "summary.csv", index=False)
        figs = self.plot() if figures else {}
        if self.hosts():
            (d / "README.md").write_text(self._fleet_markdown(list(figs)))
        else:
            (d / "README.md").write_text(markdown(self, figures=list(figs) if figures else False))
        if figures:
            import matplotlib.pyplot as plt

            for name, fig in figs.items():
                fig.savefig(d / f"{name}.png", dpi=120, bbox_inches="tight")
                plt.close(fig)
        return d

    def _fleet_markdown(self, figures: list[str]) -> str:
        """A fleet study's README: the status table, then each host's tables as a study of its own."""
        from .tables import markdown, table

        out = [f"# {self.name} on {len(self.hosts())} hosts", "## Hosts\n\n" + table(self.status())]
        for label in self.hosts():
            body = markdown(self.host(label), figures=False).replace("\n## ", "\n### ").replace("# ", "## ", 1)
            out.append(body.replace("## Definitions", "### Definitions"))
        if figures:
            out.append(" ".join(f"![{n}]({n}.png)" for n in figures))
        return "\n\n".join(out) + "\n"

    @classmethod
    def from_params(cls, p: dict, **overrides) -> "Study":
        """A study from :meth:`params` (as study.json keeps them); ``overrides`` replace any."""
        p = {**p, **overrides}
        known = ("warmup", "vm_repeat", "parts", "timeout", "seconds", "memory", "idle_memory", "density_max",
                 "vm_density_max", "density_memory_budget", "density_time_budget", "starts")
        startup_workloads = [parse(_saved_workload(w)) for w in p.get("workloads", [])]
        return cls(image=p.get("images") or "busybox", runtimes=p.get("runtimes", "all"),
                   workload=startup_workloads + list(p.get("loads") or []) or "true",
                   repeat=p.get("repeat", 10), seed=p.get("seed", 0), name=p.get("name", "study"),
                   progress=False, **{k: p[k] for k in known if k in p})

    @classmethod
    def load(cls, directory) -> "Study":
        """A study with the saved results and metadata, ready to summarise and plot, or (when it is
        partial) to finish with ``.run(resume=True)``."""
        df, meta = storage.load(directory)
        study = cls.from_params(dict(meta.get("params", {})))
        study.df, study.meta = df, meta
        study.outputs = loadpart.Outputs.load(directory)
        return study

    def _repr_html_(self) -> str:
        if self.df is None:
            return f"<pre>{html.escape(repr(self))}</pre>"
        from .tables import memory_table, startup_table

        parts = [f"<b>{html.escape(repr(self))}</b>"]
        for label, t in (("startup", startup_table(self)), ("memory", memory_table(self)),
                         ("under load", loadpart.table(self.df, self.seed))):
            if len(t):
                parts.append(f"<p>{label}</p>" + t.to_html(float_format=lambda v: f"{v:.3g}", na_rep=""))
        return "".join(parts)

    def __repr__(self) -> str:
        state = "not run" if self.df is None else f"{len(self.df)} rows"
        if self.meta.get("partial"):
            state += ", partial"
        rts = self.runtimes if self.runtimes == "all" else ",".join(self.runtimes)
        return (f"<Study {self.name}: {','.join(self.images)} x {rts} x "
                f"{','.join([w.name for w in self.workloads] + self.loads)}, repeat={self.repeat}, {state}>")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _done_cells(df: pd.DataFrame) -> set[tuple]:
    """The cells a frame already holds: ("startup", round, image, runtime, workload) per startup run,
    ("disk-image", image) for the image's bytes, ("steady", image, runtime) per steady-state measurement."""
    st = df[df["part"] == "startup"]
    cells = {("startup", int(r), i, rt, w) for r, i, rt, w in
             st[["round", "image", "runtime", "workload"]].drop_duplicates().itertuples(index=False)}
    other = df[~df["part"].isin(["startup", "load"])]  # load cells: loadpart.unfinished
    cells |= {("disk-image", i) for i in other[other["runtime"] == "-"]["image"].unique()}
    cells |= {("steady", i, rt) for i, rt in
              other[other["runtime"] != "-"][["image", "runtime"]].drop_duplicates().itertuples(index=False)}
    return cells


def _workload_record(w: Workload) -> dict:
    """A workload as study.json keeps it: enough to rebuild it (see :func:`_saved_workload`)."""
    tcp = {"send": w.tcp.decode("latin-1")} if isinstance(w.tcp, bytes) else w.tcp
    return {"name": w.name, "argv": list(w.argv), "kind": w.kind, "tcp": tcp, "log": w.log,
            "probe": list(w.probe) if w.probe else None}


def _saved_workload(w: dict):
    """A workload back from study.json (presets by name; anything else as saved)."""
    if w.get("name") in PRESETS:
        return w["name"]
    tcp = w.get("tcp") or False
    if isinstance(tcp, dict):
        tcp = tcp["send"].encode("latin-1")
    return Workload(w["name"], tuple(w["argv"]), w.get("kind", "exit"), tcp=tcp, log=w.get("log"),
                    probe=tuple(w["probe"]) if w.get("probe") else None)
