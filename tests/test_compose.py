"""kit.compose: every supported key honoured, every other key refused by name and line, up all or
nothing, down with and without volumes, the example backend end to end, the bounded HTTP load."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import urllib.request

import pytest

import kit
import kit.compose as compose
from kit.compose import measure
from kit.compose.file import duration, interpolate
from kit.errors import ComposeFileError, ServiceFailed
from tests.conftest import need, unique


def _load(text, **kw):
    return compose.read(text, project="t", **kw)


# ---- the file: each key read, each other key refused ----------------------------------------

def test_every_supported_key_is_read(tmp_path):
    f = tmp_path / "docker-compose.yml"
    f.write_text("""
services:
  web:
    image: busybox
    entrypoint: sh -c
    command: ["echo $$HOME"]
    environment: [A=1, FROM_HOST]
    ports: ["127.0.0.1:18001:80", "18002:81/tcp"]
    expose: [82]
    volumes: [data:/data, ./site:/site:ro, {type: volume, source: data, target: /more, read_only: true}]
    depends_on:
      db: {condition: service_healthy}
    working_dir: /site
    mem_limit: 64m
  db:
    image: busybox
    command: httpd -f
    environment: {B: 2, C: true}
    depends_on: [cache]
    healthcheck: {test: ["CMD", "true"], interval: 1m30s, timeout: 500ms, retries: 4}
    deploy: {resources: {limits: {memory: 32m}}}
    x-kit-runtime: qemu
  cache:
    image: busybox
    healthcheck: {test: "exit 0"}
    x-kit-packages: [redis-server]
    x-kit-colocate: data
    x-note: ignored, as the Compose specification says of extensions
