"""The field's published figures (kit.bench.references, issue 24): a reference without its source,
boundary or hardware is refused; only those whose boundary is a kit metric are drawn, grey and
labelled, and every figure lists its metrics' references with their source.
"""

from __future__ import annotations

import dataclasses

import matplotlib
import pandas as pd
import pytest
from matplotlib.figure import Figure

from kit.bench import metrics, references, stormplots
from kit.errors import InvalidSpec

matplotlib.use("Agg")


def test_a_reference_without_a_source_is_refused():
    good = references.get("firecracker-rate")
    for missing in ("source_url", "source_title", "boundary", "hardware"):
        with pytest.raises(InvalidSpec, match=f"has no {missing}") as e:
            dataclasses.replace(good, **{missing: " "})
        assert "\n" not in str(e.value)
    with pytest.raises(InvalidSpec, match="not an https"):
        dataclasses.replace(good, source_url="example.org/figures")
    with pytest.raises(InvalidSpec, match="no reference 'nope': choose from"):
        references.get("nope")


def test_every_reference_names_a_kit_metric_in_its_unit_or_none():
    for r in references.TABLE.values():
        assert r.source_url.startswith("https://") and r.source_title and r.hardware and r.boundary
        if r.metric:
            assert r.metric in metrics.METRICS, r.key
            assert r.unit == metrics.unit(r.metric), (r.key, r.unit)
        assert references.cite(r.key) == f"[{r.source_title}]({r.source_url})"
        assert "not measured here" in references.sentence(r.key)


def test_drawn_only_where_the_boundary_is_measured():
    t = references.table(["launch_to_exit"], ["runc"])
    assert not t["drawn"].any()  # youki's create-start-delete is 'total', not launch_to_exit
    assert set(t[t["key"] == "youki-runc"]["why"]) == {"total was not measured in this study"}
    drawn = {r.key for r in references.drawn(["total", "storm_starts_per_s"], ["runc", "lxc"])}
    assert drawn == {"youki-runc", "youki-youki", "firecracker-rate"}  # crun not measured; youki across all
    assert references.get("firecracker-rate").scaled(2) == 10.0


def test_every_figure_lists_its_references_with_their_source():
    fig = Figure()
    fig.add_subplot()
    df = pd.DataFrame({"runtime": ["runc", "runsc"]})
    stormplots.annotate({"startup": fig}, df, {"environment": {"cpu_count": 2}})
    text = "\n".join(t.get_text() for t in fig.texts)
    for key in ("youki-runc", "firecracker-boot"):
        r = references.get(key)
        assert r.what in text and r.source_title in text
    assert "same boundary, not drawn on this figure" in text  # youki's total, which the figure does not draw
    assert "measured to another boundary" in text  # Firecracker's boot to init
    assert "reference (not measured here)" not in text  # nothing drawn on it
