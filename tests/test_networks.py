"""Kit networks: members of several runtimes reach each other by name on one loopback-only namespace
(kit/networks.py); published ports stay on the host's 127.0.0.1; nothing is left after the last member."""

import os
import threading

import psutil
import pytest

import kit
from kit import networks
from kit.errors import InvalidSpec, KitError, NameInUse, NetworkNotFound
from tests.conftest import http_get, need, unique

REDIS = ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"]


def web(text: str, port: int) -> list[str]:
    """busybox httpd serving ``text`` at / on ``port``."""
    return ["sh", "-c", f"mkdir -p /tmp/w && echo {text} >/tmp/w/index.html && exec httpd -f -p {port} -h /tmp/w"]


def redis_ping(net: str, runtime: str) -> str:
    return kit.run("debian-redis", ["redis-cli", "-h", "cache", "ping"], runtime=runtime, network=net,
                   timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def shop():
    """One network: Redis ``cache`` in gVisor, a busybox httpd ``web`` in runc published on 127.0.0.1."""
    for rt in ("runsc", "runc", "docker"):
        need(rt)
    net = unique("shop")
    port = kit.free_port()
    networks.create(net)
    try:
        kit.start("debian-redis", REDIS, runtime="runsc", name=unique("cache"), hostname="cache", network=net)
        kit.start("busybox", web("hello-from-web", 8080), runtime="runc", name=unique("web"), hostname="web",
                  network=net, ports=[f"{port}:8080"])
        kit.wait_until(lambda: redis_ping(net, "runc") == "PONG", 30, interval=0.3, what="redis in gVisor")
        yield net, port
    finally:
        networks.rm(net, force=True)


@pytest.mark.parametrize("runtime", ["runc", "docker", "lxc", "runsc"])
def test_redis_in_gvisor_answers_by_name(shop, runtime):
    need(runtime)
    net, _ = shop
    assert redis_ping(net, runtime) == "PONG"


# Not from gVisor: busybox wget there (on the host network stack of the namespace) now and then
# reads EAGAIN from a blocking socket ("error getting response"); redis-cli there is fine.
@pytest.mark.parametrize("runtime", ["docker", "lxc"])
def test_web_in_runc_answers_by_name(shop, runtime):
    need(runtime)
    net, _ = shop
    r = kit.run("busybox", ["wget", "-qO-", "http://web:8080/"], runtime=runtime, network=net, timeout=60)
    assert (r.exit_code, r.stdout) == (0, "hello-from-web\n"), r.stderr


def test_published_port_of_a_member_is_on_host_loopback_only(shop):
    net, port = shop
    assert http_get(port, "/") == b"hello-from-web\n"
    listening = [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


def test_members_are_listed_and_names_follow_joins_and_leaves(shop):
    net, _ = shop
    info = networks.inspect(net)
    web_name = next(m["name"] for m in info["members"] if m["hostname"] == "web")
    assert {m["hostname"] for m in info["members"]} == {"cache", "web"}
    row = networks.ls().set_index("name").loc[net]
    assert row["holder"] == info["holder"] and web_name in row["members"]
    assert kit.ps().set_index("name").loc[web_name, "network"] == net
    late = unique("late")
    kit.start("busybox", ["sleep", "300"], runtime="lxc", name=late, network=net)
    try:
        # The running member's /etc/hosts is the network's file, rewritten in place.
        hosts = kit.exec(web_name, ["cat", "/etc/hosts"]).stdout
        assert f"127.0.0.1\t{late}" in hosts and "cache" in hosts
        assert kit.exec(late, ["wget", "-qO-", "http://web:8080/"]).stdout == "hello-from-web\n"
    finally:
        kit.rm(late, force=True)
    assert late not in kit.exec(web_name, ["cat", "/etc/hosts"]).stdout
    # Loopback only: the namespace has no device but lo.
    links = kit.exec(web_name, ["ls", "/sys/class/net"]).stdout.split()
    assert links == ["lo"]


@pytest.mark.slow
def test_vm_and_containers_reach_each_other(shop):
    need("qemu")
    net, _ = shop
    vm, host_port = unique("vmweb"), kit.free_port()
    kit.start("busybox", web("hello-from-vm", 8081), runtime="qemu", name=vm, network=net, expose=[8081],
              ports=[f"{host_port}:8081"])
    try:
        to_ctr = kit.exec(vm, ["wget", "-qO-", "http://web:8080/"], timeout=60)
        assert to_ctr.stdout == "hello-from-web\n", to_ctr.stderr
        hosts = kit.exec(vm, ["cat", "/etc/hosts"]).stdout
        assert f"127.0.0.1\t{vm}" in hosts and f"{networks.GUEST_GATEWAY}\tcache" in hosts
        to_vm = kit.run("busybox", ["wget", "-qO-", f"http://{vm}:8081/"], runtime="docker", network=net, timeout=60)
        assert to_vm.stdout == "hello-from-vm\n", to_vm.stderr
        assert kit.wait_until(lambda: http_get(host_port, "/"), 30) == b"hello-from-vm\n"
        late = unique("late")  # a member that joins after the VM booted is added to the guest's names too
        kit.start("busybox", ["sleep", "300"], runtime="lxc", name=late, network=net)
        try:
            assert f"{networks.GUEST_GATEWAY}\t{late}" in kit.exec(vm, ["cat", "/etc/hosts"]).stdout
        finally:
            kit.rm(late, force=True)
    finally:
        kit.rm(vm, force=True)


def _kit_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("kit-portfwd")}


def _ns_inode(net) -> int:
    return os.stat(net.ns_path).st_ino


def _ns_holders(ino: int) -> list[str]:
    """What still keeps the namespace ``ino`` alive: any process in it, or an fd of this process on it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                found.append(f"process {pid}")
        except OSError:
            continue
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"net:[{ino}]":
                found.append(f"fd {fd}")
        except OSError:
            continue
    return found


def test_last_member_takes_an_auto_network_with_it(names):
    need("runc")
    need("docker")
    net, port = unique("auto"), kit.free_port()
    threads = _kit_threads()
    name = unique("solo")
    names.append(name)
    kit.start("busybox", web("solo", 8080), runtime="runc", name=name, network=net, ports=[f"{port}:8080"])
    n = networks.get(net)
    assert n.auto and n.holder == "docker"
    ino = _ns_inode(n)
    assert _ns_holders(ino)
    assert kit.wait_until(lambda: http_get(port, "/"), 20) == b"solo\n"
    kit.rm(name, force=True)
    assert net not in networks.names()
    client = kit.api.default_session().docker
    assert not client.api.containers(all=True, filters={"id": n.holder_id})
    assert _ns_holders(ino) == [] and not n.dir.exists()
    assert _kit_threads() <= threads
    assert http_get(port, "/") is None


def test_process_holder_and_networks_rm_leave_nothing(names):
    need("runc")
    need("lxc")
    net = unique("proc")
    n = networks.create(net, holder="process")
    holder, ino = psutil.Process(n.pid), _ns_inode(n)
    a, b = unique("a"), unique("b")
    names += [a, b]
    kit.start("busybox", web("from-a", 8080), runtime="runc", name=a, hostname="alpha", network=net)
    kit.start("busybox", ["sleep", "300"], runtime="lxc", name=b, network=net)
    got = kit.wait_until(lambda: kit.exec(b, ["wget", "-qO-", "http://alpha:8080/"]).stdout or None, 20)
    assert got == "from-a\n"
    with pytest.raises(KitError, match="docker cannot join"):
        kit.run("busybox", ["true"], runtime="docker", network=net)
    with pytest.raises(KitError, match="has members"):
        networks.rm(net)
    networks.rm(net, force=True)
    assert net not in networks.names() and not kit.ps()["name"].isin([a, b]).any()
    assert not holder.is_running() or holder.status() == psutil.STATUS_ZOMBIE
    assert _ns_holders(ino) == [] and not n.dir.exists()


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(NetworkNotFound, match="no network named 'nope-x'") as e:
        networks.rm("nope-x")
    assert "\n" not in str(e.value)
    with pytest.raises(NetworkNotFound):
        networks.inspect("nope-x")
    for bad in ("../x", "a/b", "", "-x"):
        with pytest.raises(InvalidSpec):
            networks.create(bad)
    with pytest.raises(InvalidSpec):
        kit.run("busybox", ["true"], runtime="runc", network="a/b")
    with pytest.raises(InvalidSpec, match="'process' cannot join a kit network"):
        kit.run(None, ["true"], runtime="process", network="n1")
    with pytest.raises(KitError, match="holder"):
        networks.create(unique("h"), holder="bridge")
    with pytest.raises(InvalidSpec, match="expose"):
        networks.parse_expose(["80", "http"])
    assert networks.parse_expose("80,443") == [80, 443]
    net = unique("twice")
    networks.create(net, holder="process")
    try:
        with pytest.raises(NameInUse):
            networks.create(net)
    finally:
        networks.rm(net)
    assert net not in networks.names()


def test_magics(ip, capsys):
    need("runc")
    from kit.magics import run_parser

    opts = run_parser("%vm run", "vm").parse_args(["--network", "n", "--expose", "80", "busybox"])
    assert (opts.network, opts.expose) == ("n", ["80"])
    net = unique("mg")
    ip.run_line_magic("container", f"network create {net}")
    try:
        assert net in ip.run_line_magic("container", "network ls")["name"].tolist()
        r = ip.run_line_magic("container", f"run -r runc --network {net} busybox cat /etc/hosts")
        assert "localhost" in r.stdout and r.exit_code == 0
        kit.api.wait_for_teardown()
        assert ip.run_line_magic("container", f"network inspect {net}")["members"] == []
    finally:
        ip.run_line_magic("container", f"network rm {net}")
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="NetworkNotFound"):
        ip.run_line_magic("container", f"network rm {net}")
