"""Where the kit keeps things, and the id of this session."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: Identifies this Python process's instances (labels, names, state dirs), so
#: that a reaper or a later sweep can find what a dead session left behind.
SESSION_ID = secrets.token_hex(4)


def home() -> Path:
    """``$KIT_HOME``, default ``~/.cache/kit``: images, kernels, caches."""
    return _home()[1]


def home_str() -> str:
    """:func:`home` as a string, for ``os.path`` joins on a start's path (pathlib's objects cost more
    CPU than the system calls they name, issue 24)."""
    return _home()[0]


def _home() -> tuple[str, Path]:
    # Worked out again only when $KIT_HOME or $HOME changes (a test's monkeypatch, a notebook's os.environ).
    global _home_seen
    key = (os.environ.get("KIT_HOME"), os.environ.get("HOME"))
    seen = _home_seen
    if seen is None or seen[0] != key:
        path = Path(key[0] or Path.home() / ".cache" / "kit")
        seen = _home_seen = (key, (str(path), path))
    return seen[1]


_home_seen: tuple | None = None


def state_dir() -> Path:
    """Per-session instance state: ``$KIT_HOME/run/<session>``."""
    d = home() / "run" / SESSION_ID
    d.mkdir(parents=True, exist_ok=True)
    return d
