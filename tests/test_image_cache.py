"""kit.images.store.get keeps the name index it parsed while names.json is the same file (issue 24: a
run costs a stat, not a read and a parse), and sees every change made by this process or another: a
name stored again from other bytes (a re-pull), a name removed, a new store ($KIT_HOME)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kit.errors import ImageNotFound
from kit.images import store


def _tree(path, text):
    path.mkdir()
    (path / "f").write_text(text)
    return path


def _in_another_process(code: str, home) -> None:
    """Run ``code`` (with ``store`` imported) in a separate Python, on the store at ``home``."""
    subprocess.run([sys.executable, "-c", f"from kit.images import store\n{code}"], check=True, timeout=60,
                   env={"KIT_HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_an_unchanged_index_is_not_parsed_again(home, tmp_path, monkeypatch):
    store.add("cached", _tree(tmp_path / "a", "a"), "test", move=False)
    first = store.get("cached")
    parsed = []
    real = store.json.loads
    monkeypatch.setattr(store.json, "loads", lambda data, *a, **k: parsed.append(data) or real(data, *a, **k))
    again = store.get("cached")
    assert again.id == first.id and again is not first  # a copy: callers may set attributes on theirs
    assert parsed == []  # neither names.json nor the image's metadata was read again


def test_a_name_stored_again_by_another_process_is_seen(home, tmp_path):
    old = store.add("repulled", _tree(tmp_path / "a", "old bytes"), "test", move=False)
    assert store.get("repulled").id == old.id
    _tree(tmp_path / "b", "new bytes, another length")
    _in_another_process(f"store.add('repulled', {str(tmp_path / 'b')!r}, 'test', move=False)", home)
    new = store.get("repulled")
    assert new.id != old.id and (new.rootfs / "f").read_text() == "new bytes, another length"


def test_a_name_removed_by_another_process_is_gone(home, tmp_path):
    store.add("removed", _tree(tmp_path / "a", "x"), "test", move=False)
    assert store.exists("removed")
    _in_another_process("store.remove('removed')", home)
    assert not store.exists("removed")
    with pytest.raises(ImageNotFound):
        store.get("removed")


def test_a_change_of_kit_home_reads_that_store(home, tmp_path, monkeypatch):
    store.add("here", _tree(tmp_path / "a", "x"), "test", move=False)
    assert store.exists("here")
    monkeypatch.setenv("KIT_HOME", str(tmp_path / "elsewhere"))
    assert not store.exists("here")
