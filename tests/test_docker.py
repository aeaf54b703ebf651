"""The Docker runtime against the real local daemon."""

from __future__ import annotations

import secrets
import socket
import threading
import time

import psutil
import pytest

import kit
from kit import config
from kit._proc import wait_until
from kit.bench import footprint
from kit.cgroups import Cgroup
from kit.errors import CommandNotFound, KitError, NameInUse
from kit.images import engine
from kit.spec import RunSpec
from tests.conftest import http_get, need


@pytest.fixture(scope="module")
def rt():
    need("docker")
    return kit.runtimes.get("docker")


@pytest.fixture(scope="module")
def client(rt):
    with engine.connected() as client:
        yield client


@pytest.fixture
def names(client):
    """Unique instance names; whatever a test started under them is removed afterwards."""
    made: list[str] = []

    def new() -> str:
        made.append(f"dt-{secrets.token_hex(3)}")
        return made[-1]

    yield new
    kit.api.wait_for_teardown()
    for name in made:
        try:
            kit.rm(name, force=True)
        except KitError:
            pass
        for c in client.containers.list(all=True, filters={"label": [f"kit.name={name}",
                                                                      f"kit.session={config.SESSION_ID}"]}):
            c.remove(force=True, v=True)


class BridgeWatch:
    """Every container of this session the daemon starts, inspected as it starts (Docker's event
    stream), and every Docker network one joins: the evidence that no kit container ever has an
    address on a Docker network (the project's network rule: loopback only)."""

    def __init__(self, client):
        self.client = client
        self.ours: set[str] = set()          # container ids created with this session's label
        self.inspected: dict[str, dict] = {}  # id -> {"name", "ip", "networks"}
        self.offences: list[str] = []
        self._stream = client.api.events(decode=True, filters={"type": ["container", "network"]})
        self._thread = threading.Thread(target=self._run, name="bridge-watch", daemon=True)
        self._thread.start()

    def _run(self):
        import docker

        try:
            for ev in self._stream:
                actor = ev.get("Actor") or {}
                attrs = actor.get("Attributes") or {}
                if ev.get("Type") == "container" and ev.get("Action") == "create" \
                        and attrs.get("kit.session") == config.SESSION_ID:
                    self.ours.add(actor.get("ID"))
                elif ev.get("Type") == "container" and ev.get("Action") == "start" and actor.get("ID") in self.ours:
                    try:
                        self.note(self.client.api.inspect_container(actor["ID"]))
                    except docker.errors.NotFound:
                        pass  # a quick run already removed; its network events still count
                elif ev.get("Type") == "network" and ev.get("Action") == "connect" \
                        and attrs.get("container") in self.ours and attrs.get("name") != "none":
                    self.offences.append(f"container {attrs['container'][:12]} joined Docker network {attrs['name']!r}")
        except Exception:  # the stream closed by stop()
            pass

    def note(self, attrs: dict) -> None:
        ns = attrs.get("NetworkSettings") or {}
        nets = ns.get("Networks") or {}
        ips = [n.get("IPAddress") for n in nets.values() if n.get("IPAddress")]
        self.inspected[attrs["Id"]] = {"name": attrs["Name"], "ip": ns.get("IPAddress") or "", "networks": set(nets)}
        if ns.get("IPAddress") or ips or not set(nets) <= {"none"}:
            self.offences.append(f"{attrs['Name']} has Docker network address(es) {ns.get('IPAddress')!r} {ips} "
                                 f"on {sorted(nets)}")

    def stop(self):
        self._stream.close()


@pytest.fixture(scope="module")
def bridge_watch(client):
    watch = BridgeWatch(client)
    yield watch
    watch.stop()


@pytest.fixture(autouse=True)
def no_docker_network_addresses(client, bridge_watch):
    """After every test of this module: no container of this session ever had a Docker network address."""
    yield
    import docker

    for c in client.api.containers(all=True, filters={"label": f"kit.session={config.SESSION_ID}"}):
        try:
            bridge_watch.note(client.api.inspect_container(c["Id"]))
        except docker.errors.NotFound:  # removed meanwhile
            pass
    found, bridge_watch.offences = bridge_watch.offences, []  # each test answers for its own
    assert found == []


