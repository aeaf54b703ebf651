"""The house stays easy to see (issue 21): short functions, and no module reaching into another's
private names. The layers themselves are import-linter's contracts (pyproject.toml, `lint-imports`
in make test)."""

from __future__ import annotations

import ast
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent / "kit"
MAX_FUNCTION_LINES = 80


def _modules():
    for path in sorted(KIT.rglob("*.py")):
        parts = list(path.relative_to(KIT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts), ast.parse(path.read_text(), str(path))


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _source(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _may_use(module: str, target: str) -> bool:
    """A private module (``kit._proc``, ``kit.runtimes._rootfs``) belongs to the package it is in:
    any module inside that package may use it, none outside."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part) and not module.startswith(".".join(parts[:i]) + "."):
            return False
    return True


def private_uses(path: Path, module: str, tree: ast.Module) -> list[str]:
    """Private names of other kit modules this module uses: ``from kit.x import _y`` and
    ``x._y`` on an imported kit module. A package's private module (``runtimes/_rootfs.py``) may be
    used by the modules of its own package, and by no one else."""
    package, found, aliases = _package(module, path), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _source(node, package)
            if not src.startswith("kit"):
                continue
            for a in node.names:
                full = f"{src}.{a.name}"
                aliases[a.asname or a.name] = full
                inside = full.rpartition(".")[0] == package  # a sibling module of this package
                if _private(a.name) and src != module and not inside:
                    found.append(f"{path.name}:{node.lineno} from {src} import {a.name}")
                elif not _may_use(module, src):
                    found.append(f"{path.name}:{node.lineno} from {src} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None and target != module:
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_function_is_over_80_lines():
    long = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for path, module, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these functions: " + "; ".join(long)


def test_no_module_uses_another_modules_private_names():
    found = [use for path, module, tree in _modules() for use in private_uses(path, module, tree)]
    assert not found, "make these public (with a docstring) or keep them inside their module: " + "; ".join(found)


def test_the_private_name_check_can_fail(tmp_path):
    bad = tmp_path / "bench" / "x.py"
    bad.parent.mkdir()
    bad.write_text("from ..runtimes import _rootfs\nfrom ..runtimes._rootfs import step\n"
                   "from ..runtimes.base import _read\nfrom .. import api\napi._x\nfrom .._proc import run\n")
    tree = ast.parse(bad.read_text())
    uses = private_uses(KIT / "bench" / "x.py", "kit.bench.x", tree)
    assert len(uses) == 4, uses  # all but kit._proc, which is the whole kit's
