"""Compose files on the kit: ``kit.compose.up("docker-compose.yml", runtime="runc")``.

:mod:`kit.compose.load` reads and checks the file (every key with its line);
:mod:`kit.compose.stack` starts it through the public API (order, health, all or nothing);
:mod:`kit.compose.measure` says what it costs and serves: first good response, bounded HTTP load,
memory, disk.
"""

from __future__ import annotations

from . import measure
from .load import Project, Service, load
from .stack import Stack, down, get, logs, packages_image, plan, ps, up

__all__ = ["measure", "load", "up", "down", "ps", "logs", "get", "plan", "packages_image", "Project", "Service", "Stack"]

from pathlib import Path as _Path

#: The example backend (Flask over Redis and MariaDB) that notebook 05 runs.
EXAMPLE = _Path(__file__).resolve().parent / "examples" / "backend" / "docker-compose.yml"
__all__.append("EXAMPLE")
