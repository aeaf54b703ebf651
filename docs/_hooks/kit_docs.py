"""MkDocs hooks: the parts of the site that are generated, so that nothing is written twice.

- ``<!-- kit: METRICS -->`` becomes the metric definitions of ``kit.bench.METRICS`` (a table, then one
  linkable section per metric: ``reference/metrics.md#pss``).
- ``<!-- kit: LAYERS -->`` becomes one picture (inline SVG) per import-linter contract of
  pyproject.toml, the same contracts ``lint-imports`` enforces.
- ``notebooks/NAME.ipynb`` pages (and their nav entries) are the notebooks of ``notebooks/``, each in its newest executed
  copy from ``kit report`` (``reports/<date>-<host>/NAME.ipynb``, outputs included) where one exists,
  else the committed run (``notebooks/executed/``, scripts/render_notebooks.py), else as committed (no outputs); ``<!-- kit: NOTEBOOK-SOURCES -->`` says which, per notebook.
"""

from __future__ import annotations

import html
import json
import re
import tomllib
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- kit: ([A-Z-]+) -->")


def literal(text: str) -> str:
    """``text`` as Markdown that renders it word for word (``density_*pss*`` is no emphasis)."""
    return re.sub(r"([\\`*_{}\[\]|])", r"\\\1", html.escape(text, quote=False))


def metrics_markdown() -> str:
    """Every metric of ``kit.bench.METRICS``: an index table, then a section per metric."""
    from kit.bench.metrics import METRICS

    rows = ["| metric | unit | in short |", "|---|---|---|"]
    for name, (unit, text) in METRICS.items():
        short = re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(";")
        short = short if len(short) <= 150 else short[:150].rsplit(" ", 1)[0] + " …"
        rows.append(f"| [`{name}`](#{name}) | {literal(unit)} | {literal(short)} |")
    sections = [f"### `{name}` {{#{name}}}\n\n**unit:** {literal(unit)}\n\n{literal(text)}\n"
                for name, (unit, text) in METRICS.items()]
    return "\n".join(rows) + "\n\n## Definitions\n\n" + "\n".join(sections)


_LINE_CHARS, _CHAR_W, _LINE_H, _PAD, _GAP = 78, 7.8, 17, 10, 22


def _wrap(names: list[str]) -> list[str]:
    """``names`` joined by " · " into lines of at most _LINE_CHARS characters."""
    lines = [""]
    for n in names:
        joined = f"{lines[-1]} · {n}" if lines[-1] else n
        if len(joined) > _LINE_CHARS and lines[-1]:
            lines.append(n)
        else:
            lines[-1] = joined
    return lines


def _svg(boxes: list[list[str]], arrows: bool) -> str:
    """Boxes stacked top-down (an arrow from each to the next: *may import*), as inline SVG: drawn
    here, so the site needs no diagram library from the network."""
    width = int(max(len(line) for box in boxes for line in box) * _CHAR_W + 2 * _PAD)
    parts, y = [], 0
    for i, box in enumerate(boxes):
        h = len(box) * _LINE_H + _PAD
        parts.append(f'<rect x="1" y="{y}" width="{width}" height="{h}" rx="6" fill="#eef1fb" stroke="#3f51b5"/>')
        parts += [f'<text x="{_PAD}" y="{y + _PAD / 2 + (j + 1) * _LINE_H - 4}">{html.escape(line)}</text>'
                  for j, line in enumerate(box)]
        y += h
        if i < len(boxes) - 1:
            if arrows:
                mid = width / 2
                parts.append(f'<path d="M{mid},{y + 2} V{y + _GAP - 4}" stroke="#3f51b5" marker-end="url(#kit-arrow)"/>')
            y += _GAP
    return (f'<svg class="kit-layers" xmlns="http://www.w3.org/2000/svg" width="{width + 2}" height="{y + 1}" '
            f'viewBox="0 0 {width + 2} {y + 1}" font-family="monospace" font-size="12.5">'
            '<defs><marker id="kit-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#3f51b5"/></marker></defs>'
            + "".join(parts) + "</svg>")


