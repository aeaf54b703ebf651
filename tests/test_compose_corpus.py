"""A corpus of compose files in the specification's shapes (tests/data/compose-corpus/): each loads and
plans, or is refused in one line with its reason; the resolved model agrees with Debian's
docker-compose 1.29 (``docker-compose config``) on services, images, commands, environment, ports and
volumes; the ones that need no registry run on runc."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

import kit
import kit.compose as compose
from kit.errors import ComposeFileError
from tests.conftest import need, unique

CORPUS = Path(__file__).parent / "data" / "compose-corpus"
ENV = {"CORPUS_DB_USER_PASSWORD": "from-the-environment"}
IMAGES = {"postgres:*": "debian-mariadb", "mariadb:*": "debian-mariadb", "mysql:*": "debian-mariadb"}
#: The files run on runc (their images are kit images; no registry, no fixed host port).
RUN = ["09-env-file.yml", "10-name.yml", "11-profiles.yml", "12-extends-same.yml", "13-extends-other.yml",
       "15-container-options.yml", "16-healthcheck-depends.yml", "17-deploy.yml", "18-network-mode.yml", "19-platform.yml", "21-volumes-long.yml",
       "25-configs-content.yml"]


def _cases():
    files = sorted(p.name for p in CORPUS.glob("*.yml")) + ["dotenv/compose.yml", "merge"]
    return files


def _source(case: str):
    if case == "merge":  # docker compose -f compose.yml -f compose.override.yml
        return [CORPUS / "merge" / "compose.yml", CORPUS / "merge" / "compose.override.yml"]
    return CORPUS / case


def _expect(case: str) -> tuple[str, str]:
    first = _source(case)
    first = first[0] if isinstance(first, list) else first
    m = re.search(r"^# expect: (plan|refused: (.*))$", first.read_text(), re.MULTILINE)
    return ("plan", "") if m is None or m.group(1) == "plan" else ("refused", m.group(2))


@pytest.mark.parametrize("case", _cases())
def test_each_file_plans_or_is_refused_with_its_reason(case):
    kind, reason = _expect(case)
    if kind == "refused":
        with pytest.raises(ComposeFileError) as e:
            compose.read(_source(case), environ=ENV)
        msg = str(e.value)
        assert reason in msg and "\n" not in msg and re.match(r"^\S+:\d+: ", msg), msg
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", compose.ComposeWarning)
        p = compose.read(_source(case), environ=ENV)
    units = compose.plan(p, "runc", images=IMAGES)
    assert sorted(s for u in units for s in u.services) == sorted(p.services)


def test_the_resolved_values(tmp_path):
    """The keys whose meaning the kit computes, each checked once on the corpus."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ops = compose.read(CORPUS / "22-ops-keys.yml", environ=ENV)
    assert len(seen) == 1 and "stdin_open, tty, logging" in str(seen[0].message)   # one warning line
    with pytest.raises(ComposeFileError, match="'stdin_open' of service 'app' is not applied"):
        compose.read(CORPUS / "22-ops-keys.yml", environ=ENV, strict=True)
    assert ops.services["app"].ignored
    env = compose.read(CORPUS / "09-env-file.yml", environ=ENV).services["app"].environment
    assert env == {"APP_ENV": "production", "DEBUG": "1", "QUOTED": "a b"}         # environment over env_file
    d = compose.read(CORPUS / "dotenv" / "compose.yml", environ={"WEB_PORT": "18999"})
    assert d.name == "fromdotenv" and d.services["web"].image == "nginx:1.25"       # .env
    assert d.services["web"].ports == ["18999:80"]                                  # the shell over .env
    m = compose.read(_source("merge"), environ=ENV)
    assert m.services["web"].command == ["httpd", "-f", "-p", "81"] and set(m.services) == {"web", "extra"}
    assert m.services["web"].environment == {"MODE": "override", "KEEP": "yes"}
    assert m.services["web"].ports == ["8080:80", "8081:81"]
    w = compose.read(CORPUS / "12-extends-same.yml", environ=ENV).services["worker"]
    assert w.environment == {"A": "1", "B": "3"} and w.command == ["sleep", "120"]
    prof = compose.read(CORPUS / "11-profiles.yml", environ=ENV)
    assert set(prof.services) == {"app"}
    assert set(compose.read(CORPUS / "11-profiles.yml", environ=ENV, profiles=["debug"]).services) == {"app", "debugger"}
    dep = compose.read(CORPUS / "16-healthcheck-depends.yml", environ=ENV).services
    assert dep["app"].depends_on == {"db": "service_healthy", "migrate": "service_completed_successfully"}
    assert dep["db"].healthcheck.start_period == 20 and dep["db"].healthcheck.start_interval == 1
    with pytest.warns(compose.ComposeWarning, match="app: deploy.resources.reservations.memory"):
        s = compose.read(CORPUS / "17-deploy.yml", environ=ENV).services["app"]
    assert (s.cpus, s.memory, s.restart, s.restart_max) == (0.5, 128 * 2**20, "on-failure", 3)
    ports = compose.read(CORPUS / "20-ports-long.yml", environ=ENV).services["web"].ports
    assert ports == ["8080:80", "8443:443", "9000:9000", "9001:9001", "0:7000", "5001:5000"]


