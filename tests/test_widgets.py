"""kit.widgets without a browser: the row logic, the refresh thread, the buttons' callbacks (called
directly) on a real runc instance, kit.widgets.explore's controls, and the static rendering a report shows
where no kernel runs. The same widgets in a real browser: tests/test_browser.py."""

from __future__ import annotations

import re

import matplotlib
import nbformat
import pytest

import kit
from kit import widgets
from kit.bench import Study
from kit.errors import InvalidSpec

from tests.conftest import need, unique

matplotlib.use("Agg")

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: A service that stops at once on SIGTERM (a plain `sleep` as PID 1 would ignore it for 10 s).
SERVICE = ["sh", "-c", "trap 'exit 0' TERM; echo service-up; while true; do sleep 1; done"]


def test_formats():
    assert [widgets.format_uptime(s) for s in (None, 0, 42.9, 185, 7620, 97200)] == \
        ["-", "0s", "42s", "3m05s", "2h07m", "1d03h"]
    assert [widgets.format_bytes(n) for n in (None, 2048, 3.5 * 2 ** 20, 1.2 * 2 ** 30)] == \
        ["-", "2 KiB", "3.5 MiB", "1.20 GiB"]
    assert widgets.tail("a\nb\nc\n", 2) == "b\nc" and widgets.tail("a", 0) == ""
    assert widgets.css_name("web.1 x") == "kit-row-web_1_x"


def test_static_table_escapes_and_says_when_empty():
    row = {"name": "<b>x</b>", "runtime": "runc", "image": "busybox", "state": "running", "uptime": 65,
           "ports": "127.0.0.1:8080->80", "memory": 5 * 2 ** 20}
    page = widgets.rows_html([row], caption="now")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "1m05s" in page and "5.0 MiB" in page and "<caption>now</caption>" in page
    assert "no instances" in widgets.rows_html([])
    text = widgets.rows_text([row]).splitlines()
    assert text[0].split() == list(widgets.COLUMNS) and "1m05s" in text[1]


def test_interval_is_checked():
    with pytest.raises(InvalidSpec, match="interval"):
        widgets.Instances(interval=0, start=False)


@pytest.fixture
def service(names):
    need("runc")
    name = unique("wdg")
    port = kit.free_port()
    kit.start("busybox", SERVICE, runtime="runc", name=name, ports=[f"{port}:80"])
    names.append(name)
    kit.wait_until(lambda: "service-up" in kit.logs(name).stdout, 30, what="the service's first line")
    return name, port


def test_rows_of_a_running_instance(service):
    name, port = service
    row = {r["name"]: r for r in widgets.instance_rows()}[name]
    assert (row["runtime"], row["image"], row["state"]) == ("runc", "busybox", "running")
    assert row["ports"] == f"127.0.0.1:{port}->80"
    assert 0 <= row["uptime"] < 60
    # the instance's own processes (sh and sleep), not the runc monitor: a few hundred KiB to some MiB
    assert 50 * 1024 < row["memory"] < 64 * 2 ** 20, row["memory"]
    later = {r["name"]: r for r in widgets.instance_rows(now=kit.api.get(name).created_at + 3600)}[name]
    assert later["uptime"] > 3000
    assert {r["name"]: r for r in widgets.instance_rows(memory=False)}[name]["memory"] is None


def test_refresh_thread_starts_updates_and_stops_on_close(service):
    name, _ = service
    w = widgets.Instances(interval=0.2)
    try:
        assert w.live
        cell = w._rows[name].cells["uptime"]
        first = cell.value
        kit.wait_until(lambda: cell.value != first, 10, what="the uptime cell to change")
        kit.wait_until(lambda: w.body.children, 5, what="a row")
        assert any(css == widgets.css_name(name) for b in w.body.children for css in b._dom_classes)
    finally:
        w.close()
    assert not w.live and w._thread is None
    assert w.comm is None  # the widget itself is closed too
    w.refresh()  # after close: reads, builds nothing
    assert not w._rows


