"""Shared fixtures: a real IPython shell with the kit loaded, instance cleanup, and the runtimes
this machine kind must have.

Runtimes are never filtered by availability when a test module is imported: a test names the
runtimes it covers and calls :func:`need` inside the test, so a missing runtime is a failure
that says why, not a silently shorter list.
"""

from __future__ import annotations

import os

import pytest

import kit

#: The runtimes the project's machine kind has (see shared/MACHINE.md): process, LXC, runc,
#: gVisor, Docker and QEMU (under TCG). Each must work; a missing one fails the suite with its
#: reason. The only way to skip one is to name it: KIT_SKIP_RUNTIMES=qemu,runsc.
EXPECTED_HERE = ("process", "lxc", "runc", "runsc", "docker", "qemu")
#: The container runtimes among them.
CONTAINER_RUNTIMES = ("runc", "lxc", "runsc", "docker")
#: Known not to work on this machine kind (crun: cgroup hybrid mode; podman: RLIMIT_NOFILE);
#: their tests run where they work and otherwise check the reason they give.
NOT_EXPECTED_HERE = ("crun", "podman")


#: Tests run alone by make test after the parallel part (marked ``serial``; make test runs the rest on
#: two pytest-xdist workers): those that stop a daemon every other worker's tests use (dockerd); those
#: that turn on KSM, which allows one KSM study at a time on the host (kit.bench.ksm), including the
#: docs' blocks and notebook 09; those that compare CPU throughput with the bare process (another
#: worker's load is not noise a margin can absorb); those that check the whole image store or every
#: session's leftovers, where another worker's work in progress would look like a leak.
SERIAL = ("tests/test_faults.py", "tests/test_ksm.py", "tests/test_notebooks.py::test_notebook_runs[09",
          "tests/test_readme.py::test_every_python_block_of_the_docs_runs",
          "tests/test_load.py::test_cpu_in_a_container_runs_at_native_speed",
          "tests/test_images.py", "tests/test_lifetime.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)


def skipped_by_env() -> set[str]:
    return {r.strip() for r in os.environ.get("KIT_SKIP_RUNTIMES", "").split(",") if r.strip()}


def need(runtime: str) -> None:
    """Fail when an expected ``runtime`` is unavailable here (skip only if KIT_SKIP_RUNTIMES names it).

    A runtime not expected on this machine kind (crun, podman) is skipped with its reason.
    """
    if runtime in skipped_by_env():
        pytest.skip(f"runtime {runtime} skipped: KIT_SKIP_RUNTIMES names it")
    a = kit.runtimes.get(runtime).availability()
    if a.available:
        return
    msg = f"runtime {runtime} unavailable: {a.reason}"
    if runtime in EXPECTED_HERE:
        pytest.fail(f"{msg} (expected on this machine kind; set KIT_SKIP_RUNTIMES={runtime} to skip it)")
    pytest.skip(f"{msg} (not expected on this machine kind)")


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


def bench_script(name: str):
    """A script of benchmarks/ (``bench_storm``) loaded as a module, its main() not run; benchmarks/ is
    not a package, so it is on sys.path while the script loads, for the neighbours it imports."""
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(here))
    try:
        spec = importlib.util.spec_from_file_location(name, here / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(here))


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