volumes: {data: }
networks: {default: }
""")
    p = compose.read(f, environ={"FROM_HOST": "h"})
    web, db, cache = p.services["web"], p.services["db"], p.services["cache"]
    assert web.argv() == ["sh", "-c", "echo $HOME"]
    assert web.environment == {"A": "1", "FROM_HOST": "h"}
    assert web.ports == ["18001:80", "18002:81"] and web.expose == [82]
    assert web.volumes == [("data", "/data", False, "volume"), (str(tmp_path / "site"), "/site", True, "bind"),
                           ("data", "/more", True, "volume")]
    assert web.depends_on == {"db": "service_healthy"} and db.depends_on == {"cache": "service_started"}
    assert web.working_dir == "/site" and web.memory == 64 * 2**20 and db.memory == 32 * 2**20
    assert db.command == ["httpd", "-f"] and db.environment == {"B": "2", "C": "true"}
    assert (db.healthcheck.test, db.healthcheck.interval, db.healthcheck.timeout, db.healthcheck.retries) == \
        (["true"], 90.0, 0.5, 4)
    assert cache.healthcheck.test == ["/bin/sh", "-c", "exit 0"] and cache.healthcheck.retries == 3
    assert db.runtime == "qemu" and cache.packages == ["redis-server"] and cache.colocate == "data"
    assert p.order() == ["cache", "db", "web"]
    assert set(p.volumes) == {"data"} and set(p.networks) == {"default"}


@pytest.mark.parametrize("snippet, key, line", [
    ("    privileged: true\n", "privileged", 4),
    ("    devices: [/dev/kvm]\n", "devices", 4),
    ("    security_opt: [seccomp:unconfined]\n", "security_opt", 4),
    ("    pid: host\n", "pid", 4),
    ("    network_mode: host\n", "network_mode", 4),
    ("    deploy: {replicas: 2}\n", "deploy", 4),
    ("    depends_on: {b: {condition: service_started, nope: true}}\n", "nope", 4),
    ("    x-kit-runtim: runc\n", "x-kit-runtim", 4),
])
def test_an_unsupported_key_names_key_service_and_line(snippet, key, line):
    text = "services:\n  a:\n    image: busybox\n" + snippet + "  b:\n    image: busybox\n"
    with pytest.raises(ComposeFileError) as e:
        _load(text)
    msg = str(e.value)
    assert f":{line}:" in msg and repr(key) in msg and "'a'" in msg and "\n" not in msg


@pytest.mark.parametrize("text, said", [
    ("services:\n  a:\n    image: busybox\ninclude: [x.yml]\n", "top-level key 'include'"),
    ("services:\n  a:\n    command: x\n", "no 'image:'"),
    ("services:\n  a:\n    image: busybox\n    depends_on: [b]\n", "depends on 'b'"),
    ("services:\n  a:\n    image: busybox\n    depends_on: [b]\n  b:\n    image: busybox\n    depends_on: [a]\n",
     "cycle: a -> b -> a"),
    ("services:\n  a:\n    image: busybox\n    volumes: [data:/d]\n", "not declared"),
    ("services:\n  a:\n    image: busybox\n    ports: ['53:53/udp']\n", "TCP only"),
    ("services:\n  a:\n    image: busybox\n    healthcheck: {test: [CMD], interval: 5x}\n", "test must be"),
    ("services:\n  a:\n    image: busybox\n    depends_on: {b: {condition: service_done}}\n"
     "  b:\n    image: busybox\n", "condition 'service_done'"),
    ("services:\n  a:\n    image: busybox\n    command: ${NOPE}\n", "variable 'NOPE' is not set"),
    ("services: [\n", "not valid YAML"),
])
def test_bad_files_are_refused_in_one_line(text, said):
    with pytest.raises(ComposeFileError) as e:
        _load(text, environ={})
    assert said in str(e.value) and "\n" not in str(e.value)


def test_durations_and_interpolation():
    assert duration("1m30s") == 90 and duration("500ms") == 0.5 and duration(3) == 3.0
    with pytest.raises(ValueError):
        duration("5 seconds")
    assert interpolate("${A:-x}-$B-$$C-${D-y}", {"B": "b"}) == "x-b-$C-y"


def test_plan_groups_and_runtimes():
    p = compose.read(compose.EXAMPLE, project="t")
    units = compose.plan(p, "runc", runtimes={"db": "qemu", "cache": "qemu"}, colocate={"data": ["db", "cache"]})
    assert [(u.name, u.services, u.runtime) for u in units] == [
        ("t-data-1", ["cache", "db"], "qemu"), ("t-backend-1", ["backend"], "runc")]
    with pytest.raises(ComposeFileError, match="mixes runtimes"):
        compose.plan(p, "runc", runtimes={"db": "qemu"}, colocate={"data": ["db", "cache"]})
    assert [u.name for u in compose.plan(p, "qemu", colocate=True)] == ["t-all-1"]


# ---- running it ---------------------------------------------------------------------------

STACK = """
services:
  web:
    image: busybox
    entrypoint: ["sh", "-c"]
    command: ["echo \\"$$GREETING from $$(pwd)\\" > /site/index.html; cat /site/index.html; exec httpd -f -p 8080 -h /site"]
    environment: {GREETING: hello}
    working_dir: /tmp
    ports: ["${PORT}:8080"]
    volumes: [site:/site, "${HOSTDIR}:/host:ro"]
    mem_limit: 48m
    depends_on:
      store: {condition: service_healthy}
  store:
    image: busybox
    command: sh -c "touch /tmp/ready-later; sleep 1; touch /tmp/ready; exec sleep 600"
    deploy: {resources: {limits: {memory: 40m}}}
    healthcheck: {test: ["CMD-SHELL", "test -e /tmp/ready"], interval: 0.2s, timeout: 5s, retries: 100}
