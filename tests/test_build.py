"""Dockerfile builds through the local daemon's builder, offline, into the kit's store."""

from __future__ import annotations

import pytest

import kit
from kit.errors import ImageError
from kit.images import engine, store
from tests.conftest import need, unique

APP = """\
FROM busybox
RUN mkdir /app && echo built > /app/what
ENV WHO=builder
WORKDIR /app
CMD ["sh", "-c", "echo $(cat what) by $WHO in $(pwd)"]
"""


@pytest.fixture(scope="module")
def docker_client():
    need("docker")
    with engine.connected() as client:
        yield client


@pytest.fixture(scope="module")
def app(tmp_path_factory, docker_client):
    ctx = tmp_path_factory.mktemp("app")
    (ctx / "Dockerfile.app").write_text(APP)
    lines: list[str] = []
    tag = f"kit-test/app:{unique('b')}"
    img = kit.images.build(ctx, tag=tag, dockerfile="Dockerfile.app", stream=lines.append)
    yield img, lines
    store.remove(tag)


def test_build_streams_its_log_and_stores_layers_and_config(app):
    img, lines = app
    assert any(line.startswith("Step 1/5 : FROM busybox") for line in lines)
    assert any("Successfully built" in line for line in lines)
    assert len(img.layers) == 2 and img.source.startswith("build:")
    assert img.config["cmd"][:2] == ["sh", "-c"] and img.config["env"]["WHO"] == "builder"
    assert (img.rootfs / "app/what").read_text() == "built\n"


@pytest.mark.parametrize("runtime", ["runc", "lxc", "runsc", "docker",
                                     pytest.param("qemu", marks=pytest.mark.slow)])
def test_every_runtime_runs_the_built_image_with_its_cmd(app, runtime):
    need(runtime)
    r = kit.run(app[0].name, None, runtime=runtime, check=True, timeout=120)
    assert r.stdout.strip() == "built by builder in /app"


def test_a_failing_run_step_is_one_line_with_the_step_and_last_lines(tmp_path, docker_client):
    marker = unique("marker")
    (tmp_path / "Dockerfile").write_text(f"FROM busybox\nRUN echo {marker}-said && exit 3\nRUN true\n")
    tag = f"kit-test/fails:{unique('b')}"
    with pytest.raises(ImageError) as e:
        kit.images.build(tmp_path, tag=tag, stream=lambda line: None)
    msg = str(e.value)
    assert "\n" not in msg and "failed at Step 2/3 : RUN echo" in msg
    assert f"{marker}-said" in msg and "returned a non-zero code: 3" in msg
    assert not store.exists(tag)
    # forcerm: the failed step's container is gone too
    left = [c for c in docker_client.api.containers(all=True) if marker in (c.get("Command") or "")]
    assert left == []


def test_magic_build_streams_into_the_cell(tmp_path, ip, capsys, docker_client):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo hi > /hi\n")
    tag = f"kit-test/magic:{unique('b')}"
    try:
        img = ip.run_line_magic("container", f"build -t {tag} {tmp_path}")
        assert "Step 2/2 : RUN echo hi > /hi" in capsys.readouterr().out
        assert (img.rootfs / "hi").read_text() == "hi\n" and store.exists(tag)
    finally:
        if store.exists(tag):
            store.remove(tag)


def test_bad_context_or_dockerfile_says_so(tmp_path):
    with pytest.raises(ImageError, match="is not a directory"):
        kit.images.build(tmp_path / "nope", tag="x:1")
    with pytest.raises(ImageError, match="no Dockerfile at"):
        kit.images.build(tmp_path, tag="x:1")
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    with pytest.raises(ImageError, match="is not an image reference"):
        kit.images.build(tmp_path, tag="Bad Tag")


def test_a_metadata_only_build_keeps_its_own_cmd_beside_the_same_bytes(tmp_path, docker_client):
    (tmp_path / "Dockerfile").write_text('FROM busybox\nENV WHO=me\nCMD ["sh", "-c", "echo hello from $WHO"]\n')
    tag = f"kit-test/same-bytes:{unique('b')}"
    try:
        img = kit.images.build(tmp_path, tag=tag, stream=lambda line: None)
        busybox = kit.images.get("busybox")
        assert img.id == busybox.id  # the same tree...
        assert kit.run(tag, None, runtime="runc", check=True).stdout == "hello from me\n"  # ...its own CMD
        assert busybox.config["cmd"] == ["sh"] and img.source.startswith("build:")
    finally:
        if store.exists(tag):
            store.remove(tag)