def containers_named(client, name):
    kit.api.wait_for_teardown()  # a finished foreground run is removed in the background
    return client.containers.list(all=True, filters={"label": f"kit.name={name}"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_reports_daemon_version(rt):
    a = rt.availability()
    assert a.available and a.version and a.kind == "container"


def test_echo_hello(rt, names, client):
    name = names()
    r = kit.run("busybox", ["echo", "hello"], runtime="docker", name=name)
    assert (r.stdout, r.stderr, r.exit_code) == ("hello\n", "", 0)
    # The clock starts at the request; the image check is Docker's preparation, and the
    # launch is the create call (docker run = create + start), as runc's is its spawn.
    order = ["requested", "image_ready", "launched", "created", "started", "exited"]
    assert [r.phases[p] for p in order] == sorted(r.phases[p] for p in order), r.phases
    assert containers_named(client, name) == []  # a foreground run is removed, as docker run --rm


def test_concurrent_runs_from_threads_keep_their_own_output(rt, names):
    # The attach threads are the instance's (inst.threads), not a dict on the shared runtime.
    tags = [names() for _ in range(4)]
    got, errors = {}, []

    def run(tag):
        try:
            got[tag] = kit.run("busybox", ["sh", "-c", f"echo {tag}; echo {tag}-err >&2"], runtime="docker",
                               name=tag).stdout
        except Exception as e:  # reported below: a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert got == {t: f"{t}\n" for t in tags}


def test_harden_false_lifts_the_seccomp_filter(rt, names):
    # Seccomp mode 2 is a filter; a masked /proc/keys is /dev/null bound over it
    probe = ["sh", "-c", "grep ^Seccomp: /proc/self/status; ls -l /proc/keys | cut -c1"]
    hardened = kit.run("busybox", probe, runtime="docker", name=names())
    plain = kit.run("busybox", probe, runtime="docker", name=names(), harden=False)
    assert hardened.stdout.split() == ["Seccomp:", "2", "c"]  # Docker's default filter; keys masked
    assert plain.stdout.split() == ["Seccomp:", "0", "-"]


def test_exit_code_and_separate_stderr(rt, names):
    r = kit.run("busybox", ["sh", "-c", "echo out; echo err >&2; exit 3"], runtime="docker", name=names())
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_output_streams_as_it_comes(rt, names):
    seen = []
    r = kit.run("busybox", ["sh", "-c", "echo one; echo two >&2"], runtime="docker", name=names(),
                stream=lambda label, data: seen.append((label, data)))
    assert ("stdout", b"one\n") in seen and ("stderr", b"two\n") in seen
    assert r.stdout == "one\n"


def test_metacharacters_reach_the_command_literally(rt, names):
    r = kit.run("busybox", ["echo", "$HOME; rm -rf / `x` 'q'"], runtime="docker", name=names())
    assert r.stdout == "$HOME; rm -rf / `x` 'q'\n"


def test_env_workdir_and_limits_are_applied(rt, names, client):
    name = names()
    kit.start("busybox", ["sleep", "300"], runtime="docker", name=name, env={"FOO": "bar baz"},
              workdir="/tmp", memory="48m", cpus=0.5)
    r = kit.exec_(name, ["sh", "-c", 'echo "$FOO"; pwd'])
    assert r.stdout == "bar baz\n/tmp\n"
    (c,) = containers_named(client, name)
    host = c.attrs["HostConfig"]
    assert host["Memory"] == 48 * 2**20 and host["MemorySwap"] == 48 * 2**20  # no swap beyond the limit
    assert host["NanoCpus"] == 500_000_000
    assert host["NetworkMode"] == "none"
    assert c.labels["kit.session"] == config.SESSION_ID and c.labels["kit.managed"] == "1"


def test_memory_limit_kills_and_says_out_of_memory(rt, names):
    # Docker's OOMKilled is containerd's OOM event, which containerd drops when the container's cgroup
    # is already gone as it reads the event: a container OOM-killed as its PID 1 and gone at once is
    # now and then reported exit 137 without it (containerd#8180; once in ~6 runs of this suite here).
    # The kit relays the daemon's verdict, so the victim here is a child of the container's shell,
    # which outlives it by a second: the event arrives while the group still exists.
    r = kit.run("busybox", ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M count=1; s=$?; sleep 1; exit $s"],
                runtime="docker", name=names(), memory="32m")
    assert r.oom_killed and r.exit_code == 137


def test_detached_sleep_is_listed_stops_and_is_removed(rt, names, client):
    name = names()
    r = kit.start("busybox", ["sleep", "300"], runtime="docker", name=name)
    assert r.result().detached and r.status == "running"
    row = kit.ps().set_index("name").loc[name]
    assert row["runtime"] == "docker" and row["status"] == "running"
    _h = kit.api.get(name)
    runtime, inst = _h.backend, _h.state
    pids = runtime.pids(inst)
    assert inst.info["pid"] in pids
    assert runtime.cgroup_path(inst) is not None and runtime.cgroup_path(inst).exists()
    t0 = time.monotonic()
    kit.stop(name, timeout=1)
    assert time.monotonic() - t0 < 5
    assert not runtime.running(inst)
    kit.rm(name)
    assert containers_named(client, name) == []
    assert not inst.state_dir.exists()
    assert not [x for x in runtime.sweep(config.SESSION_ID, dry_run=True) if name in x]


def test_daemon_owns_its_cgroup_and_shim_the_kit_only_reads_them(rt, names, client, monkeypatch):
    name = names()
    kit.start("busybox", ["sleep", "300"], runtime="docker", name=name, memory="48m")
    _h = kit.api.get(name)
    runtime, inst = _h.backend, _h.state
    path = runtime.cgroup_path(inst)
    assert inst.cgroup is None  # never adopted: Runtime.remove destroys inst.cgroup
    usage, working_set = footprint.cgroup_memory(path)
    assert usage > 0 and working_set is not None  # still measured, through cgroup_path
    assert inst.info["pid"] in Cgroup(inst.info["docker_cgroup"]).pids()
    # the containerd shim supervises the container: one of its pids, reported apart as its monitor
    (shim,) = runtime.monitor_pids(inst)
    assert shim in runtime.pids(inst) and shim not in Cgroup(inst.info["docker_cgroup"]).pids()
    assert psutil.Process(shim).name().startswith("containerd-shim")
    destroyed = []
    monkeypatch.setattr(Cgroup, "destroy", lambda self, timeout=5.0: destroyed.append(self.rel))
    kit.rm(name, force=True)
    assert destroyed == []  # the kit removed no cgroup: the daemon removes its own
    wait_until(lambda: not path.exists(), 10, what="the daemon removing the container's cgroup")
    assert containers_named(client, name) == []


def test_published_port_reaches_a_server_inside(rt, names, client, bridge_watch):
    name, port = names(), free_port()
    kit.start("busybox", ["sh", "-c", "mkdir -p /www && echo served-by-docker > /www/index.html && "
                                      "exec httpd -f -p 80 -h /www"],
              runtime="docker", name=name, ports=[f"{port}:80"])
    (c,) = containers_named(client, name)
    # No network of Docker's: no bridge, no 172.x address, no docker-proxy; the kit's forwarder
    # publishes 127.0.0.1:port into the container's own loopback.
    assert c.attrs["HostConfig"]["NetworkMode"] == "none" and not c.attrs["HostConfig"]["PortBindings"]
    assert c.attrs["NetworkSettings"]["IPAddress"] == "" and set(c.attrs["NetworkSettings"]["Networks"]) == {"none"}
    _h = kit.api.get(name)
    _, inst = _h.backend, _h.state
    assert inst.forwarder.netns == f"/proc/{c.attrs['State']['Pid']}/ns/net"
    assert not [p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "docker-proxy" and str(port) in (p.info["cmdline"] or [])]

    def fetch():
        return http_get(port, "/")

    assert wait_until(fetch, timeout=15, interval=0.1, what="httpd answering") == b"served-by-docker\n"
    # The watcher saw it start and inspected it (so its check is not vacuous).
    wait_until(lambda: c.id in bridge_watch.inspected, 10, what="the event watcher inspecting the container")
    assert bridge_watch.inspected[c.id]["networks"] == {"none"}


def test_a_foreground_run_publishes_its_ports_too(rt, names):
    name, port = names(), free_port()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=kit.run(
        "busybox", ["sh", "-c", "echo answer | nc -l -p 80"], runtime="docker", name=name,
        ports=[f"{port}:80"], timeout=60)))
    t.start()

    def answer():
        # Until nc listens inside, the forwarder accepts and closes at once (an empty read).
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(64) or None
        except OSError:
            return None

    try:
        assert wait_until(answer, timeout=30, interval=0.05, what="nc answering through the port") == b"answer\n"
    finally:
        t.join(60)
    r = result["r"]
    assert r.exit_code == 0 and r.info["prepare_ms"]["forwarder"] >= 0


