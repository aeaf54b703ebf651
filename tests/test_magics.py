"""The magics, driven through a real IPython shell (run_line_magic / run_cell_magic)."""

import re

import pytest
from IPython.core.error import UsageError

import kit
from kit.magics import ContainerMagics, run_parser
from tests.conftest import CONTAINER_RUNTIMES, need, unique


def test_split_keeps_the_commands_own_options():
    p = run_parser("%container run")
    opts = p.parse_args(["-r", "runc", "-d", "busybox", "ls", "-r", "-d"])
    assert (opts.runtime, opts.detach, opts.image, opts.command) == ("runc", True, "busybox", ["ls", "-r", "-d"])
    opts = p.parse_args(["--name", "x", "--", "-weird-image", "cmd"])
    assert (opts.name, opts.image, opts.command) == ("x", "-weird-image", ["cmd"])
    opts = p.parse_args(["-m", "64m"])
    assert (opts.memory, opts.image, opts.command) == ("64m", None, [])
    opts = run_parser("%process run", "process").parse_args(["-m", "64m", "sh", "-c", "echo -m --help"])
    assert (opts.memory, opts.command) == ("64m", ["sh", "-c", "echo -m --help"])
    opts = p.parse_args(["busybox", "ls", "--help"])  # the command's --help, not the magic's
    assert (opts.help, opts.image, opts.command) == (False, "busybox", ["ls", "--help"])


def test_process_magic_prints_and_returns_result(ip, capsys):
    r = ip.run_line_magic("process", "run echo hello")
    assert capsys.readouterr().out == "hello\n"  # streamed into the cell as it came
    assert r.stdout == "hello\n" and r.exit_code == 0 and r.runtime == "process"
    assert "hello" not in repr(r).split(">", 1)[1]  # not repeated after streaming
    assert "<table>" in r._repr_html_()


def test_exit_code_is_reported_not_raised(ip):
    assert ip.run_line_magic("container", "run -r process busybox sh -c 'exit 3'").exit_code == 3
    with pytest.raises(UsageError, match="exited with 3"):
        ip.run_line_magic("container", "run --check -r process busybox sh -c 'exit 3'")


@pytest.mark.parametrize("runtime", ("process",) + CONTAINER_RUNTIMES)
def test_container_run_echo_in_every_runtime(ip, runtime, capsys):
    need(runtime)
    r = ip.run_line_magic("container", f"run -r {runtime} busybox echo hello")
    assert (r.stdout, r.exit_code, r.runtime) == ("hello\n", 0, runtime)
    assert "hello" in capsys.readouterr().out
    r = ip.run_line_magic("container", f"run -r {runtime} busybox sh -c 'exit 3'")
    assert r.exit_code == 3


@pytest.mark.parametrize("runtime", CONTAINER_RUNTIMES)
def test_cell_magic_runs_body_as_sh_script(ip, runtime):
    need(runtime)
    r = ip.run_cell_magic("container", f"-r {runtime} -e GREETING=hi busybox",
                          'echo "$GREETING from $(hostname)"\nexit 4\n')
    assert r.exit_code == 4
    assert r.stdout.startswith("hi from ")


def test_config_traitlet_sets_default_runtime(ip):
    ip.run_line_magic("config", "ContainerMagics.runtime = 'process'")
    try:
        r = ip.run_line_magic("container", "run busybox echo via-config")
        assert r.runtime == "process"
    finally:
        ip.run_line_magic("config", "ContainerMagics.runtime = 'auto'")
    assert ContainerMagics.runtime.default_value == "auto"


def test_detached_ps_logs_exec_stop_rm(ip, names):
    name = unique("svc")
    names.append(name)
    r = ip.run_line_magic("container", f"run -d --name {name} -r process busybox sh -c 'echo up; sleep 300'")
    assert isinstance(r, kit.Instance) and r is kit.api.get(name)  # the handle, shown as such
    assert (r.name, r.runtime, r.status) == (name, "process", "running")
    assert name in repr(r) and "running" in r._repr_html_()
    ps = ip.run_line_magic("container", "ps")
    assert name in set(ps.name)
    kit._proc.wait_until(lambda: "up" in ip.run_line_magic("container", f"logs {name}").stdout, 10, what="log")
    assert ip.run_line_magic("container", f"exec {name} echo inside").stdout == "inside\n"
    stopped = ip.run_line_magic("container", f"stop -t 1 {name}")
    assert stopped.exit_code is not None
    ip.run_line_magic("container", f"rm {name}")
    assert name not in set(ip.run_line_magic("container", "ps").name)