volumes: {site: }
"""


def _get(port, path="/index.html", timeout=30.0):
    """GET a published page once it answers: compose's up returns when a service has started (as
    docker compose does), not when its server listens; until then the kit's forwarder accepts and
    the inner connection is refused, which the client sees as a closed connection."""
    def answer():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()

    return kit.wait_until(answer, timeout, interval=0.05, what=f"an answer on 127.0.0.1:{port}{path}",
                          ignoring=(OSError, http.client.HTTPException))


@pytest.mark.parametrize("runtime", ["runc"])
def test_up_honours_each_key_and_down_keeps_named_volumes(runtime, tmp_path):
    need(runtime)
    (tmp_path / "f.txt").write_text("from the host")
    f = tmp_path / "docker-compose.yml"
    f.write_text(STACK)
    project, port = unique("kc"), kit.free_port()
    env = {"PORT": str(port), "HOSTDIR": str(tmp_path)}
    stack = compose.up(f, runtime=runtime, project=project, environ=env)
    try:
        t = stack.timings
        assert t["store"]["healthy"] < t["web"]["started"]  # service_healthy waited for
        assert _get(port) == "hello from /tmp\n"               # entrypoint, command, environment, working_dir, ports
        web, store = f"{project}-web-1", f"{project}-store-1"
        assert set(compose.ps(project).instance) == {web, store}
        assert "web | hello from /tmp" in compose.logs(project, "web")
        assert kit.exec(web, ["cat", "/host/f.txt"]).stdout == "from the host"        # bind volume
        assert kit.exec(web, ["sh", "-c", "echo x > /host/f.txt"]).exit_code != 0      # :ro
        hosts = kit.exec(store, ["cat", "/etc/hosts"]).stdout.split()
        assert "web" in hosts and web in hosts                                       # one network, by name
        # the runtimes enforce a limit (their own tests); compose's part is to pass the right one
        assert [kit.api.get(n).state.spec.memory for n in (web, store)] == [48 * 2**20, 40 * 2**20]  # mem_limit, deploy
        assert f"{project}_default" in kit.networks.names()
    finally:
        compose.down(project)
    assert f"{project}_site" in kit.volumes.names() and f"{project}_default" not in kit.networks.names()
    assert not [n for n in kit.ps().name if n.startswith(project)]
    stack = compose.up(f, runtime=runtime, project=project, environ=env, wait=False)
    try:
        compose.measure.first_response(f"http://127.0.0.1:{port}/index.html", timeout=30)
    finally:
        compose.down(project, volumes=True)
    assert f"{project}_site" not in kit.volumes.names()


@pytest.mark.parametrize("runtime", ["runc"])
def test_up_is_all_or_nothing(runtime):
    need(runtime)
    text = """
services:
  ok:
    image: busybox
    command: sleep 600
  sick:
    image: busybox
    command: sh -c "echo about to be unhealthy; exec sleep 600"
    healthcheck: {test: ["CMD", "false"], interval: 0.1s, timeout: 5s, retries: 2}
  after:
    image: busybox
    command: sleep 600
    depends_on: {sick: {condition: service_healthy}}