def test_hostname_and_pid_namespace_are_the_containers_own(rt, names):
    r = kit.run("busybox", ["sh", "-c", "hostname; echo $$"], runtime="docker", name=names(), hostname="inside")
    host, pid = r.stdout.split()
    assert host == "inside" != socket.gethostname()
    assert pid == "1"


def test_timeout_kills_and_leaves_nothing(rt, names, client):
    name = names()
    t0 = time.monotonic()
    r = kit.run("busybox", ["sleep", "30"], runtime="docker", name=name, timeout=1)
    assert r.timed_out and r.exit_code == 124
    assert time.monotonic() - t0 < 10
    assert containers_named(client, name) == []


def test_detached_logs_come_from_the_daemon(rt, names):
    name = names()
    kit.start("busybox", ["sh", "-c", "echo up; echo warn >&2; exec sleep 300"], runtime="docker", name=name)
    wait_until(lambda: kit.logs(name).stdout == "up\n", timeout=10, what="the service's first line")
    assert kit.logs(name).stderr == "warn\n"


def test_exec_returns_code_and_output(rt, names):
    name = names()
    kit.start("busybox", ["sleep", "300"], runtime="docker", name=name)
    r = kit.exec_(name, ["sh", "-c", "echo in; echo e >&2; exit 4"])
    assert (r.exit_code, r.stdout, r.stderr) == (4, "in\n", "e\n")


