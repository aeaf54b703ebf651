"""kit.bench.overlay: an OCI container's overlay read from the host's mount table, and copy-up shown."""

from __future__ import annotations

import os

import pytest

import kit
from kit.bench import overlay

from conftest import need

LINE = ("412 30 0:77 / /r/kit-1/bundle/rootfs rw,relatime - overlay overlay rw,lowerdir=/img/root\\,fs,"
        "upperdir=/r/kit-1/overlay/upper,workdir=/r/kit-1/overlay/work")


def test_overlay_is_found_by_its_upper_layer_in_mountinfo():
    got = overlay.overlay_of("/r/kit-1", mountinfo="1 2 0:1 / / rw - ext4 /dev/vda rw\n" + LINE)
    assert got == {"merged": "/r/kit-1/bundle/rootfs", "lower": "/img/root,fs", "upper": "/r/kit-1/overlay/upper"}
    with pytest.raises(LookupError, match="no overlay"):
        overlay.overlay_of("/r/kit-2", mountinfo=LINE)


def test_a_file_touched_in_a_runc_container_is_copied_up_whole_and_the_image_is_unchanged():
    need("runc")
    img = kit.images.get("busybox")
    path, size = overlay.largest_file(img.rootfs)
    assert size == max(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(img.rootfs) for f in fs
                       if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
    with kit.start("busybox", ["sleep", "600"], runtime="runc") as h:
        up = overlay.copy_up(h, path)
        merged = h.exec(["stat", "-c", "%s", path]).stdout.strip()
    assert not up["copied_before"] and up["image_unchanged"]
    assert up["upper_bytes"] == up["image_bytes"] == size == int(merged)  # the whole file, as the container sees it
    assert up["upper_allocated"] >= size and up["lower"] == str(img.rootfs)


def test_docker_names_the_image_by_its_config_not_by_the_kits_content_id():
    need("docker")
    img = kit.images.get("busybox")
    kit.run("busybox", ["true"], runtime="docker", check=True)  # imported into Docker as kit/busybox:<short id>
    docker_id = overlay.docker_image_id(f"kit/{img.name}:{img.short_id}")
    assert docker_id.startswith("sha256:") and docker_id != img.id
    assert overlay.docker_image_id("kit/no-such-image:0") == ""
