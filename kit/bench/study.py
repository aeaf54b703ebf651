"""A study: images x runtimes x workloads, measured for startup, memory, disk, density and under load.

>>> from kit.bench import Study
>>> study = Study(image="busybox", runtimes="all", workload="true", repeat=10)
>>> df = study.run()           # tidy: one row per (run, metric)
>>> study.summary()            # median, IQR, CI, mean ± sd, outliers per runtime and metric
>>> study.plot()               # startup, memory, disk, density figures
>>> study.save("results/"); Study.read("results/").plot()
>>> study.run(client=dask_client)  # the same study on every host of a Dask cluster (kit.bench.fleet)
>>> Study(runtimes="process,runc", workload=["cpu", "redis"], repeat=3, seconds=5).run()  # load part

:class:`Study` is a facade over the pieces that do the work: its parameters are a
:class:`~kit.bench.params.StudyParams`; :mod:`kit.bench.plan` plans, :mod:`kit.bench.running`
measures (or :mod:`kit.bench.fleet` on many hosts), :class:`kit.bench.storage.Results` holds and
saves what it measured, and :class:`kit.bench.view.View` shows it. The explorer widget is
``kit.widgets.explore(study)``.
"""

from __future__ import annotations

import dataclasses
import inspect

import pandas as pd

from ..errors import InvalidSpec
from . import fleet, plan, running
from .params import StudyParams, args_doc
from .storage import Outputs, Results
from .view import View

#: What reads as an attribute of a study: every parameter, and the workloads split into startup and load.
_PARAMETERS = frozenset(f.name for f in dataclasses.fields(StudyParams)) | {"workloads", "loads"}


