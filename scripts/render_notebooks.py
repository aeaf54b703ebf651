"""Run the notebooks for the docs site: each with its quick parameters (notebooks/quick-parameters.yml,
what make test runs them with) through ``kit report``, keeping the executed copy and its environment
record in notebooks/executed/, which the docs site renders (docs/_hooks/kit_docs.py).

    .venv/bin/python scripts/render_notebooks.py [NAME...]    # all notebooks when none is named

The full report (HTML, figures, raw data) stays in reports/<date>-<host>/ as ``kit report`` leaves it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from kit import report

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = NOTEBOOKS / "executed"


def render(name: str, parameters: dict) -> Path:
    """Execute notebook ``name``; copy the executed notebook, with no path of this machine in it, and
    its environment record to EXECUTED."""
    import nbformat

    out = report.make_report(NOTEBOOKS / f"{name}.ipynb", parameters, out_root=ROOT / "reports")
    (EXECUTED / name).mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
    nbformat.write(report.redact_notebook(nb, report.machine_paths(out)), EXECUTED / f"{name}.ipynb")
    shutil.copy2(out / name / "environment.json", EXECUTED / name / "environment.json")
    return EXECUTED / f"{name}.ipynb"


def main(argv: list[str]) -> int:
    quick = yaml.safe_load((NOTEBOOKS / "quick-parameters.yml").read_text())
    unknown = sorted(set(argv) - set(quick))
    if unknown:
        print(f"render_notebooks: no notebook {', '.join(unknown)} (known: {', '.join(quick)})", file=sys.stderr)
        return 2
    for name in argv or quick:
        print(f"{name}: {render(name, quick[name]).relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
