"""The public API is what kit.__all__ says (as httpx keeps its list honest)."""

import subprocess
import sys
import types

import kit


def test_all_exported_members_exist():
    for name in kit.__all__:
        assert hasattr(kit, name), name


def test_public_names_are_listed():
    """Every public non-module attribute is exported; modules not in __all__ are the implementation."""
    public = {n for n in dir(kit) if not n.startswith("_")}
    unlisted = {n for n in public - set(kit.__all__) if not isinstance(getattr(kit, n), types.ModuleType)}
    # the __future__ import, and kit.exec under the name a `from kit import` can also use
    assert unlisted == {"annotations", "exec_"}
    assert kit.exec is kit.exec_


def test_documented_calls_work_after_a_plain_import():
    """``import kit`` stays light, yet ``kit.bench.Study`` and ``kit.verify(...)`` work as the README says.

    In a fresh interpreter, so no other test's imports can make the lazy attributes exist already.
    """
    code = (
        "import sys, kit\n"
        "heavy = [m for m in ('kit.bench', 'kit.verify', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert kit.bench.Study(runtimes='process', repeat=1, progress=False).repeat == 1\n"
        "assert callable(kit.verify), type(kit.verify)\n"
        "assert callable(kit.verify.matrix)\n"
        "assert {'bench', 'verify'} <= set(dir(kit))\n"
        "try:\n"
        "    kit.nonexistent\n"
        "except AttributeError as e:\n"
        "    assert 'nonexistent' in str(e)\n"
        "else:\n"
        "    raise SystemExit('kit.nonexistent did not raise')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
