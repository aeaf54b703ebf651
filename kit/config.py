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
    return Path(os.environ.get("KIT_HOME") or Path.home() / ".cache" / "kit")


def state_dir() -> Path:
    """Per-session instance state: ``$KIT_HOME/run/<session>``."""
    d = home() / "run" / SESSION_ID
    d.mkdir(parents=True, exist_ok=True)
    return d