def layers_markdown(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """A picture per import-linter contract: a layer imports only the layers below it."""
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    out = []
    for c in contracts:
        out.append(f"### Contract `{c['id']}`\n\n{c['name']}.\n")
        if c["type"] == "layers":
            for container in c.get("containers", [None]):
                boxes = [_wrap([f"{container}.{m.strip()}" if container else m.strip() for m in layer.split("|")])
                         for layer in c["layers"]]
                out += [_svg(boxes, arrows=True), "",
                        "An arrow means *may import* (and so may everything above it); the modules of one box "
                        "(·) must not import each other.", ""]
        elif c["type"] == "independence":
            out += [_svg([[m] for m in c["modules"]], arrows=False), "",
                    "Independent: none of these imports another, directly or not.", ""]
        else:
            raise ValueError(f"pyproject.toml: contract {c['id']!r} has type {c['type']!r}, "
                             "which docs/_hooks/kit_docs.py cannot draw")
    return "\n".join(out)


def executed_copy(name: str, reports: Path = ROOT / "reports",
                  committed: Path = ROOT / "notebooks" / "executed") -> Path | None:
    """The newest ``reports/*/NAME.ipynb`` (a local ``kit report`` run), else the committed run
    ``notebooks/executed/NAME.ipynb`` (scripts/render_notebooks.py), else None."""
    copies = sorted(reports.glob(f"*/{name}.ipynb"), key=lambda p: p.stat().st_mtime)
    if copies:
        return copies[-1]
    return committed / f"{name}.ipynb" if (committed / f"{name}.ipynb").exists() else None


def notebook_sources() -> dict[str, Path]:
    """notebook name -> the file its page renders."""
    return {nb.stem: executed_copy(nb.stem) or nb for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))}


def _environment(report: Path) -> str:
    """The environment record ``kit report`` left beside the notebook (NAME/environment.json), in a line."""
    record = report.with_suffix("") / "environment.json"
    if not record.exists():
        return ""
    env = json.loads(record.read_text())
    fields = [("measured", env.get("date")), ("host", env.get("host")), ("", env.get("os")),
              ("kernel", env.get("kernel")), ("", f"{env.get('cpu_count', '?')} × {env.get('cpu_model', '?')}"),
              ("cgroups", env.get("cgroup")), ("VM accelerator", env.get("vm_accel")),
              ("kit at", str(env.get("git_commit", ""))[:10])]
    return "; ".join(f"{k} {v}".strip() for k, v in fields if v)


def sources_markdown() -> str:
    rows = ["| notebook | rendered from |", "|---|---|"]
    for name, path in notebook_sources().items():
        if path.parent.name == "notebooks":
            where = "the committed notebook, **not executed** here: `kit report " + name + "` then `make docs` renders its outputs"
        else:
            env = _environment(path)
            where = f"`{path.relative_to(ROOT)}` (a `kit report` run{': ' + env if env else ''})"
        rows.append(f"| [{name}]({name}.ipynb) | {where} |")
    return "\n".join(rows)


GENERATED = {"METRICS": metrics_markdown, "LAYERS": layers_markdown, "NOTEBOOK-SOURCES": sources_markdown}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(m: re.Match) -> str:
        if m[1] not in GENERATED:
            raise ValueError(f"{page.file.src_path}: unknown generated part {m[1]!r} (known: {sorted(GENERATED)})")
        return GENERATED[m[1]]()
    return MARKER.sub(replace, markdown)


def on_config(config):
    """The nav's Notebooks section: its index, then every notebook of notebooks/, in order."""
    section = next(item for item in config["nav"] if isinstance(item, dict) and "Notebooks" in item)
    section["Notebooks"] = [p for p in section["Notebooks"] if isinstance(p, str) and p.endswith(".md")] + [
        {_title(name): f"notebooks/{name}.ipynb"} for name in notebook_sources()]
    return config


def _title(name: str) -> str:
    """'02-containers-vs-vms' -> '02 Containers vs VMs'."""
    words = " ".join({"vms": "VMs", "vm": "VM"}.get(w, w) for w in name.split("-")[1:])
    return f"{name[:2]} {words[:1].upper()}{words[1:]}"


#: Sphinx roles the docstrings use (``:class:`~kit.x.Y```); rendered as Markdown they would show as text.
ROLE = re.compile(r":(?:class|func|data|mod|meth|attr|exc|obj|py:\w+):(<code>)~?")


def on_page_content(html_text: str, page, config, files) -> str:
    return ROLE.sub(r"\1", html_text)


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    for name, path in notebook_sources().items():
        f = File(f"notebooks/{name}.ipynb", str(ROOT), config["site_dir"], config["use_directory_urls"])
        f.abs_src_path = str(path)
        files.append(f)
    return files
