"""The bad-input corpus (issue 6, part 4): whatever a user types, a result or a clear one-line error.

Every case runs against the real runtimes, through a real IPython shell (the
magics) and through the Python API. After every case the ``case`` fixture checks
that the error (if any) is one short line without a traceback, that ``kit.ps()``
lists none of the case's instances, and that ``kit.lifetime.leftovers()`` shows
nothing of them (no process, runtime state, mount, cgroup or directory).
Cases name every instance they may create, so leftovers are told apart from
other tests' instances by name; host processes, which carry no name, are told
apart by being new since the case began.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import kit
from kit import config, lifetime
from kit._proc import wait_until
from kit.errors import (CommandNotFound, ImageNotFound, InstanceNotFound, InvalidSpec, KitError, NameInUse,
                        RuntimeUnavailable, StartFailed)
from kit.result import RunResult
from tests.conftest import CONTAINER_RUNTIMES, http_get, need

RUNTIMES = ("process",) + CONTAINER_RUNTIMES
MAX_MESSAGE = 300
PY = sys.executable
REPO = Path(__file__).resolve().parent.parent


# -- the after-every-case check ------------------------------------------------------
class Case:
    """Names the instances of one case and proves, afterwards, that nothing of them is left."""

    def __init__(self):
        self.names: list[str] = []
        self.procs_before = {p.pid for p in lifetime.session_processes(config.SESSION_ID)}

    def name(self, prefix: str = "c") -> str:
        n = f"{prefix}-{secrets.token_hex(4)}"
        self.names.append(n)
        return n

    def problems(self) -> list[str]:
        kit.api.wait_for_teardown()  # foreground teardown runs in the background
        found = [f"still in ps: {n}" for n in set(kit.ps().name) & set(self.names)]
        found += [f"left: {x}" for x in lifetime.leftovers(config.SESSION_ID)
                  if any(n in x for n in self.names)]
        found += [f"left: process {p.pid} {_cmdline(p)}" for p in lifetime.session_processes(config.SESSION_ID)
                  if p.pid not in self.procs_before and _alive(p)]
        return found

    def cleanup(self) -> None:
        for n in self.names:
            try:
                kit.rm(n, force=True)
            except KitError:
                pass


def _alive(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except Exception:
        return "?"


@pytest.fixture
def case():
    c = Case()
    yield c
    try:
        # A leak may still be on its way out (a runtime's own teardown): give it a bounded moment.
        problems = []
        try:
            wait_until(lambda: not c.problems(), 10, interval=0.1, what="the case's teardown")
        except KitError:
            problems = c.problems()
    finally:
        c.cleanup()
    assert not problems, problems


def clear(err: BaseException) -> str:
    """The message of an expected error, proven to be one short line without a traceback."""
    msg = str(err)
    assert msg.strip(), f"{type(err).__name__} without a message"
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert len(msg) < MAX_MESSAGE, f"{len(msg)} characters: {msg[:400]}"
    return msg


def api_outcome(*args, **kw) -> RunResult | KitError:
    """kit.run's result or KitError; anything else (a crash) fails the test."""
    try:
        return kit.run(*args, **kw)
    except KitError as e:
        clear(e)
        return e


def magic_outcome(ip, magic: str, line: str, cell: str | None = None) -> RunResult | UsageError:
    try:
        if cell is not None:
            return ip.run_cell_magic(magic, line, cell)
        return ip.run_line_magic(magic, line)
    except UsageError as e:
        clear(e)
        return e


def expect_error(outcome, kind: type, match: str) -> str:
    assert isinstance(outcome, kind), f"expected {kind.__name__} ({match}), got {outcome!r}"[:600]
    msg = clear(outcome)
    assert match.lower() in msg.lower(), msg
    return msg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- bad values: refused before anything starts, the same way in every runtime --------