def test_buttons_logs_stop_rm_and_their_errors(service):
    name, _ = service
    w = widgets.Instances(start=False)
    try:
        row = w._rows[name]
        row.buttons["logs"].click()
        w.wait()
        assert "service-up" in "".join(o.get("text", "") for o in w.output.outputs)
        # rm of a running instance: kit.rm's own error, shown in the widget, the instance untouched
        row.buttons["rm"].click()
        w.wait()
        assert w.errors == [f"rm {name}: KitError: instance {name!r} is running: stop it first, "
                            f"or use rm -f / force=True"]
        assert "is running" in w.message.value and "color:#b00" in w.message.value
        assert kit.ps().set_index("name").loc[name, "status"] == "running"
        # stop: the same kit.stop; the row then says exited, the buttons are enabled again
        row.buttons["stop"].click()
        assert row.buttons["stop"].disabled or not w._actions[-1].is_alive()
        w.wait()
        assert kit.ps().set_index("name").loc[name, "status"] == "exited (0)"
        assert w.message.value == f"stopped {name} (exit 0)"
        assert row.cells["state"].value == "exited (0)" and row.cells["memory"].value == "-"
        assert not row.buttons["stop"].disabled
        # rm now works, and the row goes
        row.buttons["rm"].click()
        w.wait()
        assert name not in set(kit.ps()["name"]) and name not in w._rows
        # a button whose instance went meanwhile: kit.stop's InstanceNotFound, shown
        w.act("stop", name).join()
        assert w.errors[-1].startswith(f"stop {name}: InstanceNotFound: no instance named")
    finally:
        w.close()


def test_display_bundle_has_the_widget_and_a_static_table(service):
    name, _ = service
    w = widgets.Instances(start=False)
    try:
        data = w._repr_mimebundle_()
        assert data[WIDGET_MIME]["model_id"] == w.model_id
        assert name in data["text/html"] and "<table" in data["text/html"]
        assert name in data["text/plain"]
    finally:
        w.close()


def test_ps_live_magic(ip, service, capsys):
    name, _ = service
    w = ip.run_line_magic("container", "ps --live")
    try:
        assert isinstance(w, widgets.Instances) and w.live and name in w._rows
    finally:
        w.close()
    assert ip.run_line_magic("container", "ps --help") is None
    assert "--live" in capsys.readouterr().out


# -- kit.widgets.explore(study) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def study():
    for rt in ("process", "runc"):
        need(rt)
    s = Study(image="busybox", runtimes=["process", "runc"], workload="true", repeat=3, warmup=0,
              parts=("startup", "memory"), seed=1, progress=False, name="explore")
    s.run()
    return s


def _runtimes_in(table_html: str) -> set[str]:
    return set(re.findall(r"<td>(process|runc)</td>", table_html))