def test_images_and_runtimes_tables(ip):
    imgs = ip.run_line_magic("container", "images")
    assert "busybox" in set(imgs.name) and (imgs.size_mib > 0).all()
    rts = ip.run_line_magic("container", "runtimes")
    assert {"process", "runc", "crun", "lxc", "runsc", "docker", "podman", "qemu"} <= set(rts.name)
    assert (rts[~rts.available].reason.str.len() > 0).all()  # every unavailable runtime says why


def test_prune_removes_everything_of_the_session_and_says_so_once(ip, capsys):
    started = [unique("p") for _ in range(2)]
    for name in started:
        ip.run_line_magic("container", f"run -d --name {name} -r process busybox sleep 300")
    removed = ip.run_line_magic("container", "prune")
    assert set(started) <= set(removed) and kit.ps().empty
    assert capsys.readouterr().out == ""  # nothing printed: the result's repr is the one message
    assert repr(removed).startswith(f"removed {len(removed)} instance(s): ")
    res = ip.run_cell("%container prune")  # as a notebook cell: shown once, as the message
    shown = capsys.readouterr().out
    assert res.success and shown.count("removed 0 instance(s)") == 1 and "[]" not in shown


@pytest.mark.parametrize("line,match", [
    ("frobnicate", "unknown subcommand"),
    ("run", "no image"),
    ("run -r process busybox", "no command"),  # an image runtime runs the image's Cmd instead
    ("run 'busybox echo", "quotes"),
    ('run busybox echo "unbalanced', "quotes"),
    ("run -m 12zz busybox echo", "memory"),
    ("run -m 99999999t busybox echo", "memory"),
    ("run --cpus -3 busybox echo", "cpus"),
    ("run --cpus NaN busybox echo", "cpus"),
    ("run -p 80 -p abc busybox echo", "port"),
    ("run -e =x busybox echo", "environment"),
    ("run --timeout soon busybox echo", "timeout"),
    ("run -r nope busybox echo", "unknown runtime"),
    ("run -r process busybox no-such-command-xyz", "not found"),
    ("run --name " + "x" * 300 + " -r process busybox true", "name"),
    ("run --name ünï -r process busybox true", "name"),
    ("run --bogus-flag busybox echo", "unrecognized"),
    ("logs", "usage"),
    ("logs nobody-by-that-name", "no instance"),
    ("exec nobody-by-that-name ls", "no instance"),
    ("stop nobody-by-that-name", "no instance"),
    ("stop", "usage: %container stop"),
    ("stop -t -1 x", "seconds"),
    ("stop -t soon x", "invalid float"),
    ("rm", "usage: %container rm"),
    ("ps --bogus", r"%container ps: unrecognized arguments: --bogus"),
    ("images -a", r"%container images: unrecognized arguments: -a"),
    ("runtimes --all", r"%container runtimes: unrecognized arguments: --all"),
    ("prune --force", r"%container prune: unrecognized arguments: --force"),
    ("logs a b", r"%container logs: unrecognized arguments: b"),
    ("exec --bogus x ls", r"%container exec: unrecognized arguments: --bogus"),
    ("exec only-a-name", r"usage: %container exec NAME CMD"),
    ("rm --bogus x", r"%container rm: unrecognized arguments: --bogus"),
])
def test_bad_input_gives_one_line_usage_error(ip, line, match):
    with pytest.raises(UsageError, match=match) as err:
        ip.run_line_magic("container", line)
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value).strip()
    assert kit.ps().empty


def test_unknown_image_is_refused(ip):
    need("runc")
    with pytest.raises(UsageError, match="no image 'no-such-image'"):
        ip.run_line_magic("container", "run -r runc no-such-image echo")


