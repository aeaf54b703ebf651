"""An image's own ``ENV PATH`` finds its programs, on every runtime, as ``docker run`` does (issue 20).

Real images put their tools on their own PATH (Go's /usr/local/go/bin, Java's, Node's): a bare
command name must be checked against, and run with, the image's PATH; a user's ``-e PATH=...``
still wins over it.
"""

from __future__ import annotations

import pytest

import kit
from kit.errors import CommandNotFound
from kit.images import store
from tests.conftest import need, unique

TOOL_PATH = "/opt/tool/bin:/bin:/usr/bin"
DOCKERFILE = f"""\
FROM busybox
RUN mkdir -p /opt/tool/bin && printf '#!/bin/sh\\necho "mytool ran: $*"\\n' > /opt/tool/bin/mytool \\
    && chmod 755 /opt/tool/bin/mytool
ENV PATH={TOOL_PATH}
"""
RUNTIMES = ["runc", "crun", "runsc", "lxc", "docker", "podman", pytest.param("qemu", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def tool_image(tmp_path_factory):
    need("docker")  # the Dockerfile is built by the local daemon's builder
    ctx = tmp_path_factory.mktemp("tool")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    tag = f"kit-test/tool:{unique('p')}"
    img = kit.images.build(ctx, tag=tag, stream=lambda line: None)
    assert img.config["env"]["PATH"] == TOOL_PATH
    yield tag
    if store.exists(tag):
        store.remove(tag)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_bare_name_runs_from_the_images_own_path(tool_image, runtime):
    need(runtime)
    r = kit.run(tool_image, ["mytool", "a b"], runtime=runtime, timeout=120)
    assert (r.exit_code, r.stdout) == (0, "mytool ran: a b\n"), r.stderr
    # The command runs with the image's PATH too, not only the kit's check.
    assert kit.run(tool_image, ["sh", "-c", "echo $PATH"], runtime=runtime, timeout=120).stdout == TOOL_PATH + "\n"


@pytest.mark.parametrize("runtime", ["runc", "lxc", "docker"])
def test_the_users_path_wins_over_the_images(tool_image, runtime):
    need(runtime)
    r = kit.run(tool_image, ["sh", "-c", "echo $PATH"], runtime=runtime, env={"PATH": "/bin"})
    assert r.stdout == "/bin\n"
    with pytest.raises(CommandNotFound, match=r"'mytool' not found in image .*searched '/bin'"):
        kit.run(tool_image, ["mytool"], runtime=runtime, env={"PATH": "/bin"})


def test_an_image_without_path_keeps_the_default():
    need("runc")
    r = kit.run("busybox", ["sh", "-c", "echo $PATH"], runtime="runc")
    assert r.stdout == kit.spec.DEFAULT_PATH + "\n"


@pytest.mark.parametrize("runtime", ["runc", "runsc", "lxc", "docker", pytest.param("qemu", marks=pytest.mark.slow)])
def test_exec_finds_the_images_tools_too(tool_image, runtime, names):
    need(runtime)
    name = unique("tool")
    names.append(name)
    kit.start(tool_image, ["sleep", "300"], runtime=runtime, name=name)
    r = kit.exec_(name, ["mytool", "in"], timeout=120)
    assert (r.exit_code, r.stdout) == (0, "mytool ran: in\n"), r.stderr
