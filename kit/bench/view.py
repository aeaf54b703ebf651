"""Viewing a study's results: statistics, comparisons with a baseline, figures, the reference
findings, tables, and the files a saved study has beside its data (summary, README, figures).

A :class:`View` reads a :class:`~kit.bench.storage.Results` and measures nothing: a study just
run, one read from a directory and one host of a fleet run are viewed alike.
:class:`~kit.bench.Study`'s ``summary``, ``relative``, ``plot``, ``findings``, ``save``... are its
methods; the tables of :mod:`kit.bench.tables` take a view too.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..errors import InvalidSpec
from . import findings, kernels, loadpart, plots, starts, stats, stormplots, tables
from .storage import Results, normalise

#: Columns of a fleet run's status table (:meth:`View.status`), one row per host.
STATUS_COLUMNS = ["host", "state", "reason", "cells", "planned", "rows", "failed_rows", "hostname", "worker",
                  "machine", "kit_version", "started", "finished", "elapsed_s"]


class View:
    """What ``results`` show.

    Args:
        results: the frame, metadata and raw outputs.
        seed: seeds the bootstrap of every interval (the study's seed).
    """

    def __init__(self, results: Results, seed: int = 0):
        self._results, self.seed = results, seed
        #: The frame (None before any run), metadata and label as they are when the view is made: a
        #: :class:`~kit.bench.Study` makes a view for each call. A VM's rows with a guest kernel are
        #: named RUNTIME/KERNEL here (kit.bench.kernels), so that every view keeps kernels apart.
        self.df, self.meta, self.name = kernels.labelled(results.df), results.meta, results.name

    def results(self) -> pd.DataFrame:
        """The frame.

        Raises:
            InvalidSpec: there is none yet (saying how to get one).
        """
        return self._results.frame()

    def _labelled(self) -> pd.DataFrame:
        """The frame with each VM kernel's rows under a runtime of their own (:func:`kit.bench.kernels.labelled`)."""
        return kernels.labelled(self.results())

    def summary(self, part: str | None = None, misses: bool = False) -> pd.DataFrame:
        """Statistics per runtime, image, workload and metric (see :meth:`kit.bench.Study.summary`)."""
        df = self._labelled()
        if part:
            df = df[df["part"] == part]
        res = stats.summarize(df, seed=self.seed, misses=misses)
        if res.empty:  # the same columns, so that callers can select from a part that was not measured
            cols = [k for k in stats.GROUP if k in df.columns] + ["runs" if k == "n" else k for k in stats.describe([])]
            res = pd.DataFrame(columns=cols)
        return res

    def relative(self, metric: str | None = None, baseline: str = "process", misses: bool = False) -> pd.DataFrame:
        """Each runtime against a baseline (see :meth:`kit.bench.Study.relative`)."""
        df = self._labelled()
        if metric is None:
            metric = "throughput" if set(df["part"]) == {"load"} else "launch_to_exit"
        if baseline == "cold":  # warm start modes against each runtime's own cold start
            return starts.relative(df, metric=metric, seed=self.seed, misses=misses)
        df = starts.labelled(df)  # RUNTIME/MODE for warm rows: modes stay apart
        if metric in loadpart.METRICS:
            return loadpart.relative(df, metric=metric, baseline=baseline, seed=self.seed)
        return stats.relative(df, metric=metric, baseline=baseline, seed=self.seed, misses=misses)

    def raw(self, workload: str, runtime: str, round: int | None = None) -> str:
        """What the load tool printed in one run (the last one when ``round`` is None)."""
        return self._results.outputs.get(workload, runtime, round)

    def findings(self) -> pd.DataFrame:
        """The reference findings, each decided from these results: :func:`kit.bench.findings.compute`."""
        return findings.compute(self._labelled(), self.meta.get("environment") or {}, self.meta.get("skipped") or {})

    def plot(self, which=None, references: bool = True) -> dict:
        """Figures for every part with data (see :meth:`kit.bench.Study.plot`)."""
        df = self._labelled()
        figs = plots.all_figures(df, self.meta, which=which)
        if "host" not in df.columns:
            figs.update(loadpart.figures(df, self.meta, which=which))
            figs.update(stormplots.figures(df, self.meta, which=which, with_references=references))
        return stormplots.annotate(figs, df, self.meta) if references else figs

    # -- a fleet run (several hosts) --------------------------------------------
    def status(self) -> pd.DataFrame:
        """Per host of a fleet run: its line of :data:`STATUS_COLUMNS`; empty for a study on one machine."""
        return pd.DataFrame(self.meta.get("fleet") or [], columns=STATUS_COLUMNS)

    def hosts(self) -> list[str]:
        """The host labels of a fleet run (none for a study on one machine)."""
        df = self.results()
        return list(dict.fromkeys(df["host"])) if "host" in df.columns else []

    def host_results(self, label: str) -> Results:
        """One host's rows and metadata (its environment, what it skipped or dropped) as results of their own."""
        df = self.results()
        if label not in self.hosts():
            raise InvalidSpec(f"no host {label!r} in this study: choose from {', '.join(self.hosts()) or 'none'}")
        h = (self.meta.get("hosts") or {}).get(label, {})
        mine = normalise(df[df["host"] == label].drop(columns="host"), self.meta.get("metrics"))
        meta = {**self.meta, "environment": h.get("environment") or {}, "skipped": h.get("skipped") or {},
                "dropped": h.get("dropped") or {}, "partial": h.get("partial"), "elapsed_s": h.get("elapsed_s"),
                "runtimes": sorted(set(mine["runtime"]) - {"-"})}
        for k in ("hosts", "fleet"):
            meta.pop(k, None)
        return Results(mine, meta, self._results.outputs, name=self.name)

    # -- documents ---------------------------------------------------------------
    def markdown(self, figures=True) -> str:
        """The README of a saved study: :func:`kit.bench.tables.markdown`, or for a fleet run the status
        table, then each host's tables as a study of its own. ``figures``: True, or the names to link."""
        if not self.hosts():
            return tables.markdown(self, figures=figures)
        out = [f"# {self.name} on {len(self.hosts())} hosts", "## Hosts\n\n" + tables.table(self.status())]
        for label in self.hosts():
            one = View(self.host_results(label), self.seed)
            body = tables.markdown(one, figures=False).replace("\n## ", "\n### ").replace("# ", "## ", 1)
            out.append(body.replace("## Definitions", "### Definitions"))
        if figures:
            out.append(" ".join(f"![{n}]({n}.png)" for n in figures))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        """``title`` over the startup, memory and load tables (a notebook's rich display)."""
        if self.df is None:
            return f"<pre>{html.escape(title)}</pre>"
        parts = [f"<b>{html.escape(title)}</b>"]
        for label, t in (("startup", tables.startup_table(self)), ("memory", tables.memory_table(self)),
                         ("under load", loadpart.table(self.df, self.seed))):
            if len(t):
                parts.append(f"<p>{label}</p>" + t.to_html(float_format=lambda v: f"{v:.3g}", na_rep=""))
        return "".join(parts)

    def save(self, directory, figures: bool = True) -> Path:
        """Write the results (:meth:`kit.bench.storage.Results.save`), summary.csv, README.md (tables)
        and, with ``figures``, the PNGs; return the directory."""
        self.results()
        d = self._results.save(directory)
        self.summary().to_csv(d / "summary.csv", index=False)
        figs = self.plot() if figures else {}
        (d / "README.md").write_text(self.markdown(list(figs) if figures else False))
        if figures:
            import matplotlib.pyplot as plt

            for name, fig in figs.items():
                fig.savefig(d / f"{name}.png", dpi=120, bbox_inches="tight")
                plt.close(fig)
        return d