"""
    project = unique("kc")
    with pytest.raises(ServiceFailed) as e:
        compose.up(text, runtime=runtime, project=project, timeout=3)
    assert e.value.service == "sick" and "'sick'" in str(e.value) and "about to be unhealthy" in str(e.value)
    assert not [n for n in kit.ps().name if n.startswith(project)]
    assert f"{project}_default" not in kit.networks.names()
    with pytest.raises(kit.KitError, match="no compose project"):
        compose.ps(project)


def test_a_refused_key_starts_nothing():
    project = unique("kc")
    before = set(kit.ps().name)
    with pytest.raises(ComposeFileError, match="'privileged' of service 'b'"):
        compose.up("services:\n  a:\n    image: busybox\n    command: sleep 60\n  b:\n    image: busybox\n"
                   "    privileged: true\n", runtime="runc", project=project)
    assert set(kit.ps().name) == before


@pytest.mark.parametrize("runtime", ["runc"])
def test_example_backend_colocated_counts_in_redis_and_mariadb(runtime):
    need(runtime)
    project, port = unique("kc"), kit.free_port()
    compose.up(compose.EXAMPLE, runtime=runtime, project=project, colocate=True, environ={"BACKEND_PORT": str(port)})
    try:
        first = json.loads(_get(port, "/"))
        second = json.loads(_get(port, "/"))
        assert second["redis_hits"] == first["redis_hits"] + 1 and second["db_visits"] == first["db_visits"] + 1
        mem = measure.memory(project)
        assert len(mem) == 1 and mem.pss.iloc[0] > 20e6  # redis + mariadb + python: tens of MB at least
        assert mem.partial.iloc[0] == ""  # root reads every process: the figures are whole
        disk = measure.disk(project)
        assert set(disk.part) == {"image", "instance", "volume"}
        assert disk[disk.part == "volume"].bytes.sum() > 1e6  # MariaDB's system tables live in the volume
    finally:
        compose.down(project, volumes=True)


# ---- memory: a partial figure says so ------------------------------------------------------

def _rows(monkeypatch, own_unreadable: bool, monitor_unreadable: bool) -> list[dict]:
    """kit.bench.footprint.instance_rows of an instance with two own processes (pids 1, 2) and a monitor
    (pid 3), any of them unreadable as for a rootless user reading root's: the readings are given,
    the rows are the module's own."""
    from kit.bench import footprint as mem

    def proc(pid, pss):
        return {"pid": pid, "name": f"p{pid}", "pss": pss, "uss": pss // 2, "rss": pss * 2}

    denied = {"name": "p2", "why": "access denied: smaps"}
    readings = {(1, 2): mem.Reading(procs=[proc(1, 5_000_000)] + ([] if own_unreadable else [proc(2, 3_000_000)]),
                                    unreadable=[{"pid": 2, **denied}] if own_unreadable else []),
                (3,): mem.Reading(procs=[] if monitor_unreadable else [proc(3, 1_000_000)],
                                  unreadable=[{"pid": 3, "name": "runc", "why": "access denied: smaps"}]
                                  if monitor_unreadable else [])}
    monkeypatch.setattr(mem, "split_pids", lambda rt, inst: ([1, 2], [3]))
    monkeypatch.setattr(mem, "read", lambda pids: readings[tuple(pids)])

    class NoCgroup:
        def cgroup_path(self, inst):
            return None

    return mem.instance_rows(NoCgroup(), None)


def test_memory_row_is_nan_and_says_why_for_a_partial_figure(monkeypatch):
    import math

    import pandas as pd

    whole = measure.memory_row(_rows(monkeypatch, False, False))
    assert whole == {"pss": 8e6, "uss": 4e6, "monitor_pss": 1e6, "partial": ""}
    own = measure.memory_row(_rows(monkeypatch, True, False))
    assert math.isnan(own["pss"]) and math.isnan(own["uss"]) and own["monitor_pss"] == 1e6
    assert own["partial"].startswith("pss, uss: partial: 1 of 2 processes") and "2 p2 (access denied" in own["partial"]
    # the monitor unreadable: no monitor_pss row at all, only the failed row names the figure
    monitor = measure.memory_row(_rows(monkeypatch, False, True))
    assert monitor["pss"] == 8e6 and math.isnan(monitor["monitor_pss"])
    assert monitor["partial"].startswith("monitor_pss: partial: 1 of 1 processes") and "3 runc" in monitor["partial"]
    both = measure.memory_row(_rows(monkeypatch, True, True))
    assert both["partial"].count("partial:") == 2
    # a stack's total over the table cannot pass for the whole
    table = pd.DataFrame([whole, own])
    assert math.isnan(table.pss.sum(skipna=False)) and table.monitor_pss.sum(skipna=False) == 2e6


# ---- the bounded load --------------------------------------------------------------------

def test_http_load_counts_every_request_and_its_errors():
    hits = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200 if self.path == "/" else 500)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        r = measure.http_load(url + "/", requests=37, concurrency=5)
        assert (r["requests"], r["errors"], len(r["latencies_ms"]), len(hits)) == (37, 0, 37, 37)
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["rps"] > 0
        assert measure.http_load(url + "/bad", requests=4, concurrency=8)["errors"] == 4
        assert measure.first_response(url + "/", timeout=5) >= 0
    finally:
        srv.shutdown()
    with pytest.raises(kit.errors.InvalidSpec):
        measure.http_load("http://10.0.0.1/", requests=1)
    assert measure.percentile([1, 2, 3, 4], 50) == 2.5 and measure.percentile([5], 99) == 5


