"""Shared fixtures: a real IPython shell with the kit loaded, and instance cleanup."""

from __future__ import annotations

import os

import pytest

import kit

#: Runtimes that must work on the project's machine kind (see shared/MACHINE.md).
#: Elsewhere set KIT_ALLOW_MISSING=1 to skip instead of fail when one is unavailable.
EXPECTED_HERE = ("process", "runc", "lxc", "runsc", "docker", "qemu")
CONTAINER_RUNTIMES = ("runc", "lxc", "runsc", "docker")


def need(runtime: str) -> None:
    """Fail (or skip, with KIT_ALLOW_MISSING=1) when ``runtime`` is unavailable here."""
    a = kit.runtimes.get(runtime).availability()
    if a.available:
        return
    msg = f"runtime {runtime} unavailable: {a.reason}"
    if os.environ.get("KIT_ALLOW_MISSING") or runtime not in EXPECTED_HERE:
        pytest.skip(msg)
    pytest.fail(msg)


@pytest.fixture(scope="session")
def ip():
    """A real IPython InteractiveShell with ``%load_ext kit`` done."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kit")
    yield shell


@pytest.fixture
def names():
    """Collects instance names a test creates; removes them afterwards, even on failure."""
    created: list[str] = []
    yield created
    for n in created:
        try:
            kit.rm(n, force=True)
        except kit.KitError:
            pass


def unique(prefix: str) -> str:
    import secrets

    return f"{prefix}-{secrets.token_hex(3)}"


def http_get(port: int, path: str = "/index.html") -> bytes | None:
    """GET http://127.0.0.1:PORT/PATH straight (never through a proxy); None until it answers."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
