"""The magics, driven through a real IPython shell (run_line_magic / run_cell_magic)."""

import pytest
from IPython.core.error import UsageError

import kit
from kit.magics import ContainerMagics, _run_parser, _split_run_args
from tests.conftest import CONTAINER_RUNTIMES, need, unique


def test_split_keeps_the_commands_own_options():
    p = _run_parser("container run")
    assert _split_run_args(p, ["-r", "runc", "-d", "busybox", "ls", "-r", "-d"]) == (
        ["-r", "runc", "-d"], ["busybox", "ls", "-r", "-d"])
    assert _split_run_args(p, ["--name", "x", "--", "-weird-image", "cmd"]) == (["--name", "x"], ["-weird-image", "cmd"])
    assert _split_run_args(p, ["-m", "64m"]) == (["-m", "64m"], [])


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
    assert r.detached
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
    assert "busybox" in set(imgs.name) and (imgs.size_mb > 0).all()
    rts = ip.run_line_magic("container", "runtimes")
    assert {"process", "runc", "crun", "lxc", "runsc", "docker", "podman", "qemu"} <= set(rts.name)
    assert (rts[~rts.available].reason.str.len() > 0).all()  # every unavailable runtime says why


def test_prune_removes_everything_of_the_session(ip):
    for i in range(2):
        ip.run_line_magic("container", f"run -d --name {unique('p')} -r process busybox sleep 300")
    removed = ip.run_line_magic("container", "prune")
    assert len(removed) >= 2 and kit.ps().empty


@pytest.mark.parametrize("line,match", [
    ("", None),
    ("frobnicate", "unknown subcommand"),
    ("run", "no image"),
    ("run busybox", "no command"),
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
    ("stop", "usage"),
    ("stop -t -1 x", "seconds"),
    ("stop -t soon x", "invalid float"),
    ("rm", "usage"),
])
def test_bad_input_gives_one_line_usage_error(ip, line, match):
    if match is None:
        assert ip.run_line_magic("container", line) is None  # help
        return
    with pytest.raises(UsageError, match=match) as err:
        ip.run_line_magic("container", line)
    assert "Traceback" not in str(err.value)
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
