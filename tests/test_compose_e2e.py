"""A compose file as found in the wild, end to end (issue 22): ``build:`` FROM a kit image, a secret
the database reads, ``restart: on-failure`` after a crash the test causes, a variable from the
project's ``.env``, two networks; on runc, on Docker, and with the database in a VM. Data is kept
across down/up; down leaves nothing."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

import kit
import kit.compose as compose
from tests.conftest import need, unique

STACK = Path(__file__).parent / "data" / "compose-e2e" / "compose.yml"
SECRET = (STACK.parent / "secrets" / "db_password.txt").read_text()


def _count(port: int, timeout: float) -> int:
    """The counter the app keeps in the database, once it answers (``visits`` comes from .env)."""
    def answer():
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/cgi-bin/count", timeout=10).read().decode()
        return body.startswith("visits=") and body.strip() != "visits=" and body
    return int(kit.wait_until(answer, timeout, interval=0.2, what="the app's count", ignoring=(OSError,))
               .strip().split("=")[1])


def _left(project: str) -> list[str]:
    return [n for n in kit.ps().name if n.startswith(project)] + \
           [n for n in kit.networks.names() if n.startswith(project)]


@pytest.mark.parametrize("runtime, runtimes", [("runc", None), ("docker", None), ("runc", {"db": "qemu"})],
                         ids=["runc", "docker", "db-in-vm"])
def test_stack_up_restart_down_up(runtime, runtimes):
    need(runtime)
    for rt in (runtimes or {}).values():
        need(rt)
    slow = 600 if runtimes else 120
    project, port = unique("e2e"), kit.free_port()
    env = {"APP_PORT": str(port)}
    stack = compose.up(STACK, runtime=runtime, runtimes=runtimes, project=project, environ=env, timeout=slow)
    try:
        first = _count(port, slow)                        # build, .env, the secret on both sides
        assert first >= 1 and stack.units[f"{project}-app-1"].image.startswith("compose-app:")
        probe, app = f"{project}-probe-1", f"{project}-app-1"
        reach = kit.exec(probe, ["sh", "-c", "wget -q -O- http://app:8080/index.html; "
                                             "nc -w 2 db 6379 </dev/null; echo db=$?"]).stdout
        assert reach.startswith("hello") and "db=1" in reach   # frontnet reaches app, never db (backnet)
        ro = kit.exec(app, ["sh", "-c", "cat /run/secrets/password; echo x > /run/secrets/password; echo rc=$?"])
        assert ro.stdout.startswith(SECRET) and "rc=0" not in ro.stdout   # mounted, read-only
        kit.exec(app, ["touch", "/tmp/crash"])            # the app exits 3: restart: on-failure
        kit.wait_until(lambda: compose.ps(project).set_index("service").loc["app", "restarts"] == 1, 60,
                       what="the app's restart")
        assert _count(port, slow) > first                 # the new instance serves, the data is the same
        logs = compose.logs(project)
        assert "app | app: crashing on purpose" in logs and "restart 1 (on-failure)" in logs
        assert SECRET not in logs
    finally:
        compose.down(project)
    assert _left(project) == [] and f"{project}_dbdata" in kit.volumes.names()
    compose.up(STACK, runtime=runtime, runtimes=runtimes, project=project, environ=env, timeout=slow)
    try:
        assert _count(port, slow) > first + 1             # the volume kept the count across down/up
    finally:
        compose.down(project, volumes=True)
    assert _left(project) == [] and f"{project}_dbdata" not in kit.volumes.names()
