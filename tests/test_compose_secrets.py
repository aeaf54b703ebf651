"""Secrets' and configs' long syntax ``mode``, ``uid`` and ``gid`` (Compose specification) on runc: the file
the service sees has them, the user's own file keeps its own, and a bad value is one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kit
import kit.compose as compose
from kit.errors import ComposeFileError
from tests.conftest import need, unique

STACK = """
services:
  a:
    image: busybox
    user: "1000:1001"
    # As the secret's owner: the token reads, the root-owned 0440 file does not (its mode is enforced).
    command: sh -c 'test "$$(cat /run/secrets/token)" = t0ken && echo token-reads; cat /run/secrets/filed.txt ||
      echo filed-denied; exec sleep 600'
    secrets:
      - {source: token, mode: 0400, uid: "1000", gid: 1001}
      - {source: filed, target: filed.txt, mode: "0440"}
      - plain
    configs:
      - {source: greeting, target: /etc/greeting, mode: 0600}
secrets:
  token: {environment: SECRET_TOKEN}
  filed: {file: ./filed.txt}
  plain: {environment: SECRET_TOKEN}
configs:
  greeting: {content: hello}
"""


def test_long_syntax_mode_uid_gid_are_what_the_service_sees(tmp_path):
    need("runc")
    assert os.geteuid() == 0, "uid/gid are honoured as root; this machine's suite runs as root"
    (tmp_path / "filed.txt").write_text("from a file")
    (tmp_path / "filed.txt").chmod(0o644)
    f = tmp_path / "compose.yml"
    f.write_text(STACK)
    project = unique("ks")
    stack = compose.up(f, runtime="runc", project=project, environ={"SECRET_TOKEN": "t0ken"})
    where = stack.secrets.dir
    try:
        paths = ["/run/secrets/token", "/run/secrets/filed.txt", "/run/secrets/plain", "/etc/greeting"]
        r = kit.exec(f"{project}-a-1", ["stat", "-c", "%a %u %g", *paths])
        assert r.stdout.split("\n")[:4] == ["400 1000 1001", "440 0 0", "444 0 0", "600 0 0"], r
        kit.wait_until(lambda: "filed-denied" in compose.logs(project), 10, what="the service's reads")
        assert "a | token-reads" in compose.logs(project) and "t0ken" not in compose.logs(project)
    finally:
        compose.down(project)
    assert oct((tmp_path / "filed.txt").stat().st_mode & 0o777) == "0o644"  # the user's file is not changed
    assert not Path(where).exists()  # the copies were in memory and are gone


@pytest.mark.parametrize("bad,said", [
    ("mode: rw", "secrets mode must be a whole number (octal, as 0440), not 'rw'"),
    ("mode: 0o777777", "secrets mode must be a whole number"),
    ("uid: -3", "secrets uid must be a whole number (as 1000), not -3"),
    ("gid: true", "secrets gid must be a whole number (as 1000), not True"),
])
def test_a_bad_mode_uid_or_gid_is_one_line(bad, said, tmp_path):
    (tmp_path / "filed.txt").write_text("x")
    f = tmp_path / "compose.yml"
    f.write_text(STACK.replace('mode: 0400, uid: "1000", gid: 1001', bad))
    with pytest.raises(ComposeFileError) as e:
        compose.read(f, project="t", environ={"SECRET_TOKEN": "x"})
    assert said in str(e.value) and "\n" not in str(e.value) and "compose.yml:9: key 'secrets' of service 'a'" in str(e.value)