def test_plan_shows_the_network_mapping():
    p = compose.read(CORPUS / "02-reverse-proxy.yml", environ=ENV)
    units = {u.services[0]: u for u in compose.plan(p, "runc", images=IMAGES)}
    assert units["app"].networks == [f"{p.name}_backnet", f"{p.name}_frontnet"]
    assert any("reached on frontnet" in n for n in units["app"].notes)
    assert units["proxy"].networks == [f"{p.name}_frontnet"] and units["db"].networks == [f"{p.name}_backnet"]
    assert any("driver, ipam not applying" in n for n in units["db"].notes)
    assert units["db"].source == "kit image debian-mariadb instead of mariadb:10-focal"
    assert units["app"].source.startswith("built from") and "target prod" in units["app"].source


def _reference(case: str) -> dict | None:
    exe = shutil.which("docker-compose")
    files = _source(case)
    files = files if isinstance(files, list) else [files]
    argv = [exe] + [a for f in files for a in ("-f", str(f))] + ["config"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=files[0].parent, timeout=60,
                       env={"PATH": "/usr/bin:/bin", **ENV})
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def _norm_service(d: dict) -> dict:
    """The keys both print, in one form: command as argv, environment as text, ports as pairs, volumes by target."""
    cmd = d.get("command")
    out = {"image": d.get("image"), "command": shlex.split(cmd) if isinstance(cmd, str) else cmd,
           "environment": {k: str(v) for k, v in (d.get("environment") or {}).items()},
           "ports": sorted(_norm_port(p) for p in d.get("ports") or []),
           "volumes": sorted(_norm_volume(v) for v in d.get("volumes") or [])}
    if out["command"]:
        out["command"] = [c.replace("$$", "$") for c in out["command"]]
    return out


def _norm_port(p) -> tuple:
    if isinstance(p, dict):
        return int(p.get("published") or 0), int(p["target"])
    host, cont = p.removesuffix("/tcp").split(":")[-2:]  # 1.29 prints an address's ports as text
    return int(host), int(cont)


def _norm_volume(v) -> tuple:
    if isinstance(v, dict):
        return (v.get("source") or "", v["target"], bool(v.get("read_only")))
    parts = v.split(":")
    return (parts[0], parts[1], parts[2:] == ["ro"]) if len(parts) > 1 else ("", parts[0], False)