def test_compose_magic_is_a_thin_layer(ip, tmp_path, capsys):
    from IPython.core.error import UsageError

    need("runc")
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  one:\n    image: busybox\n    command: sh -c 'echo said-one; exec sleep 600'\n")
    project = unique("kc")
    table = ip.run_line_magic("compose", f"up -f {f} -r runc -p {project}")
    try:
        assert list(table.instance) == [f"{project}-one-1"] and list(table.status) == ["running"]
        assert list(ip.run_line_magic("compose", f"ps -p {project}").service) == ["one"]
        kit.wait_until(lambda: "said-one" in compose.logs(project), 10, what="the service's output")
        ip.run_line_magic("compose", f"logs one -p {project}")
        assert "one | said-one" in capsys.readouterr().out
    finally:
        assert list(ip.run_line_magic("compose", f"down -p {project} -v")) == [f"{project}-one-1"]
    f.write_text("services:\n  one:\n    image: busybox\n    privileged: true\n")
    with pytest.raises(UsageError, match="'privileged' of service 'one'"):
        ip.run_line_magic("compose", f"up -f {f} -r runc")
    with pytest.raises(UsageError, match="invalid choice"):
        ip.run_line_magic("compose", "sideways")


def test_compose_magic_passes_files_images_profiles_and_strict(ip, tmp_path, capsys):
    """``%compose`` is as thin over up/config as ``kit compose``: -f twice merges in order, --image
    substitutes a kit image for a registry one, --profile starts a profile's service, --strict refuses."""
    from IPython.core.error import UsageError

    need("runc")
    base, over = tmp_path / "compose.yml", tmp_path / "compose.override.yml"
    base.write_text("services:\n  one:\n    image: registry.invalid/thing:2\n"
                    "    command: sh -c 'echo one-says-$$WORD; exec sleep 600'\n    environment: {WORD: base}\n"
                    "  extra:\n    image: busybox\n    profiles: [more]\n    command: sleep 600\n")
    over.write_text("services:\n  one:\n    environment: {WORD: override}\n    stdin_open: true\n")
    files = f"-f {base} -f {over}"
    ip.run_line_magic("compose", f"config {files} --profile more -p cfg")
    out = capsys.readouterr().out
    assert "WORD: override" in out and "extra:" in out and "registry.invalid/thing:2" in out
    ip.run_line_magic("compose", f"config {files} -p cfg")
    assert "extra:" not in capsys.readouterr().out  # no profile: the profile's service is left out
    with pytest.raises(UsageError, match=r"^ComposeFileError: .*'stdin_open'") as err:
        ip.run_line_magic("compose", f"config {files} --strict")
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match=r"^%compose: --image 'busybox': give PATTERN=KIT_IMAGE") as err:
        ip.run_line_magic("compose", f"up {files} -r runc --image busybox")
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="'stdin_open'"):
        ip.run_line_magic("compose", f"up {files} -r runc --strict --image 'registry.invalid/*=busybox'")
    assert kit.ps().empty  # refused before anything starts
    project = unique("kc")
    table = ip.run_line_magic("compose", f"up {files} -r runc -p {project} --profile more "
                                         f"--image 'registry.invalid/thing:*=busybox'")
    try:
        assert sorted(table.service) == ["extra", "one"] and set(table.status) == {"running"}
        kit.wait_until(lambda: "one-says-override" in compose.logs(project), 10, what="the merged environment")
    finally:
        ip.run_line_magic("compose", f"down {files} -p {project} -v")
