"""Reproducible study reports: execute a notebook into ``reports/<date>-<host>/``.

>>> from kit.report import make_report
>>> make_report("notebooks/02-containers-vs-vms.ipynb", {"repeat": 3})
PosixPath('reports/2025-01-31-myhost')

A report directory holds, for each notebook ``NAME`` executed into it::

    NAME.ipynb                 the executed notebook (papermill), parameters recorded
    NAME.html                  its HTML rendering: self-contained, no kernel or network needed
    NAME/figures/*.png         every figure the notebook drew
    NAME/data/*                the raw data the notebook saved (CSV/JSON) into ``data_dir``
    NAME/environment.json      the machine and software it was measured on
    index.html                 links to every report in the directory

A notebook takes part by declaring ``data_dir = None`` in its ``parameters``
cell: the report then passes the directory where its raw data belongs.

From a shell: ``python -m kit.report NOTEBOOK [-p NAME VALUE]...`` (``kit report``).
"""

from __future__ import annotations

import argparse
import ast
import base64
import datetime as _dt
import html
import json
import shutil
import socket
import sys
from pathlib import Path

from .errors import InvalidSpec, KitError

#: Where notebooks are looked up by bare name (``kit report 02-containers-vs-vms``).
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

#: The parameter through which a notebook learns where to save its raw data.
DATA_PARAM = "data_dir"

#: Seconds one cell may run before the report is abandoned (a VM study cell is minutes, not hours).
CELL_TIMEOUT = 1800

#: The lab template without its remote scripts (require.js, MathJax, mermaid from a CDN): the
#: report must read offline and a headless browser must not wait on the network to draw it.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class NotebookFailed(KitError):
    """A cell of the notebook raised; the partial report is still written for diagnosis."""


def find_notebook(notebook: str | Path) -> Path:
    """The notebook file for a path or a bare name such as ``02-containers-vs-vms``.

    Raises:
        InvalidSpec: no such notebook.
    """
    p = Path(notebook)
    for cand in (p, p.with_suffix(".ipynb"), NOTEBOOKS / p.name, NOTEBOOKS / (p.name + ".ipynb")):
        if cand.is_file() and cand.suffix == ".ipynb":
            return cand.resolve()
    have = ", ".join(sorted(q.stem for q in NOTEBOOKS.glob("*.ipynb"))) or "none"
    raise InvalidSpec(f"no notebook {str(notebook)!r}: give a path to an .ipynb file or one of: {have}")


def report_dir(out_root: str | Path = "reports", when: _dt.date | None = None, host: str | None = None) -> Path:
    """``<out_root>/<YYYY-MM-DD>-<host>``: one directory per machine and day."""
    when = when or _dt.date.today()
    host = (host or socket.gethostname().split(".")[0] or "host").replace("/", "_")
    return Path(out_root) / f"{when.isoformat()}-{host}"


