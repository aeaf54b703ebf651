"""Image ids from user input are checked before they touch the filesystem (issue 16)."""

import pytest

import kit
from kit.errors import ImageNotFound
from kit.images import store


@pytest.mark.parametrize("bad", ["sha256:../..", "sha256:../../etc", "sha256:" + "0" * 63, "sha256:" + "G" * 64,
                                 "sha256:" + "a" * 64 + "/.."])
def test_malformed_ids_are_refused(bad):
    with pytest.raises(ImageNotFound, match="is not valid: an id is 'sha256:' and 64 hex digits"):
        store.get(bad)


def test_a_real_id_still_finds_its_image():
    img = kit.images.get("busybox")
    assert store.get(img.id).rootfs == img.rootfs


def test_a_name_stored_again_with_another_config_is_read_anew(tmp_path):
    """One tree, two configs under one name (e.g. a rebuilt Dockerfile that only changed CMD):
    get() must not hand back the config it read the first time."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("same bytes")
    name = f"cache-probe-{tmp_path.name}"
    try:
        store.add(name, tree, "test", config_={"cmd": ["first"]}, move=False)
        assert store.get(name).config == {"cmd": ["first"]}
        store.add(name, tree, "test", config_={"cmd": ["second"]}, move=False)
        assert store.get(name).config == {"cmd": ["second"]}
    finally:
        store.remove(name)


def test_not_found_stays_one_short_line_however_full_the_store(tmp_path, monkeypatch):
    """Pulled images have long names (127.0.0.1:PORT/NAME:TAG): the message names a few, not all."""
    monkeypatch.setenv("KIT_HOME", str(tmp_path))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x")
    for port in range(30000, 30012):
        store.add(f"127.0.0.1:{port}/some/rather-long-image-name:1", tree, "test", move=False)
    with pytest.raises(ImageNotFound) as err:
        store.get("no-such-image-xyz")
    msg = str(err.value)
    assert len(msg) < 250 and "(13 in all)" in msg  # twelve and the built-in busybox and "\n" not in msg, msg