def test_explore_controls_redraw_figure_and_summary(study, tmp_path):
    e = widgets.explore(study)
    assert isinstance(e, widgets.Explore)
    assert list(e.part.options) == ["startup", "memory"]
    assert "launch_to_exit" in e.metric.options and e.metric.value == e.metric.options[0]
    assert set(e.runtimes.value) == {"process", "runc"}
    assert bytes(e.image.value).startswith(b"\x89PNG") and _runtimes_in(e.table.value) == {"process", "runc"}

    e.metric.value = "launch_to_exit"
    shown = widgets.study_summary(study, "startup", "launch_to_exit", ["runc"])
    assert len(shown) == 1 and shown["runs"].iloc[0] == 3
    before = bytes(e.image.value)
    e.runtimes.value = ("runc",)
    assert _runtimes_in(e.table.value) == {"runc"} and bytes(e.image.value) != before
    assert f"{shown['median'].iloc[0]:.4g}" in e.table.value  # the summary()'s own numbers
    for change in (lambda: setattr(e.log_scale, "value", True), lambda: setattr(e.view, "value", "summary")):
        before = bytes(e.image.value)
        change()
        assert bytes(e.image.value) != before
    # another part: its metrics and runtimes, the runtimes chosen kept, drawn
    e.part.value = "memory"
    assert "pss" in e.metric.options and e.metric.value == e.metric.options[0]
    assert set(e.runtimes.options) == {"process", "runc"} and e.runtimes.value == ("runc",)
    assert _runtimes_in(e.table.value) == {"runc"}
    e.metric.value = "pss"
    assert _runtimes_in(e.table.value) == {"runc"} and "<td>bytes</td>" in e.table.value
    data = e._repr_mimebundle_()
    assert WIDGET_MIME in data and data["text/html"].startswith("<img src='data:image/png;base64,")
    e.close()
    # a loaded study explores the same way
    loaded = widgets.explore(Study.read(study.save(tmp_path / "saved", figures=False)))
    assert loaded.part.value == "startup" and set(loaded.runtimes.value) == {"process", "runc"}
    assert _runtimes_in(loaded.table.value) == {"process", "runc"}
    loaded.close()


def test_figure_views_and_log_on_non_positive(study):
    fig = widgets.study_figure(study, "startup", "launch_to_exit", ["process", "runc"], view="runs")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["process", "runc"]
    assert ax.get_ylabel() == "launch_to_exit (ms)"
    assert len(ax.collections) >= 2  # one scatter per runtime
    fig = widgets.study_figure(study, "startup", "launch_to_exit", ["runc"], view="summary", log=True)
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].patches) == 1
    fig = widgets.study_figure(study, "startup", "launch_to_exit", [], view="runs")
    assert "no measured runs" in fig.axes[0].texts[0].get_text()
    with pytest.raises(InvalidSpec, match="view"):
        widgets.study_figure(study, "startup", "launch_to_exit", ["runc"], view="pie")


def test_explore_needs_results():
    with pytest.raises(InvalidSpec, match="no results yet"):
        widgets.explore(Study(runtimes=["process"], progress=False))


# -- in reports ------------------------------------------------------------------------
REPORT_NB = """\
import kit
kit.start("busybox", {service!r}, runtime="runc", name={name!r})
live = kit.widgets.instances()
live
"""
EXPLORE_NB = """\
import kit
from kit.bench import Study
s = Study(runtimes=["process"], repeat=2, warmup=0, parts=["startup"], progress=False)
s.run()
kit.widgets.explore(s)
"""


@pytest.mark.slow
def test_report_html_shows_static_tables_not_broken_widgets(tmp_path):
    """Executed headless (nbclient stores the widget state), rendered with nbconvert: the instances
    table and the explorer's figure are in the HTML; no placeholder of a widget that cannot load."""
    need("runc")
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    from kit.report import render_html

    name = unique("wdg-report")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(REPORT_NB.format(service=SERVICE, name=name)),
                nbformat.v4.new_code_cell(EXPLORE_NB),
                nbformat.v4.new_code_cell("live.close(); kit.prune()")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert WIDGET_MIME in nb.cells[0].outputs[0].data and "widgets" in nb.metadata  # a real widget, state saved

    def check(page: str) -> None:
        assert re.search(r"<table class=[\"']kit-instances[\"']>", page) and f"<td>{name}</td>" in page
        assert "<td>running</td>" in page and "<td>runc</td>" in page
        assert "data:image/png;base64," in page and "kit-summary" in page
        for broken in ("Error displaying widget", "Loading widget", "VBox(", "Instances(", WIDGET_MIME):
            assert broken not in page, broken

    check(render_html(nb, tmp_path / "report.html").read_text())  # kit report's rendering
    # plain nbconvert of the notebook as JupyterLab saves it (widget state not saved by default)
    nb.metadata.pop("widgets")
    page, _ = HTMLExporter().from_notebook_node(nb)
    check(page)