def parse_value(text: str):
    """A command-line parameter value: a Python literal (3, 0.5, True, None, ['a']) or else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def declared_parameters(notebook: Path) -> dict:
    """The names (and default source text) of the notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def make_report(notebook: str | Path, parameters: dict | None = None, out_root: str | Path = "reports", *,
                kernel_name: str = "python3", cell_timeout: float = CELL_TIMEOUT,
                progress: bool | None = None) -> Path:
    """Execute ``notebook`` with ``parameters`` and write its report; return the report directory.

    Args:
        notebook: path to an ``.ipynb``, or a bare name from ``notebooks/``.
        parameters: values for the notebook's ``parameters`` cell; unknown names are refused
            (a typo would otherwise be silently ignored and the defaults measured).
        out_root: the reports root; the report goes to ``<out_root>/<date>-<host>/``.
        kernel_name: the Jupyter kernel; ``python3`` runs in this same interpreter.
        cell_timeout: seconds one cell may run before execution is abandoned.
        progress: show papermill's progress bar (default: when stderr is a terminal).

    Returns:
        The report directory.

    Raises:
        InvalidSpec: no such notebook, or a parameter it does not declare.
        NotebookFailed: a cell raised; the executed notebook and HTML are still written.
    """
    import papermill

    nb_path = find_notebook(notebook)
    stem = nb_path.stem
    params = dict(parameters or {})
    declared = declared_parameters(nb_path)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise InvalidSpec(f"notebook {stem} has no parameter {', '.join(unknown)}: "
                          f"choose among {', '.join(sorted(declared)) or 'none'}")
    out = report_dir(out_root).resolve()
    own = out / stem
    data = own / "data"
    # A rerun on the same day replaces that notebook's report, never mixes two runs' files.
    shutil.rmtree(own, ignore_errors=True)
    data.mkdir(parents=True)
    if DATA_PARAM in declared:
        params.setdefault(DATA_PARAM, str(data))
    executed = out / f"{stem}.ipynb"
    failure = None
    try:
        papermill.execute_notebook(
            str(nb_path), str(executed), parameters=params, kernel_name=kernel_name, cwd=str(nb_path.parent),
            progress_bar=sys.stderr.isatty() if progress is None else progress,
            execution_timeout=cell_timeout, start_timeout=120,
        )
    except papermill.PapermillExecutionError as e:
        failure = e
    if not executed.exists():
        raise NotebookFailed(f"notebook {stem} could not be executed: {failure}")
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    figures = extract_figures(nb, own / "figures")
    env = _environment(data)
    (own / "environment.json").write_text(json.dumps(env, indent=1, sort_keys=True, default=str))
    # The report shows no paths of the machine it was made on: the data directory, the reports root
    # and the kit's caches become names a reader can read anywhere.
    render_html(nb, out / f"{stem}.html", redact=machine_paths(out, data))
    _write_index(out)
    if failure is not None:
        raise NotebookFailed(f"notebook {stem} failed in cell {failure.exec_count}: {_why(nb, failure)} "
                             f"(see {out / (stem + '.html')})")
    if not figures:
        # Not an error (a notebook may draw nothing), but a study report without figures is suspicious.
        print(f"kit report: note: {stem} drew no figures", file=sys.stderr)
    return out


def _why(nb, failure) -> str:
    """The failing cell's error in one line; a magic's UsageError leaves only a stderr message."""
    if failure.evalue:
        return f"{failure.ename}: {failure.evalue}"
    for cell in nb.cells:
        if cell.get("execution_count") == failure.exec_count:
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stderr")
            if text.strip():
                return text.strip().splitlines()[-1]
    return failure.ename


def extract_figures(nb, dest: Path) -> list[Path]:
    """Write every PNG output of the executed notebook ``nb`` to ``dest``; return the files."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for idx, cell in enumerate(nb.cells):
        k = 0
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if not png:
                continue
            k += 1
            path = dest / f"cell{idx:02d}-{k}.png"
            path.write_bytes(base64.b64decode(png if isinstance(png, str) else "".join(png)))
            written.append(path)
    return written


#: A cell tagged so shows its output, not its code, in the report: the cells that only build text or
#: figures (the notebook keeps them, for the reader who wants to see how).
HIDDEN_INPUT = "hide-input"


def _redacted(value, redact: dict[str, str]):
    """``value`` (a string, or a list of strings as nbformat stores text) with each key replaced."""
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    if isinstance(value, str):
        for old, new in sorted(redact.items(), key=lambda kv: -len(kv[0])):  # the longest path first
            value = value.replace(old, new)
    return value


def _redact_cell(cell, redact: dict[str, str]) -> None:
    cell["source"] = _redacted(cell.get("source", ""), redact)
    for o in cell.get("outputs", []):
        if "text" in o:
            o["text"] = _redacted(o["text"], redact)
        for mime in ("text/plain", "text/markdown", "text/html"):
            if mime in o.get("data", {}):
                o["data"][mime] = _redacted(o["data"][mime], redact)


def machine_paths(out: Path, data: Path | None = None) -> dict[str, str]:
    """This machine's paths in a notebook run whose report went to ``out`` (its raw data to ``data``),
    each with the name a report shows instead: the kit's caches become ``$KIT_HOME`` (not the whole
    home directory, whose name, such as ``/root``, is also a path inside an instance), and the
    directory holding the kit (its checkout: tests' images are built from there) ``<kit>``."""
    from . import config

    paths = {str(out): "<report>", str(config.home()): "$KIT_HOME", str(Path(__file__).resolve().parents[1]): "<kit>"}
    if data is not None:
        paths[str(data)] = "<data_dir>"
    return paths


def redact_notebook(nb, redact: dict[str, str]):
    """Replace, in place, every text of ``redact`` (a path of this machine) by its value in ``nb``'s
    code, outputs and papermill's record of its paths and parameters; return ``nb``.

    An executed notebook shown anywhere but the machine that made it (the docs site's committed
    runs, a report's HTML) names no path of that machine."""
    redact = {k: v for k, v in redact.items() if k and k != "/"}
    for cell in nb.cells:
        _redact_cell(cell, redact)
    pm = nb.metadata.get("papermill")
    if pm:
        for key in ("input_path", "output_path"):
            if isinstance(pm.get(key), str):
                pm[key] = _redacted(pm[key], redact)
        pm["parameters"] = {k: _redacted(v, redact) for k, v in (pm.get("parameters") or {}).items()}
    return nb


def render_html(nb, dest: Path, redact: dict[str, str] | None = None) -> Path:
    """Render the executed notebook to a self-contained HTML file that needs no kernel or network.

    Cells tagged :data:`HIDDEN_INPUT` show their output only; every text of ``redact`` (a path of
    this machine) is replaced by its value, in code and outputs alike.
    """
    import copy

    import jinja2
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = redact_notebook(copy.deepcopy(nb), redact or {})
    for cell in nb.cells:
        # A widget's view needs its kernel; without it only "VBox(...)" would show. A widget that
        # carries its own static rendering (text/html, as kit.widgets' do) shows that; others are
        # left out. The code cell that made it stays, so a reader still sees how to choose.
        kept = []
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if _WIDGET_MIME in data:
                data.pop(_WIDGET_MIME)
                if set(data) <= {"text/plain"}:
                    continue
            kept.append(o)
        if "outputs" in cell:
            cell["outputs"] = kept
    nb.metadata.pop("widgets", None)
    exporter = HTMLExporter(extra_loaders=[jinja2.DictLoader({"kit_report.html.j2": _TEMPLATE})],
                            template_file="kit_report.html.j2")
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={HIDDEN_INPUT}, enabled=True), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    dest.write_text(body, encoding="utf-8")
    return dest


