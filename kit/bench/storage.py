"""A study's results, in memory and on disk: :class:`Results` (the rows as they come, the metadata, each
load run's raw output) and its files, ``results.csv`` (+ ``results.parquet`` with pyarrow),
``study.json`` and ``outputs.jsonl``.

``study.json`` holds everything that is not a measurement: the study's
parameters, the seed and the run order it produced, the environment record,
the definition of every metric (also in the frame read back's
``attrs["metrics"]``) and, for a study that did not finish, why (``partial``). A result set read back re-plots
and re-summarises without re-running anything.

Every saved study carries ``meta["metrics_fingerprint"]``, the fingerprint of the definitions it was
measured under (:func:`kit.bench.metrics.fingerprint`). A benchmark script's results folder carries
``record.json`` (:func:`record`): per script, the kit commit it ran at, that fingerprint and the files
it wrote, so a committed result measured under other definitions than today's can be told (and a test
tells it: tests/test_results_record.py).
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..errors import InvalidSpec
from .envinfo import git_commit
from .metrics import COLUMNS, definitions, fingerprint, unit

CSV, PARQUET, META = "results.csv", "results.parquet", "study.json"
#: Each load run's raw tool output, one JSON record a line (:class:`Outputs`).
OUTPUTS = "outputs.jsonl"
#: The record of a results folder: per script, the commit and definitions its files were measured under.
RECORD = "record.json"

_DTYPES = {"study": str, "part": str, "image": str, "runtime": str, "kind": str, "workload": str,
           "component": str, "metric": str, "unit": str, "accel": str, "status": str}


#: Columns kept when a frame has them: ``host`` (a fleet run, see kit.bench.fleet); ``start`` and
#: ``pool`` (a study of start modes, see kit.bench.starts); ``kernel`` (a study of VM guest kernels,
#: see kit.bench.kernels); ``ksm`` and ``vm_memory`` (a density sweep, see kit.bench.ksm).
OPTIONAL = ("host", "start", "pool", "kernel", "ksm", "vm_memory")


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401

        return True
    except ImportError:
        return False


def normalise(df: pd.DataFrame, metrics: dict | None = None) -> pd.DataFrame:
    """The frame with exactly :data:`COLUMNS`, in order, with stable dtypes, and the definition of every
    metric in ``df.attrs["metrics"]`` (``metrics``, else those it carries, else the current ones)."""
    metrics = metrics or df.attrs.get("metrics") or definitions()
    df = df.reindex(columns=COLUMNS + [c for c in OPTIONAL if c in df.columns]).copy()
    for col in [*_DTYPES, *(c for c in OPTIONAL if c in df.columns)]:
        df[col] = df[col].fillna("").astype(str)
    for col in ("round", "order", "repeat", "n"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["warmup"] = df["warmup"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).astype(bool)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["timestamp"] = pd.to_numeric(df["timestamp"], errors="coerce").astype(float)
    df = df.reset_index(drop=True)
    df.attrs["metrics"] = metrics
    return df


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def save(directory, df: pd.DataFrame, meta: dict) -> Path:
    """Write the result set to ``directory`` (created); return it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    df = normalise(df)
    df.to_csv(d / CSV, index=False)
    if _has_pyarrow():
        df.to_parquet(d / PARQUET, index=False)
    # The definitions the rows were measured under (those saved with them, else today's), kept with
    # the rows so that the file says what its figures mean, and their fingerprint.
    defs = meta.get("metrics") or df.attrs.get("metrics") or definitions()
    meta = {**meta, "metrics": defs, "metrics_fingerprint": fingerprint(defs)}
    (d / META).write_text(json.dumps(_jsonable(meta), indent=1, sort_keys=True) + "\n")
    return d