def test_image_is_imported_once_and_labelled(rt, client):
    img = kit.images.get("busybox")
    ref = engine.ensure_in_docker(client, img)
    assert ref == engine.engine_ref(img) and ref.startswith("kit/busybox:")
    assert engine.ensure_in_docker(client, img) == ref
    labels = client.images.get(ref).labels
    assert labels["kit.image"] == img.id and labels["kit.managed"] == "1"


def test_name_taken_at_the_daemon_is_name_in_use(rt, names, client):
    name = names()
    ref = engine.ensure_in_docker(client, kit.images.get("busybox"))
    s = kit.api.default_session()
    client.containers.create(ref, ["true"], name=f"kit-{s.owner}-{s.id}-{name}", network_mode="none",
                             labels={"kit.name": name, "kit.session": config.SESSION_ID})
    with pytest.raises(NameInUse, match="already exists"):
        kit.run("busybox", ["true"], runtime="docker", name=name)


def test_daemon_command_not_found_maps_to_command_not_found(rt, names, client):
    # The API checks commands before starting; the runtime must say the same if the daemon is asked.
    name = names()
    inst = rt.new_instance(RunSpec(image="busybox", command=["/no/such/cmd"], name=name), kit.images.get("busybox"),
                           kit.api.default_session().context)
    try:
        with pytest.raises(CommandNotFound, match="not found"):
            rt.start(inst)
        assert containers_named(client, name) == []
    finally:
        rt.remove(inst)


def test_sweep_removes_what_a_dead_session_left(rt, client):
    session = f"deadtest{secrets.token_hex(3)}"
    ref = engine.ensure_in_docker(client, kit.images.get("busybox"))
    c = client.containers.run(ref, ["sleep", "300"], name=f"kit-{session}-svc", detach=True, network_mode="none",
                              labels={"kit.session": session, "kit.name": "svc", "kit.managed": "1"})
    try:
        assert rt.sweep(session, dry_run=True) == [f"docker container kit-{session}-svc"]
        assert c.reload() is None and c.status == "running"  # a dry run touches nothing
        assert rt.sweep(session) == [f"docker container kit-{session}-svc"]
        assert rt.sweep(session, dry_run=True) == []
    finally:
        for left in client.containers.list(all=True, filters={"label": f"kit.session={session}"}):
            left.remove(force=True, v=True)


def test_a_container_whose_process_is_gone_has_nothing_to_publish_while_the_daemon_still_says_running(rt, monkeypatch):
    """A quick command with a published port: its process exits before the kit enters its namespace, and
    the daemon may say Running a moment longer (a fresh make test met it once: StartFailed instead of the
    command's result). No namespace left means no process left."""
    import subprocess
    from types import SimpleNamespace

    gone = subprocess.Popen(["true"])
    gone.wait()
    inst = SimpleNamespace(info={"pid": gone.pid, "container_id": "x"}, spec=SimpleNamespace(ports=[(free_port(), 80)]))
    monkeypatch.setattr(type(rt), "running", lambda self, i: True)  # the daemon's late word
    assert rt._publish(inst) is None
