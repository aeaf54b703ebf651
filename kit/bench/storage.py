"""Saving and loading a result set: ``results.csv`` (+ ``results.parquet`` with pyarrow) and ``study.json``.

``study.json`` holds everything that is not a measurement: the study's
parameters, the seed and the run order it produced, the environment record,
the definition of every metric (also in the loaded frame's
``attrs["metrics"]``) and, for a study that did not finish, why (``partial``). A loaded result set re-plots and
re-summarises without re-running anything.

Every saved study carries ``meta["metrics_fingerprint"]``, the fingerprint of the definitions it was
measured under (:func:`kit.bench.metrics.fingerprint`). A benchmark script's results folder carries
``record.json`` (:func:`record`): per script, the kit commit it ran at, that fingerprint and the files
it wrote, so a committed result measured under other definitions than today's can be told (and a test
tells it: tests/test_results_record.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .metrics import COLUMNS, definitions, fingerprint

CSV, PARQUET, META = "results.csv", "results.parquet", "study.json"
#: The record of a results folder: per script, the commit and definitions its files were measured under.
RECORD = "record.json"

_DTYPES = {"study": str, "part": str, "image": str, "runtime": str, "kind": str, "workload": str,
           "component": str, "metric": str, "unit": str, "accel": str, "status": str}


#: Columns kept when a frame has them: ``host`` (a fleet run, see kit.bench.fleet); ``start`` and
#: ``pool`` (a study of start modes, see kit.bench.starts).
OPTIONAL = ("host", "start", "pool")


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
    # The definitions the rows were measured under (those saved with them), not today's.
    meta = {**meta, "metrics_fingerprint": fingerprint(meta.get("metrics") or df.attrs.get("metrics"))}
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
    from datetime import datetime, timezone

    from .envinfo import git_commit

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


def load(directory) -> tuple[pd.DataFrame, dict]:
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
