"""A published port is bound while its instance runs, and released when it stops.

What a Docker user expects: ``docker stop`` releases a container's published ports and ``docker
start`` binds them again. The kit has no restart, so a stopped instance's port would never serve
again; kept bound, it only refuses the port to a replacement and accepts clients with nothing
behind them. ``Runtime.unpublish`` closes the kit's forwarder into an instance (runc, runsc, LXC,
Docker, a VM on a kit network); the handle calls it at stop and wait, and wherever it finds the
instance exited (its status, so ``kit.ps``). A VM's own port (QEMU's user network) goes with QEMU.
Before the fix, runc, runsc, LXC and Docker kept the port until ``kit.rm``.
"""

from __future__ import annotations

import socket

import pytest

import kit
from kit._proc import wait_until
from tests.conftest import http_get, need, unique

HTTPD = "mkdir -p /www && echo served > /www/index.html && exec httpd -f -p 8080 -h /www"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT aside
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _serving(runtime: str, name: str, names: list, script: str = HTTPD) -> tuple[kit.Instance, int]:
    need(runtime)
    port = kit.free_port()
    names.append(name)
    web = kit.start("busybox", ["sh", "-c", script], runtime=runtime, name=name, ports=[f"{port}:8080"])
    assert wait_until(lambda: http_get(port), 180, interval=0.1, what="httpd through the published port") == b"served\n"
    assert not _bindable(port)  # bound while it runs
    return web, port


@pytest.mark.parametrize("runtime", ["runc", "runsc", "lxc", "docker", "qemu"])
def test_stop_releases_the_published_port(runtime, names):
    name = unique("stopport")
    _, port = _serving(runtime, name, names)
    kit.stop(name, timeout=5)
    assert not kit.ps().set_index("name").status[name].startswith("running")
    assert _bindable(port), f"127.0.0.1:{port} still bound after kit.stop of a {runtime} instance"
    kit.rm(name)
    names.remove(name)
    assert _bindable(port)


@pytest.mark.parametrize("runtime", ["runc", "docker"])
def test_an_instance_that_exits_by_itself_releases_its_port_once_seen(runtime, names):
    """The handle's wait, and ps finding it exited, release the port of an instance that ended on its own."""
    for seen_by in ("wait", "ps"):
        name = unique(f"exitport-{seen_by}")
        # httpd in the background; the instance ends when told to, by the file the exec below makes
        script = HTTPD.replace("exec httpd -f", "httpd") + " && while [ ! -e /www/stop ]; do sleep 0.1; done"
        web, port = _serving(runtime, name, names, script=script)
        web.exec(["touch", "/www/stop"], check=True)
        if seen_by == "wait":
            assert web.wait(timeout=60).exit_code == 0
        else:
            wait_until(lambda: kit.ps().set_index("name").status[name].startswith("exited"), 60,
                       what=f"{name} exited, as ps sees it")
        assert _bindable(port), f"127.0.0.1:{port} still bound once {seen_by} saw the {runtime} instance exit"
        web.rm()
        names.remove(name)