class Study:
    """Startup time, memory, disk and density of workloads across runtimes, with every run kept.

    ``Study(...)`` takes the parameters of :class:`~kit.bench.params.StudyParams` (kept in
    :attr:`params`; each also reads as an attribute: ``study.repeat``, ``study.loads``).
    """

    def __init__(self, *args, **kwargs):
        #: What the study measures and how (fixed: a study with other parameters is another study).
        self.params = StudyParams(*args, **kwargs)
        self._results = Results(name=self.params.name)

    @classmethod
    def from_params(cls, params: StudyParams | dict, **overrides) -> "Study":
        """A study of ``params``: a :class:`StudyParams`, or its :meth:`~StudyParams.to_dict` (as
        ``study.json`` keeps it; a study read from there shows no progress bar); ``overrides`` replace any."""
        if isinstance(params, dict):
            return cls._of(StudyParams.from_dict(params, **{"progress": False, **overrides}))
        return cls._of(dataclasses.replace(params, **overrides) if overrides else params)

    @classmethod
    def read(cls, directory) -> "Study":
        """A study with the results saved in ``directory`` (:meth:`save`), ready to summarise and plot, or
        (when it is partial) to finish with ``.run(resume=True)``."""
        results = Results.read(directory)
        return cls._of(StudyParams.from_dict(results.meta.get("params", {}), progress=False), results)

    @classmethod
    def _of(cls, params: StudyParams, results: Results | None = None) -> "Study":
        study = cls.__new__(cls)
        object.__setattr__(study, "params", params)  # once set, __setattr__ keeps it
        study._results = results if results is not None else Results(name=params.name)
        return study

    def __getattr__(self, name: str):
        # study.repeat, study.loads, ...: the parameters read as attributes (only those)
        params = self.__dict__.get("params")
        if params is not None and name in _PARAMETERS:
            return getattr(params, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name == "params" and "params" in self.__dict__ or name in _PARAMETERS:
            raise AttributeError(f"a study's parameters are fixed: Study.from_params(study.params, {name}=...) "
                                 f"is a study with another {name}")
        object.__setattr__(self, name, value)

    # -- results -----------------------------------------------------------------
    @property
    def df(self) -> pd.DataFrame | None:
        """The tidy frame of every completed run (None before :meth:`run`)."""
        return self._results.df

    @df.setter
    def df(self, value: pd.DataFrame | None) -> None:
        self._results.df = value

    @property
    def meta(self) -> dict:
        """Parameters, environment, definitions, plan, what was skipped or dropped, and ``partial``."""
        return self._results.meta

    @meta.setter
    def meta(self, value: dict) -> None:
        self._results.meta = value

    @property
    def outputs(self) -> Outputs:
        """Each load run's raw tool output (:meth:`raw`), saved beside the frame."""
        return self._results.outputs

    def results(self) -> pd.DataFrame:
        """The results frame (:attr:`df`).

        Raises:
            InvalidSpec: the study has none yet (saying how to get one).
        """
        return self._results.frame()

    # -- planning and running ------------------------------------------------------
    def resolve_runtimes(self) -> tuple[list[str], dict[str, str]]:
        """(runtimes to measure, {runtime left out: why}): :func:`kit.bench.plan.resolve_runtimes`."""
        return plan.resolve_runtimes(self.params)

    def plan(self, runtimes: list[str]) -> list[list[tuple[str, str, object]]]:
        """The startup rounds: each a seeded shuffle of (image, runtime, workload) cells."""
        return plan.rounds(self.params, runtimes)

    def run(self, resume: bool = False, client=None, **fleet_options) -> pd.DataFrame:
        """Measure every part; return (and keep in ``.df``) the tidy frame.

        With ``client`` (a ``dask.distributed.Client``) the whole study runs once on every worker
        host instead, and the frame gains a ``host`` column: see :func:`kit.bench.fleet.run`
        (``fleet_options``: ``per``, ``poll``, ``insecure``) and :meth:`status`.

        Rows join ``.df`` as each run (or each runtime's steady-state measurement) completes.
        Interrupted (Ctrl-C: KeyboardInterrupt in a notebook) or stopped by an error, the study
        keeps every completed run in ``.df``, says why it stopped in ``.meta["partial"]``, and
        lets the exception through; ``.save()`` writes it as it is. A run that fails with an
        error is a ``failed`` row whose status is the error, and the other runtimes go on.

        Args:
            resume: continue the results this study holds (after an interruption, or from
                ``Study.read(directory)``) with the same plan: cells already measured are
                skipped, so only the rest run.
        """
        if client is not None:
            if resume:
                raise InvalidSpec("resume=True is for a study on this machine; a fleet run starts afresh")
            return fleet.run(self.params, client, running.measure, self._results, **fleet_options)
        if fleet_options:
            raise InvalidSpec(f"{', '.join(fleet_options)}: only with client= (a fleet run)")
        return running.run(self.params, self._results, resume=resume)

    # -- viewing --------------------------------------------------------------------
    @property
    def view(self) -> View:
        """The results as tables, figures and findings (:class:`kit.bench.view.View`)."""
        return View(self._results, self.params.seed)

    def summary(self, part: str | None = None, misses: bool = False) -> pd.DataFrame:
        """Statistics per runtime, image, workload and metric (warmups and failed runs left out, and
        warm starts that missed their pool unless ``misses``: then apart, by their ``pool``); per host
        too when the frame has a ``host`` column (a fleet run)."""
        return self.view.summary(part, misses)

    def relative(self, metric: str | None = None, baseline: str = "process", misses: bool = False) -> pd.DataFrame:
        """Each runtime against the bare-process baseline (ratio of medians with its 95 % CI), on
        each host apart when the frame has a ``host`` column. ``baseline="cold"``: each runtime's
        warm start modes against its own cold start (:func:`kit.bench.starts.relative`). Warm starts
        that missed their pool are left out unless ``misses``.

        ``metric`` defaults to ``launch_to_exit``, or ``throughput`` in a study of loads only. Load
        metrics (throughput, p99, cpu_per_op, ...) compare per operation: see
        :func:`kit.bench.loadpart.relative`."""
        return self.view.relative(metric, baseline, misses)

    def raw(self, workload: str, runtime: str, round: int | None = None) -> str:
        """What the load tool printed in one run (the last one when ``round`` is None): where a number
        of the frame came from."""
        return self.view.raw(workload, runtime, round)

    def findings(self) -> pd.DataFrame:
        """The reference study's findings (Felter et al. 2015; gVisor's syscall cost), each reproduced,
        not reproduced or not measured here, and why: see :func:`kit.bench.findings.compute`."""
        return self.view.findings()

    def plot(self, which=None, references: bool = True) -> dict:
        """Figures for every part with data: a dict name -> matplotlib Figure.

        A fleet study (several hosts) gives ``hosts`` (every host overlaid, startup) and each
        figure once per host, named ``NAME@HOST``. A storm study gives ``storm``, a density sweep
        (KSM settings, guest sizes, the host's method) ``density-sweep``. With ``references``, the
        field's published figures (:mod:`kit.bench.references`) whose boundary is a metric drawn are
        drawn grey and labelled as references, and every figure lists those of its metrics with their
        source."""
        return self.view.plot(which, references)

    def status(self) -> pd.DataFrame:
        """Per host of a fleet run: state (ok, failures, failed, lost, ...), why, cells measured
        of those planned, rows, failed rows, start and end. Empty for a study on this machine."""
        return self.view.status()

    def hosts(self) -> list[str]:
        """The host labels of a fleet run (none for a study on this machine)."""
        return self.view.hosts()

    def host(self, label: str) -> "Study":
        """One host of a fleet run as a study of its own (its rows and its environment)."""
        params = StudyParams.from_dict(self.meta.get("params", {}), progress=False)
        return Study._of(params, self.view.host_results(label))

    def save(self, directory, figures: bool = True):
        """Write results.csv (+ parquet), study.json, outputs.jsonl, summary.csv, README.md (tables) and,
        with ``figures``, the PNGs; return the directory."""
        return self.view.save(directory, figures)

    def _repr_html_(self) -> str:
        return self.view.html(repr(self))

    def __repr__(self) -> str:
        p = self.params
        state = "not run" if self.df is None else f"{len(self.df)} rows"
        if self.meta.get("partial"):
            state += ", partial"
        rts = p.runtimes if p.runtimes == "all" else ",".join(p.runtimes)
        return (f"<Study {p.name}: {','.join(p.image)} x {rts} x "
                f"{','.join([w.name for w in p.workloads] + list(p.loads))}, repeat={p.repeat}, {state}>")


Study.__doc__ += "\n" + args_doc()
# help(Study) and IPython's Study? show StudyParams' parameters, not (*args, **kwargs)
Study.__init__.__signature__ = inspect.signature(StudyParams).replace(
    parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                *inspect.signature(StudyParams).parameters.values()], return_annotation=inspect.Signature.empty)
