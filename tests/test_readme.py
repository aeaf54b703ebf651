"""README.md works as written: every ```python block runs, in order, in one real IPython shell, and
its table of metric definitions is the one the code saves with the data.

Smaller parameters: a block preceded by ``<!-- test: key=value, ... -->`` runs with those keyword
arguments in place of the ones it shows (each must appear in the block, so the comment cannot go
stale). Nothing else of a block is changed.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kit.bench.metrics import METRICS

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(?:<!--\s*test:\s*(?P<params>.*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.S | re.M)

#: Runs the cells in a fresh interpreter (a plain ``import kit``, its own session, so ``%container
#: prune`` touches nothing of the test run) and fails on the first error; then checks that the
#: README left nothing running.
RUNNER = r"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell

ip = InteractiveShell.instance()
for i, cell in enumerate(json.load(sys.stdin), 1):
    print(f"--- README python block {i} ---", flush=True)
    result = ip.run_cell(cell, store_history=True)
    if not result.success:
        print(f"README python block {i} failed", flush=True)
        result.raise_error()
import kit
kit.api.wait_for_teardown()  # foreground runs are removed in the background once their result is complete
left = kit.ps()
assert left.empty, f"the README's blocks left instances behind: {list(left['name'])}"
print("README OK", flush=True)
"""


def blocks(text: str) -> list[str]:
    """The ```python blocks of ``text``, in order, each with its ``<!-- test: ... -->`` parameters applied."""
    return [substitute(m["code"], m["params"]) if m["params"] else m["code"] for m in BLOCK.finditer(text)]


def substitute(code: str, params: str) -> str:
    """``code`` with the keyword arguments named in ``params`` (``k=v, ...``) given those values."""
    call = f"f({params})"
    wanted = {k.arg: ast.get_source_segment(call, k.value) for k in ast.parse(call, mode="eval").body.keywords}
    # AST offsets count UTF-8 bytes: edit the bytes, from the end so earlier offsets stay valid.
    raw = code.encode()
    starts = [0]
    for line in raw.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    edits = [(starts[kw.value.lineno - 1] + kw.value.col_offset,
              starts[kw.value.end_lineno - 1] + kw.value.end_col_offset, kw.arg)
             for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)
             for kw in node.keywords if kw.arg in wanted]
    missing = set(wanted) - {arg for _, _, arg in edits}
    assert not missing, f"<!-- test: {params} --> names {sorted(missing)}, which the block after it does not pass"
    for start, end, arg in sorted(edits, reverse=True):
        raw = raw[:start] + wanted[arg].encode() + raw[end:]
    return raw.decode()


def test_substitute_changes_only_the_named_arguments():
    code = 'x = f(a=1, b="é", c=[1, 2])  # ünïcode before nothing\ng(c=3)\n'
    assert substitute(code, 'c="x", b=2') == 'x = f(a=1, b=2, c="x")  # ünïcode before nothing\ng(c="x")\n'
    with pytest.raises(AssertionError, match="does not pass"):
        substitute(code, "d=1")


def test_readme_defines_every_metric_as_the_code_does():
    """The README's definitions table and kit.bench.METRICS: the same metrics, units and words.

    Regenerate the table with ``python -c "from kit.bench import metrics; print(metrics.markdown())"``.
    """
    rows = {}
    lines = README.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if re.fullmatch(r"\|\s*metric\s*\|\s*unit\s*\|\s*definition\s*\|", line))
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        name, unit, definition = (c.strip() for c in line.strip().strip("|").split("|"))
        rows[name.strip("`")] = (unit, definition)
    assert list(rows) == list(METRICS)
    assert rows == METRICS
    # the choice about monitor processes is stated where the numbers are defined
    assert "monitor_pss" in rows and "not included in pss" in rows["monitor_pss"][1]


def test_readme_blocks_have_what_the_test_relies_on():
    cells = blocks(README.read_text())
    assert len(cells) >= 6
    assert cells[0].lstrip().startswith("%load_ext kit")  # the magics are loaded before they are used
    bench = next(c for c in cells if "kit.bench.Study(" in c)
    assert 'runtimes="process,runc"' in bench and "repeat=2" in bench  # the test's smaller study
    # a magic takes the rest of its line, '#' included: `%process run echo hi  # note` would echo the note
    commented = [line for c in cells for line in c.splitlines() if line.startswith("%") and " #" in line]
    assert not commented, commented


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path):
    """In order, in one IPython shell, as a reader would paste them (VMs boot: marked slow)."""
    cells = blocks(README.read_text())
    r = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(cells), capture_output=True, text=True,
                       cwd=tmp_path, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "README OK" in r.stdout, out[-6000:]
    assert out.count("--- README python block") == len(cells)
    assert (tmp_path / "out" / "results.csv").exists()  # the study block saved where it said