def test_injection_attempts_stay_literal(ip, tmp_path):
    marker = tmp_path / "pwned"
    r = ip.run_line_magic("process", f"run echo '; touch {marker}' '$(touch {marker})' '`touch {marker}`'")
    assert not marker.exists()
    assert r.stdout.count("touch") == 3


def test_run_cell_reports_usage_error_without_traceback(ip, capsys):
    res = ip.run_cell("%container run -m bogus busybox echo")
    assert not res.success
    captured = capsys.readouterr()
    assert "memory 'bogus'" in captured.err + captured.out
    assert "Traceback" not in captured.err + captured.out


# -- help: every magic and every subcommand shows its usage and returns, never raises -------

@pytest.mark.parametrize("magic,line,expect", [
    ("container", "", ["%container run [options] IMAGE [CMD [ARG...]]", "%container stop [-t SECONDS] NAME"]),
    ("container", "--help", ["%container prune", "%%container [options] IMAGE"]),
    ("container", "run --help", ["usage: %container run [options] IMAGE", "--no-harden", "--read-only", "-r RUNTIME"]),
    ("container", "run -r runc --help", ["usage: %container run"]),
    ("container", "ps --help", ["usage: %container ps"]),
    ("container", "logs --help", ["usage: %container logs NAME"]),
    ("container", "exec --help", ["usage: %container exec NAME CMD [ARG...]"]),
    ("container", "stop --help", ["usage: %container stop [-t SECONDS] NAME", "SIGKILL"]),
    ("container", "rm --help", ["usage: %container rm [-f] NAME [NAME...]", "--force"]),
    ("container", "images --help", ["usage: %container images"]),
    ("container", "runtimes --help", ["usage: %container runtimes"]),
    ("container", "prune --help", ["usage: %container prune"]),
    ("vm", "", ["%vm run [options] IMAGE", "other subcommands as %container"]),
    ("vm", "run --help", ["usage: %vm run [options] IMAGE", "--kernel", "at least 96m"]),
    ("vm", "stop --help", ["usage: %container stop"]),
    ("process", "--help", ["usage: %process run [options] CMD [ARG...]", "--timeout"]),
    ("process", "run --help", ["usage: %process run [options] CMD [ARG...]"]),
    ("container", "network --help", ["usage: %container network create|ls|inspect|rm", "--force"]),
    ("container", "volume -h", ["usage: %container volume create|ls|inspect|rm [NAME]"]),
    ("compose", "--help", ["usage: %compose up|down|ps|logs", "--volumes", "the compose file"]),
    ("compose", "up --help", ["usage: %compose"]),
    ("bench", "--help", ["usage: %bench", "--repeat", "--parts"]),
    ("bench", "-h", ["usage: %bench"]),
])
def test_help_prints_usage_and_returns_none(ip, capsys, magic, line, expect):
    assert ip.run_line_magic(magic, line) is None
    out = capsys.readouterr().out
    for text in expect:
        assert text in out, (text, out)
    assert kit.ps().empty  # help starts nothing


def test_help_of_a_run_for_a_process_offers_no_image_options(ip, capsys):
    ip.run_line_magic("process", "run --help")
    out = capsys.readouterr().out
    assert "--runtime" not in out and "--kernel" not in out and "--publish" not in out
    with pytest.raises(UsageError, match="%process run: unrecognized arguments: -r;"):
        ip.run_line_magic("process", "run -r runc echo hi")


@pytest.mark.parametrize("magic,expect", [
    ("container", ["%container run [options] IMAGE", "--no-harden", "usage: %container stop [-t SECONDS] NAME",
                   "usage: %container prune"]),
    ("vm", ["usage: %vm run [options] IMAGE", "--machine"]),
    ("process", ["usage: %process run [options] CMD [ARG...]"]),
    ("bench", ["usage: %bench", "--density-max"]),
    ("compose", ["usage: %compose up|down|ps|logs", "--project"]),
])
def test_question_mark_shows_the_real_usage(ip, capsys, magic, expect):
    res = ip.run_cell(f"%{magic}?")
    out = capsys.readouterr().out
    assert res.success
    for text in expect:
        assert text in out, (text, out[:2000])


