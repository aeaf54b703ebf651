"""kit._proc.which: the one way the kit finds a binary (runtimes, mkfs for VM disks, debootstrap)."""

from __future__ import annotations

import os

from kit._proc import which


def test_finds_sbin_tools_off_an_ordinary_users_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    found = which("mkfs.ext4")  # e2fsprogs: make setup installs it, in /usr/sbin (or /sbin)
    assert found is not None and os.path.dirname(found) in ("/usr/sbin", "/sbin")


def test_the_first_name_found_wins_and_none_when_none_is(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert which("kit-no-such-binary", "true") in ("/usr/bin/true", "/bin/true")
    assert which("kit-no-such-binary") is None
