"""Committed results were measured under today's metric definitions (issue 20).

Every folder under ``benchmarks/results/`` carries ``record.json`` (kit.bench.storage.record): per
benchmark script, the kit commit it ran at, the fingerprint of the metric definitions
(kit.bench.metrics.fingerprint) and the files it wrote. A definition that changes changes the
fingerprint, so this test fails until the results are measured again under the new definitions.
"""

import json
import time
from pathlib import Path

import pytest

from kit.bench import metrics, storage

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_fingerprint_follows_every_definition(monkeypatch):
    now = metrics.fingerprint()
    assert now == metrics.fingerprint(metrics.definitions()) == metrics.fingerprint(dict(metrics.METRICS))
    assert len(now) == 16 and int(now, 16) >= 0
    for change in ({"pss": ("bytes", metrics.METRICS["pss"][1] + " (changed)")},
                   {"pss": ("KiB", metrics.METRICS["pss"][1])},
                   {"new_metric": ("s", "a metric that did not exist")}):
        monkeypatch.setattr(metrics, "METRICS", {**metrics.METRICS, **change})
        assert metrics.fingerprint() != now, change
    monkeypatch.undo()
    assert metrics.fingerprint() == now


def test_record_and_saved_study_carry_the_fingerprint(tmp_path):
    import pandas as pd

    t0 = time.time()
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "raw").mkdir()
    storage.record(tmp_path, "/somewhere/bench_a.py", ["a.csv", "raw/"])
    storage.record(tmp_path, "bench_b.py", since=t0)  # a second script in the same folder keeps the first's entry
    rec = json.loads((tmp_path / storage.RECORD).read_text())
    assert set(rec) == {"bench_a.py", "bench_b.py"}
    assert rec["bench_a.py"]["outputs"] == ["a.csv", "raw/"]
    assert rec["bench_b.py"]["outputs"] == ["a.csv", "raw/"]  # found by time, the record itself left out
    assert {e["metrics_fingerprint"] for e in rec.values()} == {metrics.fingerprint()}
    assert all(e["kit_commit"] for e in rec.values())  # this checkout's commit
    with pytest.raises(ValueError, match="outputs"):
        storage.record(tmp_path, "bench_c.py")
    # a saved study: the fingerprint of the definitions saved with its rows, not of today's
    old = {**metrics.definitions(), "pss": {"unit": "bytes", "definition": "an older definition"}}
    df = pd.DataFrame([{"metric": "pss", "value": 1.0, "status": "ok", "warmup": False}])
    storage.save(tmp_path / "study", df, {"metrics": old})
    meta = json.loads((tmp_path / "study" / storage.META).read_text())
    assert meta["metrics_fingerprint"] == metrics.fingerprint(old) != metrics.fingerprint()


def _folders():
    """Every folder under benchmarks/results that holds files, except those a record claims whole (raw/)."""
    out, claimed = [], set()
    for d in sorted([RESULTS, *(p for p in RESULTS.rglob("*") if p.is_dir())]):
        if any(d == c or c in d.parents for c in claimed):
            continue
        rec = d / storage.RECORD
        if rec.exists():
            for e in json.loads(rec.read_text()).values():
                claimed |= {d / o.rstrip("/") for o in e.get("outputs", []) if o.endswith("/")}
        if any(p.is_file() for p in d.iterdir()):
            out.append(d)
    return out


@pytest.mark.parametrize("folder", _folders(), ids=lambda d: str(d.relative_to(RESULTS.parent)))
def test_committed_results_were_measured_under_the_current_definitions(folder):
    rel = folder.relative_to(RESULTS.parent)
    rec_path = folder / storage.RECORD
    assert rec_path.exists(), (f"{rel} has no {storage.RECORD}: measured under unknown definitions; "
                               f"re-run the benchmark script that writes it")
    rec = json.loads(rec_path.read_text())
    now = metrics.fingerprint()
    stale = {s: e.get("metrics_fingerprint") for s, e in rec.items() if e.get("metrics_fingerprint") != now}
    assert not stale, (f"{rel}: measured under other metric definitions than today's ({now}): {stale}; "
                       f"re-run {', '.join(sorted(stale))}")
    assert all(e.get("kit_commit") for e in rec.values()), f"{rel}: an entry records no kit commit"
    listed = {o.rstrip("/") for e in rec.values() for o in e.get("outputs", [])}
    files = {p.name for p in folder.iterdir() if p.name != storage.RECORD and (p.is_file() or p.name in listed)}
    assert files <= listed, f"{rel}: files no script's record claims: {sorted(files - listed)}"
    for meta in folder.glob(storage.META):  # a saved study: its own fingerprint, of the definitions saved with it
        saved = json.loads(meta.read_text())
        assert saved.get("metrics_fingerprint") == metrics.fingerprint(saved.get("metrics", {})) == now, \
            f"{rel}/{meta.name}: rows measured under other metric definitions than today's"