@pytest.mark.parametrize("case", [c for c in _cases() if _expect(c)[0] == "plan"])
def test_config_agrees_with_docker_compose(case):
    first = _source(case)
    first = first[0] if isinstance(first, list) else first
    if "# reference: none" in first.read_text():
        pytest.skip(first.read_text().split("# reference: none", 1)[1].splitlines()[0].strip())
    ref = _reference(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", compose.ComposeWarning)
        ours = compose.config(_source(case), environ=ENV)
    assert set(ours["services"]) <= set(ref["services"])
    for name, svc in ours["services"].items():
        want, got = _norm_service(ref["services"][name]), _norm_service(svc)
        if any(p == 0 for p, _ in want["ports"]):  # Compose leaves it to the engine; the kit picks it at up
            want["ports"] = [(p if p else 0, t) for p, t in want["ports"]]
        assert got == want, name


@pytest.mark.parametrize("case", RUN)
def test_runs_on_runc(case):
    need("runc")
    project = unique("corpus")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", compose.ComposeWarning)
        stack = compose.up(_source(case), runtime="runc", project=project, environ=ENV, timeout=60)
    try:
        table = compose.ps(stack)
        assert len(table) == len(stack.project.services)
        assert set(table.status) <= {"running", "exited (0)"}, table.to_string()
    finally:
        compose.down(project, volumes=True)


def test_restart_is_supervised_and_depends_on_restart_follows():
    need("runc")
    project = unique("corpus")
    text = """
services:
  db:
    image: busybox
    command: ["sh", "-c", "echo db up; while [ ! -e /tmp/crash ]; do sleep 0.2; done; exit 1"]
    restart: on-failure:1
  app:
    image: busybox
    command: sleep 600
    depends_on:
      db: {condition: service_started, restart: true}
"""
    compose.up(text, runtime="runc", project=project)
    try:
        kit.exec(f"{project}-db-1", ["touch", "/tmp/crash"])
        restarts = lambda: compose.ps(project).set_index("service")["restarts"].to_dict()  # noqa: E731
        kit.wait_until(lambda: restarts() == {"db": 1, "app": 1}, 60, what="db's restart and app's after it")
        logs = compose.logs(project)
        assert logs.count("db | db up") == 2 and "app | kit-compose: restarted after db" in logs
        kit.exec(f"{project}-db-1", ["touch", "/tmp/crash"])
        kit.wait_until(lambda: compose.ps(project).set_index("service").loc["db", "status"] == "exited (1)", 60,
                       what="db to stay down: on-failure:1 restarts it once")
        assert restarts() == {"db": 1, "app": 1}
    finally:
        compose.down(project)


def test_kit_compose_config_on_the_command_line(capsys, monkeypatch):
    from kit.cli import main

    monkeypatch.setenv("CORPUS_DB_USER_PASSWORD", "from-the-environment")
    assert main(["compose", "config", "-f", str(CORPUS / "merge" / "compose.yml"),
                 "-f", str(CORPUS / "merge" / "compose.override.yml")]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["services"]["web"]["command"] == ["httpd", "-f", "-p", "81"] and "extra" in out["services"]
    assert main(["compose", "config", str(CORPUS / "29-bad-privileged.yml")]) == 2  # kit compose config FILE
    err = capsys.readouterr().err
    assert "'privileged' of service 'app' is refused" in err and err.count("\n") == 1


def test_start_interval_polls_during_start_period():
    need("runc")
    project = unique("corpus")
    stack = compose.up("""
services:
  a:
    image: busybox
    command: sh -c "sleep 2; touch /tmp/ok; exec sleep 600"
    healthcheck: {test: [CMD, test, -e, /tmp/ok], interval: 120s, start_period: 60s, start_interval: 0.5s}
""", runtime="runc", project=project, timeout=100)
    try:
        # every 120 s, it would be healthy at the second check, 120 s in; every 0.5 s, about 2 s in
        # (a 2-core machine shared with other tests: 30 s of margin)
        assert stack.timings["a"]["healthy"] < 30
    finally:
        compose.down(project)


@pytest.mark.parametrize("runtime", ["runc", "docker"])
def test_secret_from_a_variable_and_config_content_are_mounted_then_gone(runtime):
    need(runtime)
    project = unique("corpus")
    stack = compose.up("""
services:
  a:
    image: busybox
    command: sleep 600
    secrets: [token]
    configs: [greeting]
secrets:
  token: {environment: CORPUS_TOKEN}
configs:
  greeting: {content: hello from a config}
""", runtime=runtime, project=project, environ={"CORPUS_TOKEN": "t0ken-value"})
    where = stack.secrets.dir
    try:
        r = kit.exec(f"{project}-a-1", ["sh", "-c", "cat /run/secrets/token; echo; cat /greeting; echo; "
                                                    "echo x > /run/secrets/token && echo writable"])
        assert r.stdout == "t0ken-value\nhello from a config\n" and where.startswith("/dev/shm/")
        assert "t0ken-value" not in compose.logs(project)
    finally:
        compose.down(project)
    assert not Path(where).exists()
