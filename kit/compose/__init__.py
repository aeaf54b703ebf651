"""Compose files on the kit: ``kit.compose.up("docker-compose.yml", runtime="runc")``.

:func:`read` (:mod:`kit.compose.file`) reads and checks files (``.env``, merged files, ``extends``,
profiles: :mod:`kit.compose.source`), every key with its line; :func:`config` shows the resolved model;
:mod:`kit.compose.stack` starts it through a :class:`kit.Session` (order, health, all or nothing);
:mod:`kit.compose.measure` says what it costs and serves: first good response, bounded HTTP load,
memory, disk.
"""

from __future__ import annotations

from pathlib import Path

from . import measure
from .config import config, config_text
from .file import ComposeWarning, Project, Service, read
from .stack import Stack, down, get, logs, packages_image, plan, ps, up

#: The example backend (Flask over Redis and MariaDB) that notebook 05 runs.
EXAMPLE = Path(__file__).resolve().parent / "examples" / "backend" / "docker-compose.yml"

__all__ = ["measure", "read", "config", "config_text", "ComposeWarning", "up", "down", "ps", "logs", "get", "plan", "packages_image", "Project", "Service",
           "Stack", "EXAMPLE"]
