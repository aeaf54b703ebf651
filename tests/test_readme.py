"""README.md and the documentation site work as written: every ```python block of the README and of
the docs pages (in the site's nav order, README first) runs, in order, in one real IPython shell.
The metric definitions are generated into the docs from kit.bench.METRICS (tests/test_docs.py checks
the built page).

Smaller parameters: a block preceded by ``<!-- test: key=value, ... -->`` runs with those keyword
arguments in place of the ones it shows (each must appear in the block, so the comment cannot go
stale). Nothing else of a block is changed. A block that needs what this shell cannot give (a full
filesystem, a guest of its own) is preceded by ``<!-- test: runs in tests/test_X.py::test_y -->``
instead: it is left out here, and the named test must exist (so the case is run for real there).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!--\s*test:\s*(?P<params>.*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.S | re.M)

#: Runs the cells in a fresh interpreter (a plain ``import kit``, its own session, so ``%container
#: prune`` touches nothing of the test run) and fails on the first error; then checks that the
#: README left nothing running.
RUNNER = r"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell

ip = InteractiveShell.instance()
for i, cell in enumerate(json.load(sys.stdin), 1):
    print(f"--- python block {i} ---", flush=True)
    result = ip.run_cell(cell, store_history=True)
    if not result.success:
        print(f"python block {i} failed", flush=True)
        result.raise_error()
import kit
kit.api.wait_for_teardown()  # foreground runs are removed in the background once their result is complete
left = kit.ps()
assert left.empty, f"the documented blocks left instances behind: {list(left['name'])}"
print("DOCS OK", flush=True)
"""


RUNS_ELSEWHERE = re.compile(r"runs in (tests/test_\w+\.py)::(test_\w+)")


def blocks(text: str) -> list[str]:
    """The ```python blocks of ``text``, in order, each with its ``<!-- test: ... -->`` parameters applied;
    those that run in another test (``<!-- test: runs in tests/test_X.py::test_y -->``) left out."""
    return [substitute(m["code"], m["params"]) if m["params"] else m["code"] for m in BLOCK.finditer(text)
            if not (m["params"] and RUNS_ELSEWHERE.match(m["params"]))]


def test_a_block_run_elsewhere_names_a_test_that_exists():
    named = [RUNS_ELSEWHERE.match(m["params"]) for page in pages() for m in BLOCK.finditer(page.read_text())
             if m["params"] and m["params"].startswith("runs in")]
    assert all(named), "write <!-- test: runs in tests/test_X.py::test_y -->"
    for m in named:
        assert re.search(rf"^def {m[2]}\(", (ROOT / m[1]).read_text(), re.M), f"{m[1]} has no {m[2]}"


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


class _NavLoader(yaml.SafeLoader):
    """mkdocs.yml's ``!!python/name:`` tags (a fence formatter) mean nothing here."""


_NavLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: None)


def pages() -> list[Path]:
    """README.md, then every Markdown page of mkdocs.yml's nav, in the nav's order."""
    def walk(items):
        for item in items:
            value = item if isinstance(item, str) else next(iter(item.values()))
            if isinstance(value, list):
                yield from walk(value)
            elif value.endswith(".md"):
                yield ROOT / "docs" / value
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_NavLoader)["nav"]
    return [README, *walk(nav)]


def documented_blocks() -> list[str]:
    return [cell for page in pages() for cell in blocks(page.read_text())]


def test_every_page_of_the_nav_is_read():
    read = pages()
    assert read[0] == README and all(p.exists() for p in read), [str(p) for p in read if not p.exists()]
    assert ROOT / "docs" / "guides" / "measuring.md" in read
    on_disk = {p for p in (ROOT / "docs").rglob("*.md") if "_hooks" not in p.parts}
    assert on_disk <= set(read), f"pages outside the nav (their blocks would not run): {sorted(map(str, on_disk - set(read)))}"


def test_blocks_have_what_the_test_relies_on():
    cells = documented_blocks()
    assert len(cells) >= 12
    assert cells[0].lstrip().startswith("%load_ext kit")  # the magics are loaded before they are used
    bench = next(c for c in cells if 'study.save("out/")' in c)
    assert 'runtimes="process,runc"' in bench and "repeat=2" in bench  # the test's smaller study
    # a magic takes the rest of its line, '#' included: `%process run echo hi  # note` would echo the note
    commented = [line for c in cells for line in c.splitlines() if line.startswith("%") and " #" in line]
    assert not commented, commented


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the whole manual: studies, VM boots (two kernels), compose, load; minutes
def test_every_python_block_of_the_docs_runs(tmp_path):
    """In order, in one IPython shell, as a reader would paste them (VMs boot: marked slow)."""
    cells = documented_blocks()
    r = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(cells), capture_output=True, text=True,
                       cwd=tmp_path, timeout=2100)
    out = r.stdout + r.stderr
    failed = re.findall(r"^python block \d+ failed$", r.stdout, re.M)  # which block, before the progress bars
    assert r.returncode == 0 and "DOCS OK" in r.stdout, f"{failed} of {len(cells)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert out.count("--- python block") == len(cells)
    assert (tmp_path / "out" / "results.csv").exists()  # the study block saved where it said