BIG = "x" * 200_000
BAD_VALUES = [
    # (id, kit.run keyword arguments, error class, words the message must contain)
    ("nul-in-argument", dict(command=["echo", "a\0b"]), InvalidSpec, "NUL byte"),
    ("nul-in-command", dict(command=["ec\0ho"]), InvalidSpec, "NUL byte"),
    ("nul-in-env", dict(env={"A": "x\0y"}), InvalidSpec, "NUL byte"),
    ("nul-in-workdir", dict(workdir="/tm\0p"), InvalidSpec, "NUL byte"),
    ("nul-in-hostname", dict(hostname="a\0b"), InvalidSpec, "NUL byte"),
    ("lone-surrogate", dict(command=["echo", "\ud800"]), InvalidSpec, "not valid text"),
    ("escaped-byte-in-env", dict(env={"X": "a\udcffb"}), InvalidSpec, "not valid text"),
    ("overlong-argument", dict(command=["echo", BIG]), InvalidSpec, "128 KiB"),
    ("overlong-env-value", dict(env={"BIG": BIG}), InvalidSpec, "128 KiB"),
    ("env-name-with-space", dict(env={"A B": "x"}), InvalidSpec, "environment variable name"),
    ("env-name-digit", dict(env={"1A": "x"}), InvalidSpec, "environment variable name"),
    ("env-list-no-key", dict(env=["=x"]), InvalidSpec, "environment"),
    ("env-list-overlong-key", dict(env=["K" * 5000]), InvalidSpec, "environment"),
    ("name-unicode", dict(name="ünïcødé"), InvalidSpec, "name"),
    ("name-overlong", dict(name="n" * 300), InvalidSpec, "name"),
    ("name-path", dict(name="../../etc"), InvalidSpec, "name"),
    ("hostname-overlong", dict(hostname="h" * 100), InvalidSpec, "hostname"),
    ("hostname-newline", dict(hostname="a\nb"), InvalidSpec, "hostname"),
    ("memory-1k", dict(memory="1k"), InvalidSpec, "memory"),
    ("memory-10t", dict(memory="10t"), InvalidSpec, "memory"),
    ("memory-negative", dict(memory="-5m"), InvalidSpec, "memory"),
    ("memory-garbage-overlong", dict(memory="z" * 5000), InvalidSpec, "memory"),
    ("cpus-0", dict(cpus=0), InvalidSpec, "cpus"),
    ("cpus-minus-1", dict(cpus=-1), InvalidSpec, "cpus"),
    ("cpus-1e9", dict(cpus=1e9), InvalidSpec, "cpus"),
    ("cpus-nan", dict(cpus="nan"), InvalidSpec, "cpus"),
    ("cpus-inf", dict(cpus="inf"), InvalidSpec, "cpus"),
    ("port-out-of-range", dict(ports=["99999:80"]), InvalidSpec, "port"),
    ("port-zero-tuple", dict(ports=[(0, 80)]), InvalidSpec, "port"),
    ("port-garbage", dict(ports=["eighty"]), InvalidSpec, "port"),
    ("port-public-address", dict(ports=["0.0.0.0:8080:80"]), InvalidSpec, "port"),
    ("workdir-relative", dict(workdir="tmp"), InvalidSpec, "absolute"),
    ("timeout-negative", dict(timeout=-1), InvalidSpec, "timeout"),
    ("timeout-inf", dict(timeout=float("inf")), InvalidSpec, "timeout"),
    ("timeout-garbage", dict(timeout="soon"), InvalidSpec, "timeout"),
    ("command-string", dict(command="echo hi"), InvalidSpec, "list of arguments"),
    # No command: the image's Entrypoint + Cmd run, as with docker run (tests/test_registry.py).
    ("command-missing", dict(command=["no-such-command-xyz"]), CommandNotFound, "not found"),
    ("command-missing-overlong", dict(command=["q" * 3000]), CommandNotFound, "not found"),
    ("image-overlong", dict(image="i" * 300), InvalidSpec, "image name"),
    ("image-unknown", dict(image="no-such-image-xyz"), ImageNotFound, "no image"),
    ("runtime-unknown", dict(runtime="frobnicator"), RuntimeUnavailable, "unknown runtime"),
]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("cid,kw,err,match", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_value_is_refused_through_the_api(case, runtime, cid, kw, err, match):
    need(runtime)
    kw = {"image": "busybox", "command": ["true"], "runtime": runtime, "name": case.name(), **kw}
    if runtime == "process" and cid == "image-unknown":
        # The process runtime runs on the host and ignores the image.
        assert api_outcome(**kw).exit_code == 0
        return
    expect_error(api_outcome(**kw), err, match)


MAGIC_BAD_VALUES = [
    ("nul-in-argument", "busybox echo 'a\0b'", "NUL byte"),
    ("memory-1k", "-m 1k busybox true", "memory"),
    ("memory-10t", "-m 10t busybox true", "memory"),
    ("cpus-0", "--cpus 0 busybox true", "cpus"),
    ("cpus-minus-1", "--cpus=-1 busybox true", "cpus"),
    ("cpus-1e9", "--cpus 1e9 busybox true", "cpus"),
    ("env-overlong", f"-e BIG={'x' * 200_000} busybox true", "128 KiB"),
    ("hostname-overlong", f"--hostname {'h' * 100} busybox true", "hostname"),
    ("name-unicode", "--name ünï busybox true", "name"),
    ("name-overlong", f"--name {'n' * 300} busybox true", "name"),
    ("image-unknown", "no-such-image-xyz true", "no image"),
    ("runtime-unknown", "-r frobnicator busybox true", "unknown runtime"),
    ("command-missing", "busybox no-such-command-xyz", "not found"),
    ("workdir-relative", "-w tmp busybox true", "absolute"),
    ("timeout-inf", "--timeout inf busybox true", "timeout"),
    ("timeout-zero", "--timeout 0 busybox true", None),  # 0 means the configured default: it runs
]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("cid,line,match", MAGIC_BAD_VALUES, ids=[c[0] for c in MAGIC_BAD_VALUES])
def test_bad_value_is_refused_through_the_magic(ip, case, runtime, cid, line, match):
    need(runtime)
    out = magic_outcome(ip, "container", f"run -r {runtime} --name {case.name()} {line}")
    if match is None or (runtime == "process" and cid == "image-unknown"):
        assert isinstance(out, RunResult) and out.exit_code == 0, out
        return
    expect_error(out, UsageError, match)


# -- malformed magic lines -------------------------------------------------------------
MALFORMED = [
    ("container", "run -m", "expected one argument"),
    ("container", "run --name", "expected one argument"),
    ("container", "run -p", "expected one argument"),
    ("container", "run -r", "expected one argument"),
    ("container", "run --cpus", "expected one argument"),
    ("container", "run --timeout soon busybox true", "invalid float"),
    ("container", "run -r process busybox echo 'unterminated", "quotes"),
    ("container", 'run -r process busybox echo "unterminated', "quotes"),
    ("container", "run -r process busybox echo trailing\\", "quotes"),
    ("container", "run --no-such-flag busybox true", "unrecognized"),
    ("container", "run -- ", "no image"),
    ("container", "run -r process -- busybox", "no command"),
    ("container", "run -r '' busybox true", None),  # an empty runtime means the default: it runs
    ("container", "frobnicate now", "unknown subcommand"),
    ("container", "exec", "usage"),
    ("container", "exec only-a-name", "usage"),
    ("container", "logs a b", "usage"),
    ("container", "stop", "usage"),
    ("container", "rm -f", "usage"),
    ("container", "logs no-such-instance-xyz", "no instance"),
    ("container", "exec no-such-instance-xyz ls", "no instance"),
    ("container", "rm " + "z" * 2000, "no instance"),
    ("vm", "run", "no image"),
    ("vm", "run -r runc busybox true", "unrecognized"),
    ("vm", "frobnicate", "unknown subcommand"),
    ("process", "", "usage"),
    ("process", "frobnicate", "usage"),
    ("process", "run", "no command"),
    ("process", "run 'x", "quotes"),
]


@pytest.mark.parametrize("magic,line,match", MALFORMED, ids=[f"{m}:{ln[:30]}" for m, ln, _ in MALFORMED])
def test_malformed_magic_line(ip, case, magic, line, match):
    out = magic_outcome(ip, magic, line)
    if match is None:
        assert isinstance(out, RunResult) and out.exit_code == 0, out
    else:
        expect_error(out, UsageError, match)


@pytest.mark.parametrize("line,cell,match", [
    ("-r process busybox echo extra", "echo hi\n", "takes no command"),
    ("", "echo hi\n", "no image"),
    ("-r process busybox 'unbalanced", "echo hi\n", "quotes"),
    ("-r process -m 1k busybox", "echo hi\n", "memory"),
])
def test_malformed_cell_magic(ip, case, line, cell, match):
    expect_error(magic_outcome(ip, "container", line, cell), UsageError, match)


def test_errors_in_a_cell_show_one_line_and_the_shell_survives(ip, case, capsys):
    """run_cell, as a notebook runs it: the error is shown without a traceback, the next cell works."""
    for line in ("%container run -r process -m 1k busybox true", "%container run 'unbalanced",
                 "%container run -r process busybox echo 'a\0b'", "%container frobnicate"):
        res = ip.run_cell(line)
        assert not res.success
        shown = capsys.readouterr()
        assert "Traceback" not in shown.out + shown.err
        assert isinstance(res.error_in_exec, UsageError), repr(res.error_in_exec)
    res = ip.run_cell("%process run echo still-alive")
    assert res.success and res.result.stdout == "still-alive\n"


# -- what must reach the command literally, in every runtime ----------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_injection_attempts_reach_the_command_literally(ip, case, runtime):
    need(runtime)
    marker = f"/tmp/kit-corpus-pwned-{secrets.token_hex(4)}"
    payloads = [f"; rm -rf {marker}; touch {marker}", f"$(touch {marker})", f"`touch {marker}`",
                f"x && touch {marker}", f"x || touch {marker}", f"x | touch {marker}",
                f"line1\ntouch {marker}", f"> {marker}", "$HOME", "'\"\\"]
    script = f'printf "<%s>" "$@"; test -e {marker} && echo PWNED; true'
    r = api_outcome("busybox", ["sh", "-c", script, "sh", *payloads], runtime=runtime, name=case.name())
    assert isinstance(r, RunResult), r
    assert r.stdout == "".join(f"<{p}>" for p in payloads)
    assert not Path(marker).exists()
    # The same through the magic: shlex quoting is the only interpretation.
    line = f"run -r {runtime} --name {case.name()} busybox echo '; touch {marker}' '$(touch {marker})' " \
           f"'`touch {marker}`' '&&' touch {marker}"
    r = magic_outcome(ip, "container", line)
    assert isinstance(r, RunResult) and r.exit_code == 0, r
    assert r.stdout == f"; touch {marker} $(touch {marker}) `touch {marker}` && touch {marker}\n"
    assert not Path(marker).exists()
    # A newline inside quotes is part of the argument.
    r = magic_outcome(ip, "container", f"run -r {runtime} --name {case.name()} busybox echo 'two\nlines'")
    assert isinstance(r, RunResult) and r.stdout == "two\nlines\n", r


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unicode_arguments_and_environment(case, runtime):
    need(runtime)
    text = "héllo wörld 😀 日本語"
    r = api_outcome("busybox", ["sh", "-c", 'echo "$GREETING|$1"', "sh", text], runtime=runtime,
                    name=case.name(), env={"GREETING": text}, hostname="hôte")
    assert isinstance(r, RunResult), r
    assert r.stdout == f"{text}|{text}\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_newline_and_long_environment_values(case, runtime):
    need(runtime)
    long = "v" * 100_000  # under Linux's 128 KiB per variable: must arrive whole
    r = api_outcome("busybox", ["sh", "-c", 'echo ${#LONG}'], runtime=runtime, name=case.name(), env={"LONG": long})
    assert isinstance(r, RunResult) and r.stdout == "100000\n", r
    r = api_outcome("busybox", ["sh", "-c", 'echo "$ML"'], runtime=runtime, name=case.name(), env={"ML": "a\nb"})
    if runtime == "lxc":  # an LXC config line cannot hold a newline: refused, clearly
        expect_error(r, StartFailed, "newline")
    else:
        assert isinstance(r, RunResult) and r.stdout == "a\nb\n", r


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_huge_binary_output_through_the_magic(ip, case, runtime, capsys):
    """10 MB of random bytes: the magic streams (a capped part of) it, the result has every byte."""
    need(runtime)
    script = ("f=/tmp/kit-corpus-$$; head -c 10485760 /dev/urandom > $f; md5sum $f >&2; "
              "cat $f; rm -f $f; printf '\\377\\376\\000\\200' >&2")
    t0 = time.monotonic()
    r = magic_outcome(ip, "container", f"run -r {runtime} --name {case.name()} busybox sh -c \"{script}\"")
    elapsed = time.monotonic() - t0
    assert isinstance(r, RunResult) and r.exit_code == 0, r
    assert len(r.stdout_bytes) == 10 * 1024 * 1024
    assert hashlib.md5(r.stdout_bytes).hexdigest() == r.stderr_bytes.split()[0].decode()
    assert r.stderr_bytes.endswith(b"\xff\xfe\x00\x80")  # non-UTF-8 bytes kept exactly
    assert "\ufffd" in r.stderr  # and decoded for display without an error
    shown = capsys.readouterr()
    assert "live output stopped" in shown.out and len(shown.out) < 4 * 1024 * 1024
    assert elapsed < 30, f"{runtime}: 10 MB took {elapsed:.1f} s"
    repr(r), r._repr_html_()  # the result displays (clipped)


# -- values at the edge: each runtime's own answer, stated ------------------------------
LIMITS = {"memory-1t": dict(memory="1t"), "cpus-1024": dict(cpus=1024), "cpus-0.01": dict(cpus=0.01),
          "memory-6m": dict(memory="6m")}
#: What a limit does where it does not simply run (everything else prints "ok"): docker refuses more
#: CPUs than the host has, clearly; gVisor's sandbox itself does not fit in 6 MiB, and the result says so.
LIMIT_OUTCOME = {("docker", "cpus-1024"): (StartFailed, "Range of CPUs"), ("runsc", "memory-6m"): "oom"}


@pytest.mark.parametrize("runtime,cid,kw", [
    pytest.param(rt, cid, kw, id=f"{cid}-{rt}",
                 # gVisor's sandbox starts in ~11 s on a hundredth of a CPU
                 marks=[pytest.mark.slow] if (rt, cid) == ("runsc", "cpus-0.01") else [])
    for cid, kw in LIMITS.items() for rt in RUNTIMES])
def test_extreme_but_valid_limits_run_or_say_why(case, runtime, cid, kw):
    need(runtime)
    r = api_outcome("busybox", ["echo", "ok"], runtime=runtime, name=case.name(), timeout=60, **kw)
    expected = LIMIT_OUTCOME.get((runtime, cid), "ok")
    if expected == "ok":
        assert isinstance(r, RunResult) and (r.exit_code, r.stdout) == (0, "ok\n"), r
    elif expected == "oom":
        assert isinstance(r, RunResult) and r.oom_killed and r.exit_code == 137, r
        assert "out of memory" in repr(r)
    else:
        expect_error(r, *expected)


#: Runtimes that refuse a working directory missing in the image (the others create it, as docker run -w does).
NO_WORKDIR_CREATION = ("process", "lxc")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_workdir_missing_in_the_image(case, runtime):
    need(runtime)
    r = api_outcome("busybox", ["pwd"], runtime=runtime, name=case.name(), workdir="/no/such/dir")
    if runtime in NO_WORKDIR_CREATION:  # there is no such directory, and the message says so
        msg = expect_error(r, StartFailed, "/no/such/dir")
        assert "directory" in msg.lower()
    else:
        assert isinstance(r, RunResult) and (r.exit_code, r.stdout) == (0, "/no/such/dir\n"), r


# -- ports -------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_port_already_in_use(ip, case, runtime):
    need(runtime)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        expect_error(api_outcome("busybox", ["true"], runtime=runtime, name=case.name(), ports=[f"{port}:80"]),
                     InvalidSpec, "already in use")
        expect_error(magic_outcome(ip, "container", f"run -r {runtime} --name {case.name()} -p {port}:80 busybox true"),
                     UsageError, "already in use")
    expect_error(api_outcome("busybox", ["true"], runtime=runtime, name=case.name(), ports=["18081:80", "18081:81"]),
                 InvalidSpec, "twice")


@pytest.mark.parametrize("runtime", CONTAINER_RUNTIMES)
def test_quick_command_with_a_published_port_gives_its_result(case, runtime):
    """The command ends before its port is published: its result stands (it used to be a StartFailed)."""
    need(runtime)
    for _ in range(3):  # the race is between the exit and the publishing: try it more than once
        r = api_outcome("busybox", ["echo", "done"], runtime=runtime, name=case.name(), ports=[f"{free_port()}:80"])
        assert isinstance(r, RunResult) and (r.exit_code, r.stdout) == (0, "done\n"), r


def _free_low_port() -> int | None:
    for port in (80, 81, 443, 666, 999, 1023):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    return None


@pytest.mark.parametrize("runtime", CONTAINER_RUNTIMES)
def test_privileged_low_port_is_published_on_loopback(case, runtime):
    need(runtime)
    port = _free_low_port()
    if port is None:
        pytest.skip("no low port is free on 127.0.0.1 here")
    name = case.name()
    r = api_outcome("busybox", ["sh", "-c", "mkdir -p /www && echo low-port-ok > /www/index.html && "
                                            "exec httpd -f -p 80 -h /www"],
                    runtime=runtime, name=name, detach=True, ports=[f"{port}:80"])
    if os.geteuid() != 0:  # not root: binding a low port is refused, clearly
        expect_error(r, KitError, "port")
        return
    assert not isinstance(r, KitError), r  # root (as on this machine kind): it is published

    def fetch():
        return http_get(port)

    try:
        assert wait_until(fetch, 20, interval=0.05, what=f"httpd on 127.0.0.1:{port}") == b"low-port-ok\n"
    finally:
        kit.rm(name, force=True)


# -- instances in the wrong state ----------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_duplicate_names_across_runtimes(ip, case, runtime):
    need(runtime)
    name = case.name("dup")
    kit.start("busybox", ["sleep", "300"], runtime=runtime, name=name)
    try:
        for other in RUNTIMES:
            need(other)
            expect_error(api_outcome("busybox", ["true"], runtime=other, name=name), NameInUse, "already in use")
        expect_error(magic_outcome(ip, "container", f"run -r process --name {name} busybox true"),
                     UsageError, "already in use")
        assert list(kit.ps().name).count(name) == 1
        assert kit.api.get(name).backend.name == runtime  # the first one is untouched
        assert kit.runtimes.get(runtime).running(kit.api.get(name).state)
    finally:
        kit.rm(name, force=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exec_into_a_stopped_instance(ip, case, runtime):
    need(runtime)
    name = case.name("stopped")
    kit.start("busybox", ["sleep", "300"], runtime=runtime, name=name)
    try:
        kit.stop(name, timeout=2)
        expect_error(magic_outcome(ip, "container", f"exec {name} echo hi"), UsageError, "not running")
        with pytest.raises(InstanceNotFound) as err:
            kit.exec_(name, ["echo", "hi"])
        clear(err.value)
        assert name in set(kit.ps().name)  # stopped, still listed until rm
        ip.run_line_magic("container", f"rm {name}")  # no force needed once stopped
        assert name not in set(kit.ps().name)
    finally:
        try:
            kit.rm(name, force=True)
        except InstanceNotFound:
            pass


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rm_of_a_running_instance_needs_force(ip, case, runtime):
    need(runtime)
    name = case.name("running")
    kit.start("busybox", ["sleep", "300"], runtime=runtime, name=name)
    try:
        expect_error(magic_outcome(ip, "container", f"rm {name}"), UsageError, "running")
        with pytest.raises(KitError, match="force") as err:
            kit.rm(name)
        clear(err.value)
        _h = kit.api.get(name)
        rt, inst = _h.backend, _h.state
        assert rt.running(inst)  # a refused rm leaves it alone
        # Bad exec input into the running instance: refused, the instance unharmed.
        expect_error(magic_outcome(ip, "container", f"exec {name} echo 'a\0b'"), UsageError, "NUL byte")
        with pytest.raises(InvalidSpec, match="list of arguments"):
            kit.exec_(name, "echo hi")
        r = kit.exec_(name, ["echo", "; rm -rf / $(id)"])
        assert r.stdout == "; rm -rf / $(id)\n"
        ip.run_line_magic("container", f"rm -f {name}")
        assert name not in set(kit.ps().name)
    finally:
        try:
            kit.rm(name, force=True)
        except InstanceNotFound:
            pass


# -- a missing daemon, a missing kernel: in a fresh interpreter -------------------------------
def _python(code: str, env: dict, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    p = subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


_TRY_RUN = """
import json, time, kit
t0 = time.monotonic()
try:
    r = kit.run("busybox", ["true"], runtime={runtime!r}{extra})
    out = {{"result": r.exit_code}}
except Exception as e:
    out = {{"error": type(e).__name__, "message": str(e)}}
out["elapsed"] = time.monotonic() - t0
kit.api.wait_for_teardown()
out["leftovers"] = [x for x in kit.lifetime.leftovers(kit.config.SESSION_ID) if "directory" not in x]
a = kit.runtimes.available()
out["reason"] = a[a.name == {runtime!r}].reason.iloc[0]
print(json.dumps(out))
"""


def test_missing_docker_daemon(tmp_path):
    sock = tmp_path / "no-daemon.sock"
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    t0 = time.monotonic()
    out = _python(_TRY_RUN.format(runtime="docker", extra=""), env)
    assert time.monotonic() - t0 < 20
    assert str(sock) in out["reason"] and "daemon" in out["reason"]
    assert out["error"] == "RuntimeUnavailable" and str(sock) in out["message"], out
    assert len(out["message"]) < MAX_MESSAGE and "\n" not in out["message"]
    assert out["elapsed"] < 5, out  # the probe has its own short deadline
    assert out["leftovers"] == []


def test_hung_docker_daemon(tmp_path):
    """A socket that accepts and never answers: the probe gives up at its deadline."""
    sock_path = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(sock_path))
        srv.listen(16)
        env = dict(os.environ, DOCKER_HOST=f"unix://{sock_path}")
        out = _python(_TRY_RUN.format(runtime="docker", extra=""), env)
    assert out["error"] == "RuntimeUnavailable" and "daemon" in out["message"], out
    assert out["elapsed"] < 10, out


def _no_apt_path(tmp_path: Path) -> str:
    """A PATH with QEMU and mkfs.ext4 but no apt: a host where the kit cannot fetch a guest kernel."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-system-x86_64", "mkfs.ext4"):
        found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if found is None:
            pytest.skip(f"{tool} is not installed")
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_missing_guest_kernel(tmp_path):
    need("qemu")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, KIT_HOME=str(home), PATH=_no_apt_path(tmp_path))
    out = _python(_TRY_RUN.format(runtime="qemu", extra=""), env)
    assert out["error"] == "RuntimeUnavailable", out
    assert "kernel" in out["message"] and "kit.vm.kernel fetch" in out["message"]
    assert len(out["message"]) < MAX_MESSAGE and "\n" not in out["message"]
    assert "kernel" in out["reason"]
    assert out["elapsed"] < 5 and out["leftovers"] == []


def test_bogus_guest_kernels(tmp_path):
    """kernel= a missing path, or a file that is no kernel: a clear error, fast, nothing left."""
    need("qemu")
    home = tmp_path / "home"
    home.mkdir()
    junk = tmp_path / "vmlinuz-junk"
    junk.write_text("not a kernel\n")
    env = dict(os.environ, KIT_HOME=str(home))
    out = _python(_TRY_RUN.format(runtime="qemu", extra=f", kernel={str(tmp_path / 'nope')!r}"), env)
    assert out["error"] == "InvalidSpec" and "does not exist" in out["message"], out
    # A file that is no bzImage is refused before QEMU starts (it used to be QEMU's own failure).
    out = _python(_TRY_RUN.format(runtime="qemu", extra=f", kernel={str(junk)!r}, timeout=30"), env, timeout=90)
    assert out["error"] == "InvalidSpec" and "not a Linux kernel image" in out["message"], out
    assert len(out["message"]) < MAX_MESSAGE and "\n" not in out["message"]
    assert out["elapsed"] < 5 and out["leftovers"] == []


# -- the VM: the cheap cases, and two that boot --------------------------------------------
@pytest.mark.parametrize("kw,err,match", [
    (dict(command=["echo", "a\0b"]), InvalidSpec, "NUL byte"),
    (dict(memory="32m"), InvalidSpec, "below the 96m minimum a VM can start in"),
    (dict(cpus=1024), StartFailed, "CPUs"),
    (dict(frobnicate="yes"), InvalidSpec, "unknown qemu option"),
    (dict(machine="pdp11"), InvalidSpec, "machine"),
    (dict(command=["no-such-command-xyz"]), CommandNotFound, "not found"),
], ids=["nul", "memory-too-small", "cpus-1024", "unknown-option", "bad-machine", "command-missing"])
def test_vm_refuses_bad_input_without_booting(case, kw, err, match):
    need("qemu")
    kw = {"image": "busybox", "command": ["true"], "runtime": "qemu", "name": case.name("vm"), "timeout": 60, **kw}
    t0 = time.monotonic()
    expect_error(api_outcome(**kw), err, match)
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_vm_binary_output_and_missing_workdir(ip, case):
    need("qemu")
    r = magic_outcome(ip, "vm", f"run --name {case.name('vm')} --timeout 60 busybox "
                                "sh -c \"printf '\\377\\376\\000\\200'; head -c 1048576 /dev/zero\"")
    assert isinstance(r, RunResult) and r.exit_code == 0, r
    assert r.stdout_bytes == b"\xff\xfe\x00\x80" + b"\0" * 1048576
    r = api_outcome("busybox", ["pwd"], runtime="qemu", name=case.name("vm"), workdir="/no/such/dir", timeout=60)
    expect_error(r, StartFailed, "/no/such/dir")


def test_the_shell_survived_the_corpus(ip):
    r = ip.run_line_magic("process", "run echo alive")
    assert r.stdout == "alive\n"