def _environment(data: Path) -> dict:
    """The environment record: the one the notebook saved with its data, else a fresh one."""
    for cand in sorted(data.rglob("environment.json")):
        try:
            return json.loads(cand.read_text())
        except ValueError:
            continue
    from .bench.envinfo import collect  # the same record every saved study carries

    return collect()


def _write_index(out: Path) -> None:
    """``index.html``: one link per notebook report in the directory, with its figures and data."""
    items = []
    for page in sorted(out.glob("*.html")):
        if page.name == "index.html":
            continue
        own = out / page.stem
        n_fig = len(list((own / "figures").glob("*.png")))
        n_data = len([p for p in (own / "data").rglob("*") if p.is_file()])
        e = html.escape
        items.append(f"<li><a href='{e(page.name)}'>{e(page.stem)}</a>: {n_fig} figure(s) in "
                     f"<a href='{e(page.stem)}/figures/'>figures/</a>, {n_data} data file(s) in "
                     f"<a href='{e(page.stem)}/data/'>data/</a>, "
                     f"<a href='{e(page.stem)}/environment.json'>environment</a></li>")
    (out / "index.html").write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(out.name)}</title></head>"
        f"<body><h1>Isolation Kit reports: {html.escape(out.name)}</h1><ul>{''.join(items)}</ul></body></html>\n",
        encoding="utf-8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``kit report``, shared by ``python -m kit.report`` and the ``kit`` command."""
    p.add_argument("notebook", help="path to an .ipynb, or a name from notebooks/ (e.g. 02-containers-vs-vms)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="set a parameter; VALUE is a Python literal (3, 0.5, True, ['runc']) or a string")
    p.add_argument("-o", "--out-root", default="reports", help="reports root (default: reports)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT, help="seconds per cell")


def run_args(args: argparse.Namespace) -> int:
    """Make the report ``args`` describe; print its directory; 0 on success."""
    params = {name: parse_value(value) for name, value in args.parameter}
    try:
        out = make_report(args.notebook, params, args.out_root, kernel_name=args.kernel,
                          cell_timeout=args.cell_timeout)
    except KitError as e:
        print(f"kit report: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``kit report NOTEBOOK [-p NAME VALUE]... [-o DIR]``: print the report directory; 0 on success."""
    p = argparse.ArgumentParser(prog="kit report", description="Execute a notebook into a dated study report.")
    add_arguments(p)
    return run_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
