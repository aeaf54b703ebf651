"""Parsing and validation of run options (pure functions, no runtime needed)."""

import pytest

from kit.errors import InvalidSpec, KitError
from kit.spec import RunSpec, parse_cpus, parse_env, parse_memory, parse_port


@pytest.mark.parametrize("text,expected", [("64m", 64 << 20), ("1g", 1 << 30), ("8192k", 8 << 20),
                                           ("32MiB", 32 << 20), ("1.5g", int(1.5 * (1 << 30))),
                                           (67108864, 67108864)])
def test_memory_units(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["12zz", "-5m", "m", "1k", "0", "99999t", "64 m b", "1e3m"])
def test_memory_rejects(bad):
    with pytest.raises(InvalidSpec, match="memory"):
        parse_memory(bad)


@pytest.mark.parametrize("bad", ["x", "0", "-1", "nan", "1e9", "inf"])
def test_cpus_rejects(bad):
    with pytest.raises(InvalidSpec, match="cpus"):
        parse_cpus(bad)


def test_cpus_ok():
    assert parse_cpus("1.5") == 1.5
    assert parse_cpus("") is None  # no value: no limit


@pytest.mark.parametrize("text,pair", [("8080:80", (8080, 80)), ("127.0.0.1:8080:80", (8080, 80)), ("53", (53, 53))])
def test_port_ok(text, pair):
    assert parse_port(text) == pair


@pytest.mark.parametrize("bad", ["0:80", "70000:80", "a:b", "1:2:3", "10.0.0.1:80:80", "0.0.0.0:80:80", ""])
def test_port_rejects(bad):
    with pytest.raises(InvalidSpec, match="port"):
        parse_port(bad)


def test_env():
    assert parse_env("A=b=c") == ("A", "b=c")
    assert parse_env("EMPTY=") == ("EMPTY", "")
    for bad in ("NOEQUALS", "=x", "1A=x", "A B=x"):
        with pytest.raises(InvalidSpec, match="environment"):
            parse_env(bad)


def test_spec_checks():
    with pytest.raises(InvalidSpec, match="no command"):
        RunSpec(image="busybox", command=[])
    with pytest.raises(InvalidSpec, match="list of arguments"):
        RunSpec(image="busybox", command="echo hi")
    with pytest.raises(InvalidSpec, match="name"):
        RunSpec(image="busybox", command=["true"], name="x" * 64)
    with pytest.raises(InvalidSpec, match="name"):
        RunSpec(image="busybox", command=["true"], name="ünïcode")
    with pytest.raises(InvalidSpec, match="absolute"):
        RunSpec(image="busybox", command=["true"], workdir="tmp")
    with pytest.raises(InvalidSpec, match="twice"):
        RunSpec(image="busybox", command=["true"], ports=[(8080, 80), (8080, 81)])
    assert issubclass(InvalidSpec, KitError)


def test_spec_defaults():
    s = RunSpec(image="busybox", command=["true"], env={"A": "1"})
    assert s.name.startswith("kit-") and s.hostname == s.name
    env = s.environment()
    assert env["A"] == "1" and "/bin" in env["PATH"]


def test_strings_with_nul_surrogates_or_too_long_are_refused():
    from kit.spec import MAX_ARG_BYTES, check_argv, check_string

    assert check_argv(["echo", "ünïcode ✓"]) == ["echo", "ünïcode ✓"]
    for bad in ("a\0b", "\udcff", "x" * (MAX_ARG_BYTES + 1)):
        with pytest.raises(InvalidSpec):
            check_string(bad, "argument")
    with pytest.raises(InvalidSpec):
        RunSpec(image="busybox", command=["echo", "a\0b"])
    with pytest.raises(InvalidSpec):
        RunSpec(image="busybox", command=["true"], env={"A B": "x"})
    with pytest.raises(InvalidSpec):
        RunSpec(image="busybox", command=["true"], hostname="h" * 65)
    with pytest.raises(InvalidSpec):
        RunSpec(image="busybox", command=["true"], timeout=float("inf"))


def test_echoed_input_is_clipped():
    from kit.spec import show

    assert len(show("x" * 1000)) < 100
    with pytest.raises(InvalidSpec) as e:
        parse_memory("z" * 1000)
    assert len(str(e.value)) < 300


def test_a_vms_memory_floor_is_named_as_the_vms_through_the_api():
    """kit.run(..., runtime="qemu", memory="64m"): a container could start in it, a VM cannot."""
    import kit
    from kit.runtimes.qemu import MIN_MEMORY

    with pytest.raises(InvalidSpec, match=f"below the {MIN_MEMORY // 1024**2}m minimum a VM can start in"):
        kit.run("busybox", ["true"], runtime="qemu", memory="64m")
    with pytest.raises(InvalidSpec, match="below the 6m minimum a container can start in"):
        kit.run("busybox", ["true"], runtime="runc", memory="1k")
