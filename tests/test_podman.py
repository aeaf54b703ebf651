"""Podman: reported unavailable here with the exact reason; its command line is built right."""

from __future__ import annotations

import pytest

import kit
from kit.errors import RuntimeUnavailable
from kit.runtimes import base
from kit.spec import RunSpec
from tests.conftest import unique


@pytest.fixture(scope="module")
def rt():
    return kit.runtimes.get("podman")


def test_unavailable_here_with_the_reason_or_really_runs(rt, names):
    a = rt.availability(refresh=True)
    if a.available:  # a host where podman works: prove it
        names.append(unique("pm"))
        r = kit.run("busybox", ["sh", "-c", "echo hello; exit 3"], runtime="podman", name=names[-1])
        assert (r.stdout, r.exit_code) == ("hello\n", 3)
        return
    # This machine kind: `make setup` installs podman, and the kernel's limits refuse it.
    assert base.which("podman") is not None, "podman is not installed: `make setup` installs it"
    assert "setrlimit" in a.reason and "RLIMIT_NOFILE" in a.reason and "Operation not permitted" in a.reason
    row = kit.runtimes.available().set_index("name").loc["podman"]
    assert not row["available"] and row["reason"] == a.reason
    with pytest.raises(RuntimeUnavailable, match="runtime 'podman' is not available here: podman"):
        kit.run("busybox", ["echo", "hello"], runtime="podman")


def test_command_line_is_loopback_only_and_limited(rt, monkeypatch, tmp_path):
    # A fake launcher: only the argv is under test here, podman cannot run on this machine kind.
    import importlib

    mod = importlib.import_module("kit.runtimes.podman")
    seen = {}
    monkeypatch.setattr(mod.PodmanRuntime, "_ensure", lambda self, image: "kit/busybox:0123456789ab")
    monkeypatch.setattr(mod, "Pumped", lambda argv, *a, **k: seen.setdefault("argv", argv))
    spec = RunSpec(image="busybox", command=["sh", "-c", "echo $X; exit 3"], name="pm", memory=32 * 2**20,
                   cpus=1.5, env={"X": "a b"}, ports=[(18080, 80)], workdir="/tmp", hostname="inside")
    inst = base.InstanceState(name="pm", runtime="podman", spec=spec, image=kit.images.get("busybox"), id="kit-s-pm",
                         state_dir=tmp_path, ctx=base.Context("s", "t", tmp_path))
    rt.start(inst)
    argv = seen["argv"]
    assert argv[:4] == ["podman", "run", "--name", "kit-s-pm"]
    assert argv[-4:] == ["kit/busybox:0123456789ab", "sh", "-c", "echo $X; exit 3"]
    pairs = list(zip(argv, argv[1:]))
    assert ("-p", "127.0.0.1:18080:80") in pairs and "--network" not in argv
    assert ("--memory", str(32 * 2**20)) in pairs and ("--memory-swap", str(32 * 2**20)) in pairs
    assert ("--cpus", "1.5") in pairs and ("-e", "X=a b") in pairs and ("-w", "/tmp") in pairs
    assert ("--hostname", "inside") in pairs and ("--label", "kit.name=pm") in pairs


def test_sweep_of_a_session_without_containers_is_empty(rt):
    assert rt.sweep("no-such-session-0", dry_run=True) == []
