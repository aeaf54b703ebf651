"""kit.report on a tiny notebook, and the headless-Chromium screenshot of its HTML."""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

import kit
from kit import report
from kit.errors import InvalidSpec

ROOT = Path(__file__).resolve().parent.parent


def _tiny(path: Path, body: str = "", plot: bool = True) -> Path:
    """A notebook with a parameters cell, a widget, a computed sentence, a figure and saved data."""
    params = nbformat.v4.new_code_cell("n = 3\ndata_dir = None")
    params.metadata["tags"] = ["parameters"]
    cells = [
        nbformat.v4.new_markdown_cell("# Tiny study"),
        params,
        nbformat.v4.new_code_cell("import json, pathlib\nimport ipywidgets as widgets\n"
                                  "from IPython.display import Markdown, display\n"
                                  "import matplotlib.pyplot as plt\n"
                                  "widgets.IntSlider(value=n, description='n')"),
        nbformat.v4.new_code_cell("xs = list(range(n))\nys = [x * x for x in xs]\n"
                                  "out = pathlib.Path(data_dir)\n"
                                  "(out / 'squares.json').write_text(json.dumps(ys))\n"
                                  "display(Markdown(f'The largest square here is **{max(ys)}**.'))"),
    ]
    if plot:
        cells.append(nbformat.v4.new_code_cell(
            "fig, ax = plt.subplots(figsize=(8, 5))\n"
            "ax.bar(xs, ys, color=['tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple'][:n])\n"
            "ax.set_title('squares'); plt.show()"))
    if body:
        cells.append(nbformat.v4.new_code_cell(body))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_make_report_writes_everything(tmp_path):
    nb = _tiny(tmp_path / "tiny.ipynb")
    out = report.make_report(nb, {"n": 5}, out_root=tmp_path / "reports")
    assert out.parent == tmp_path / "reports" and out.name == report.report_dir(tmp_path).name
    executed = nbformat.read(out / "tiny.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "n = 5" in injected[0].source and str(out / "tiny" / "data") in injected[0].source
    html = (out / "tiny.html").read_text()
    assert "The largest square here is <strong>16</strong>" in html  # computed from n=5, rendered
    assert "data:image/png;base64" in html
    assert "<script src=\"http" not in html  # reads offline: no CDN scripts
    assert "IntSlider(" not in html  # widget views need a kernel: left out of the rendering
    pngs = list((out / "tiny" / "figures").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "tiny" / "data" / "squares.json").read_text()) == [0, 1, 4, 9, 16]
    env = json.loads((out / "tiny" / "environment.json").read_text())
    assert env["host"] == platform.node() and env["kit_version"] == kit.__version__  # a fresh record of here
    assert "tiny.html" in (out / "index.html").read_text()


def test_unknown_parameter_is_refused(tmp_path):
    nb = _tiny(tmp_path / "tiny.ipynb")
    with pytest.raises(InvalidSpec, match="no parameter repaet.*choose among"):
        report.make_report(nb, {"repaet": 3}, out_root=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_missing_notebook_is_refused(tmp_path):
    with pytest.raises(InvalidSpec, match="no notebook"):
        report.make_report(tmp_path / "nope.ipynb", out_root=tmp_path)


def test_failing_cell_still_writes_html(tmp_path):
    nb = _tiny(tmp_path / "bad.ipynb", body="raise RuntimeError('boom at step 2')")
    with pytest.raises(report.NotebookFailed, match="RuntimeError: boom at step 2"):
        report.make_report(nb, out_root=tmp_path / "reports")
    out = report.report_dir(tmp_path / "reports")
    assert "boom at step 2" in (out / "bad.html").read_text()


def test_main_parses_parameters(tmp_path, capsys):
    nb = _tiny(tmp_path / "tiny.ipynb")
    assert report.main([str(nb), "-p", "n", "4", "-o", str(tmp_path / "r")]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert json.loads((out / "tiny" / "data" / "squares.json").read_text()) == [0, 1, 4, 9]
    assert report.main([str(nb), "-p", "m", "4", "-o", str(tmp_path / "r")]) == 1
    assert report.parse_value("['runc', 'lxc']") == ["runc", "lxc"]
    assert report.parse_value("runc,lxc") == "runc,lxc"
    assert report.parse_value("0.5") == 0.5 and report.parse_value("True") is True


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_screenshot_shows_the_plots(tmp_path, monkeypatch):
    shot = _screenshot_module()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where Chromium's throwaway profile goes
    try:
        shot.chromium()
    except SystemExit as e:
        pytest.fail(str(e))
    with_plot = report.make_report(_tiny(tmp_path / "plot.ipynb"), out_root=tmp_path / "a")
    without = report.make_report(_tiny(tmp_path / "text.ipynb", plot=False), out_root=tmp_path / "b")
    summaries = {}
    for label, out, stem in (("plot", with_plot, "plot"), ("text", without, "text")):
        png = shot.screenshot(out / f"{stem}.html", tmp_path / f"{label}.png", height=1600, timeout=90)
        summaries[label] = shot.colour_summary(png)
    plot, text = summaries["plot"], summaries["text"]
    assert plot["width"] == 1280 and plot["height"] == 1600
    # The bars put saturated colour on the page; code and text alone hardly do.
    assert plot["saturated_share"] > 0.02 > text["saturated_share"], summaries
    assert plot["distinct_colours"] > 200, summaries
    assert not list(scratch.iterdir()), "the Chromium profile directory was left behind"


def test_screenshot_script_cli(tmp_path):
    out = report.make_report(_tiny(tmp_path / "cli.ipynb"), out_root=tmp_path / "r")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(out / "cli.html"),
                           "-o", str(tmp_path / "cli.png"), "--height", "900"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli.png").stat().st_size > 10_000
    assert "distinct_colours" in proc.stdout
    shutil.rmtree(out)