def record(directory, script, outputs=None, since: float | None = None) -> Path:
    """Write (or update) ``directory/record.json``: what ``script`` measured, under which kit commit and
    metric definitions. Every benchmark script calls this after writing its results.

    Several scripts may share a folder: each has its own entry, keyed by the script's file name.

    Args:
        directory: the results folder.
        script: the script's path (``__file__``) or name.
        outputs: the files (or directories, with a trailing ``/``) it wrote there, relative to
            ``directory``; default: every entry of ``directory`` modified at or after ``since``
            (a ``time.time()`` taken before the script wrote anything).

    Returns:
        The record's path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RECORD
    if outputs is None:
        if since is None:
            raise ValueError("record() needs the outputs, or since= to find them")
        outputs = [p.name + ("/" if p.is_dir() else "") for p in d.iterdir()
                   if p.name != RECORD and p.stat().st_mtime >= since - 1]  # 1 s: coarse file system clocks
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[Path(script).name] = {
        "kit_commit": git_commit(), "metrics_fingerprint": fingerprint(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "outputs": sorted(str(o) for o in outputs)}
    path.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return path


def read(directory) -> tuple[pd.DataFrame, dict]:
    """Read a result set written by :func:`save` (Parquet when present and readable, else CSV).

    The frame's ``attrs["metrics"]`` are the definitions saved with it (``meta["metrics"]``).
    """
    d = Path(directory)
    meta = json.loads((d / META).read_text())
    if (d / PARQUET).exists() and _has_pyarrow():
        df = pd.read_parquet(d / PARQUET)
    else:
        # Only numeric columns may be empty-as-missing: a component named "NA" stays a string.
        numeric = ("round", "order", "repeat", "n", "value", "timestamp")
        df = pd.read_csv(d / CSV, dtype={**_DTYPES, **dict.fromkeys(OPTIONAL, str)}, keep_default_na=False,
                         na_values={c: [""] for c in numeric})
    return normalise(df, meta.get("metrics")), meta


class Outputs:
    """Each load run's raw tool output, once per run: (workload, runtime, round) -> text."""

    def __init__(self, records: list[dict] | None = None):
        self.records = list(records or [])

    def keep(self, rows: list[dict]) -> list[dict]:
        """``rows`` of one run without their ``raw`` text, which is kept here."""
        raw = next((r.get("raw") for r in rows if r.get("raw")), None)
        if raw is not None:
            r0 = rows[0]
            self.records.append({"workload": r0["workload"], "runtime": r0["runtime"], "round": r0.get("round"),
                                 "raw": raw})
        return [{k: v for k, v in r.items() if k != "raw"} for r in rows]

    def get(self, workload: str, runtime: str, round: int | None = None) -> str:
        """The raw output of one run (the last measured one when ``round`` is None)."""
        hits = [r for r in self.records if r["workload"] == workload and r["runtime"] == runtime
                and (round is None or r["round"] == round)]
        if not hits:
            have = sorted({f"{r['workload']}/{r['runtime']}" for r in self.records}) or ["none"]
            raise InvalidSpec(f"no raw output of load {workload!r} in {runtime}"
                              f"{'' if round is None else f' round {round}'}: have {', '.join(have)}")
        return hits[-1]["raw"]

    def drop(self, cells: set[tuple[str, str]]) -> None:
        self.records = [r for r in self.records if (r["workload"], r["runtime"]) not in cells]

    def save(self, directory) -> None:
        if self.records:
            with open(Path(directory) / OUTPUTS, "w") as f:
                for r in self.records:
                    f.write(json.dumps(r) + "\n")

    @classmethod
    def read(cls, directory) -> "Outputs":
        p = Path(directory) / OUTPUTS
        return cls([json.loads(line) for line in p.read_text().splitlines() if line]) if p.exists() else cls()


class Results:
    """A study's results as they grow: its rows, its metadata (``meta``: parameters, environment,
    definitions, plan, what was skipped or dropped, ``partial``) and each load run's raw output.

    Args:
        name: the study's label, each row's ``study`` unless the row has one.
    """

    def __init__(self, df: pd.DataFrame | None = None, meta: dict | None = None, outputs: Outputs | None = None,
                 name: str = "study"):
        self.name = name
        self.meta: dict = meta if meta is not None else {}
        self.outputs = outputs if outputs is not None else Outputs()
        #: Called with each batch of new rows (a normalised frame) and the metadata as it stands, as the
        #: batch joins: how a fleet host streams its completed runs back (see :mod:`kit.bench.fleet`).
        self.on_rows = None
        #: Rows added since ``.df`` was last read: they join it when it is (see :meth:`add`).
        self._pending: list[dict] = []
        self._df = df

    @property
    def df(self) -> pd.DataFrame | None:
        """The tidy frame of every row added (None before any run)."""
        if self._pending:
            rows, self._pending = self._pending, []
            new = normalise(pd.DataFrame(rows), self.meta.get("metrics"))
            self._df = new if self._df is None or self._df.empty else \
                normalise(pd.concat([self._df, new], ignore_index=True), self.meta.get("metrics"))
        return self._df

    @df.setter
    def df(self, value: pd.DataFrame | None) -> None:
        self._pending, self._df = [], value

    def frame(self) -> pd.DataFrame:
        """:attr:`df`.

        Raises:
            InvalidSpec: there are no results yet (saying how to get some).
        """
        if self.df is None:
            raise InvalidSpec("this study has no results yet: call .run() first, or Study.read(directory)")
        return self.df

    def add(self, rows: list[dict]) -> None:
        """Completed rows join :attr:`df` at once, so an interruption keeps them.

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
            row.setdefault("unit", unit(row["metric"]))
            row.setdefault("timestamp", now)
            if not row.get("accel") and row.get("kind") == "vm":
                row["accel"] = vm_accel
        self._pending.extend(rows)
        if self.on_rows is not None:  # a fleet host streams them back at once
            self.on_rows(normalise(pd.DataFrame(rows), self.meta.get("metrics")), self.meta)

    def save(self, directory) -> Path:
        """Write the frame, ``study.json`` and the raw outputs to ``directory`` (created); return it."""
        d = save(directory, self.frame(), self.meta)
        self.outputs.save(d)
        return d

    @classmethod
    def read(cls, directory) -> "Results":
        """The results :meth:`save` wrote."""
        df, meta = read(directory)
        return cls(df, meta, Outputs.read(directory), name=meta.get("params", {}).get("name", "study"))