@pytest.mark.parametrize("line,match", [
    ("", r"^%compose: the following arguments are required: ACTION; usage: %compose up"),
    ("frob", r"^%compose: argument ACTION: invalid choice: 'frob'"),
    ("ps --bogus", r"^%compose: unrecognized arguments: --bogus"),
    ("up -f /nonexistent/docker-compose.yml", r"^ComposeFileError: cannot read compose file"),
    ("ps -p nothing-up", r"^KitError: no compose project 'nothing-up' is up"),
])
def test_compose_bad_input_is_one_line(ip, line, match):
    with pytest.raises(UsageError, match=match) as err:
        ip.run_line_magic("compose", line)
    assert "\n" not in str(err.value).strip()
    assert kit.ps().empty


def test_bench_bad_options_are_one_line(ip):
    with pytest.raises(UsageError, match="bench: argument -n/--repeat: invalid int value: 'many'"):
        ip.run_line_magic("bench", "-n many")
    with pytest.raises(UsageError, match="check your quotes"):
        ip.run_line_magic("bench", "-r 'process")


# -- messages that name the right thing -------------------------------------------------

def test_process_run_without_a_command_shows_its_own_usage(ip):
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("process", "run")
    assert str(err.value) == ("%process run: no command given: %process run [options] CMD [ARG...], "
                              "e.g. %process run echo hello")
    with pytest.raises(UsageError, match=r"%process run: no command given: %process run \[options\] CMD"):
        ip.run_line_magic("process", "run -m 64m")
    with pytest.raises(UsageError, match=r"^%process: no subcommand; usage: %process run"):
        ip.run_line_magic("process", "")


@pytest.mark.parametrize("magic,line", [
    ("vm", "run -m 1k busybox echo hi"),        # below the containers' 6m too
    ("vm", "run -m 64m busybox echo hi"),       # a container could, a VM cannot
    ("container", "run -r qemu -m 1k busybox echo hi"),
])
def test_vm_memory_below_the_vms_minimum_names_the_vms_minimum(ip, magic, line):
    from kit.runtimes.qemu import MIN_MEMORY

    with pytest.raises(UsageError, match=f"below the {MIN_MEMORY // 1024**2}m minimum a VM can start in: "
                                         f"give at least {MIN_MEMORY // 1024**2}m") as err:
        ip.run_line_magic(magic, line)
    assert not re.search(r"(?<!\d)6m", str(err.value))  # not the containers' minimum
    assert kit.ps().empty  # refused before anything started


def test_vm_memory_that_is_no_size_says_so(ip):
    with pytest.raises(UsageError, match="memory '12zz' is not a size"):
        ip.run_line_magic("vm", "run -m 12zz busybox echo hi")


def test_container_memory_minimum_is_still_the_containers(ip):
    with pytest.raises(UsageError, match="below the 6m minimum"):
        ip.run_line_magic("container", "run -r process -m 1k busybox echo hi")


def test_no_harden_reaches_kit_run(ip, monkeypatch):
    seen = []
    real = kit.api.run

    def spy(*args, **kw):
        seen.append(kw["harden"])
        return real(*args, **kw)

    monkeypatch.setattr(kit.api, "run", spy)
    assert ip.run_line_magic("container", "run -r process busybox true").exit_code == 0
    assert ip.run_line_magic("container", "run --no-harden -r process busybox true").exit_code == 0
    assert seen == [True, False]


@pytest.mark.parametrize("runtime", ("runc", "lxc"))
def test_no_harden_lifts_the_seccomp_filter(ip, runtime):
    """Hardened by default, the baseline filter refuses unshare; --no-harden runs without it."""
    need(runtime)
    probe = "unshare -U true 2>/dev/null && echo allowed || echo refused"
    hard = ip.run_line_magic("container", f"run -r {runtime} busybox sh -c '{probe}'")
    soft = ip.run_line_magic("container", f"run --no-harden -r {runtime} busybox sh -c '{probe}'")
    assert (hard.stdout.strip(), soft.stdout.strip()) == ("refused", "allowed"), (hard, soft)
