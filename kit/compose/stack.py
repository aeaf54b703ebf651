"""``up``, ``down``, ``ps``, ``logs``: a compose project started through the kit's public API only.

>>> import kit
>>> stack = kit.compose.up("docker-compose.yml", runtime="runc", project="shop")
>>> kit.compose.ps("shop")           # one row per service
>>> kit.compose.down("shop")         # named volumes kept; volumes=True removes them too

Each service becomes one instance named ``<project>-<service>-1`` (or its ``container_name``); each
compose network is a kit network ``<project>_<net>`` (``<project>_default`` when a service names
none) where members reach each other by service name, and a service on several networks is reached
on the others through :mod:`kit.compose.bridge`; a top-level volume ``data`` is the kit volume
``<project>_data`` (as Compose names them). Services start in ``depends_on`` order; a dependant of
``condition: service_healthy`` waits until the dependency's healthcheck passes (run with
:func:`kit.exec` inside it), one of ``service_completed_successfully`` until it exited 0. ``up`` is
all or nothing: if one service fails to start or become healthy, every instance of the project is
removed again and :class:`~kit.errors.ServiceFailed` names the service with its last log lines.
While the project is up, a thread of the session restarts services by their ``restart`` policy.

Colocation (the kit's ``x-kit-colocate: GROUP`` key, or ``up(colocate=...)``): services of one
group run in a single instance (e.g. one VM) under a small supervisor script that starts them
in dependency order, waits for their healthchecks, prefixes their output with ``SERVICE |``,
and stops the instance when any of them exits. Inside, they reach each other on 127.0.0.1
under their service names.
"""

from __future__ import annotations

import hashlib
import shlex
import threading
import time
from dataclasses import dataclass, field

from .. import api, images
from .._proc import wait_until
from ..errors import ComposeFileError, KitError, KitTimeout, ServiceFailed
from ..instance import Instance
from ..session import Session
from ..spec import show
from . import bridge
from .file import Project, Service, read
from .health import Health, pause, probe
from .service import Secrets, built_image, image_source, run_options, should_restart, substitute

#: The line a colocated instance's supervisor writes when a service passed its healthcheck.
HEALTHY = "kit-compose: {} is healthy"
#: How many log lines a failure shows.
TAIL = 8


@dataclass
class Unit:
    """One instance of a project: a service, or a colocated group of services."""

    name: str                 # the instance name
    services: list[str]       # in start order
    runtime: str
    image: str = ""
    networks: list[str] = field(default_factory=list)  # kit networks: the one it joins, then those it is
    #                                                    reached on through a forwarder (kit.compose.bridge)
    source: str = ""          # how its image is come by (built, substituted, named)
    instance: Instance | None = field(default=None, repr=False)  # its handle, once started
    kw: dict = field(default_factory=dict, repr=False)   # what it was started with (a restart reuses it)
    notes: list[str] = field(default_factory=list)     # what the kit does not apply, and how it maps networks
    restarts: int = 0
    history: str = field(default="", repr=False)         # the logs of its instances before a restart


class Stacks:
    """The projects one :class:`kit.Session` has up, by name (kept on the session through its
    extension hook, ``session.extension("compose", Stacks)``); downed first when the session closes."""

    def __init__(self, session: Session):
        self.session = session
        self.lock = threading.Lock()
        self.up: dict[str, Stack] = {}

    def close(self) -> None:
        """Down every project (its named volumes kept), before the session removes its other instances."""
        with self.lock:
            stacks = list(self.up.values())
        for stack in stacks:
            _teardown(stack)


def _stacks(session: Session | None = None) -> Stacks:
    """The projects of ``session`` (default: the default session's)."""
    return (session or api.default_session()).extension("compose", Stacks)


@dataclass
class Stack:
    """A running project: which instance runs which service, its network and volumes, and the session
    whose instances they are."""

    project: Project
    registry: Stacks
    units: dict[str, Unit] = field(default_factory=dict)      # instance name -> unit
    where: dict[str, str] = field(default_factory=dict)       # service -> instance name
    volumes: list[str] = field(default_factory=list)          # kit volume names the project uses
    networks: list[str] = field(default_factory=list)         # kit networks it made
    secrets: Secrets | None = None
    bridges: list = field(default_factory=list)               # forwarders between its networks
    supervisor: threading.Thread | None = field(default=None, repr=False)
    watcher: threading.Thread | None = field(default=None, repr=False)  # keeps probing healthchecks
    health: dict[str, Health] = field(default_factory=dict)  # service -> its health (kit.compose.health)
    anonymous: list[str] = field(default_factory=list)        # anonymous volumes (removed at down)
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    timings: dict[str, dict] = field(default_factory=dict)    # service -> {"started": s, "healthy": s}
    requested: float = 0.0

    @property
    def name(self) -> str:
        return self.project.name

    @property
    def session(self) -> Session:
        """The session whose instances its services are."""
        return self.registry.session

    def instance(self, service: str) -> str:
        """The instance that runs ``service``."""
        try:
            return self.where[service]
        except KeyError:
            raise KitError(f"project {self.name!r} has no service {service!r} (services: "
                           f"{', '.join(self.where)})") from None

    def _repr_html_(self):
        return ps(self)._repr_html_()


def _instance_name(project: str, unit: str) -> str:
    return f"{project}-{unit}-1"


def plan(project: Project, runtime: str | None = None, runtimes: dict | None = None,
         colocate=None, images: dict | None = None) -> list[Unit]:
    """The instances ``up`` would start, in start order, without starting anything: each with its
    runtime, the networks it joins (the first) and is reached on (the others), and where its image
    comes from.

    Args:
        runtime: default runtime of services without ``x-kit-runtime``.
        runtimes: ``{service: runtime}`` overriding both.
        colocate: ``{group: [service, ...]}`` (overrides ``x-kit-colocate``), or True: all in one.
        images: ``{registry image pattern: kit image}`` substituted (``{"mariadb:*": "debian-mariadb"}``).
    """
    runtimes = dict(runtimes or {})
    for svc in runtimes:
        if svc not in project.services:
            raise ComposeFileError(f"runtimes names {svc!r}, which is not a service of {project.name!r}")
    groups: dict[str, list[str]] = {}
    if colocate is True:
        groups = {"all": list(project.services)}
    elif colocate:
        groups = {str(g): list(m) for g, m in dict(colocate).items()}
    else:
        for s in project.services.values():
            if s.colocate:
                groups.setdefault(s.colocate, []).append(s.name)
    group_of = {}
    for g, members in groups.items():
        for m in members:
            if m not in project.services:
                raise ComposeFileError(f"colocate group {g!r} names {m!r}, which is not a service of {project.name!r}")
            if m in group_of:
                raise ComposeFileError(f"service {m!r} is in two colocate groups ({group_of[m]!r}, {g!r})")
            group_of[m] = g
    order = project.order()
    units: dict[str, Unit] = {}
    for svc in order:
        s = project.services[svc]
        rt = runtimes.get(svc) or s.runtime or runtime
        key = group_of.get(svc, svc)
        if key in units:
            if units[key].runtime != rt:
                raise ComposeFileError(f"colocate group {key!r} mixes runtimes ({units[key].runtime}, {rt} for "
                                       f"{svc!r}): one instance has one runtime")
            units[key].services.append(svc)
        else:
            units[key] = Unit(_instance_name(project.name, key), [svc], rt)
    # A unit starts after every unit one of its services depends on (groups keep their first slot).
    ordered: list[Unit] = []

    def place(u: Unit, seen=()):
        if u in ordered:
            return
        if u.name in seen:
            raise ComposeFileError(f"colocating {', '.join(u.services)} makes a dependency cycle between instances")
        for svc in u.services:
            for dep in project.services[svc].depends_on:
                dep_unit = units[group_of.get(dep, dep)]
                if dep_unit is not u:
                    place(dep_unit, seen + (u.name,))
        ordered.append(u)

    for u in units.values():
        place(u)
    nets = bridge.service_networks(project)
    for u in ordered:
        first = project.services[u.services[0]]
        u.networks = [network_name(project, n) for n in nets[first.name]] if len(ordered) > 1 else []
        u.source = image_source(first, images)
        u.notes = _notes(project, u, nets[first.name])
    return ordered


def _notes(project: Project, u: Unit, nets: list[str]) -> list[str]:
    notes = []
    if len(nets) > 1:
        notes.append(f"joins {nets[0]}; reached on {', '.join(nets[1:])} through a forwarder of its declared ports")
    for n in nets:
        unapplied = sorted(k for k in project.networks.get(n) or {} if k not in ("name", "external"))
        if unapplied:
            notes.append(f"network {n}: {', '.join(unapplied)} not applying (a kit network is one shared loopback)")
    for svc in u.services:
        if project.services[svc].ignored:
            notes.append(f"{svc}: {', '.join(project.services[svc].ignored)} accepted, not applied")
    return notes


def network_name(proj: Project, net: str) -> str:
    """The kit network behind compose network ``net``: ``<project>_<net>`` (an external one keeps its name)."""
    spec = proj.networks.get(net) or {}
    return str(spec.get("name") or net) if spec.get("external") else f"{proj.name}_{net}"


def up(file, runtime: str | None = None, project: str | None = None, *, runtimes: dict | None = None,
       colocate=None, wait: bool = True, timeout: float = 600, memory=None, environ: dict | None = None,
       session: Session | None = None, images: dict | None = None, profiles=None, strict: bool = False) -> Stack:
    """Start a compose file's services; return the running :class:`Stack`.

    Args:
        file: path to the compose file (or its YAML text), or a list merged in order (``-f a -f b``).
        runtime: default runtime for services without ``x-kit-runtime``.
        project: project name (default: ``COMPOSE_PROJECT_NAME``, the file's ``name:``, its directory's name).
        runtimes: ``{service: runtime}``, overriding ``x-kit-runtime``.
        colocate: ``{group: [services]}`` run together in one instance, or True for all in one.
        wait: also wait for every service with a healthcheck to be healthy (``up --wait``).
        timeout: seconds a service may take to become healthy.
        memory: memory of each colocated instance (default: the sum of its services' limits).
        environ: variables for ``${VAR}`` in the file, overriding ``os.environ`` (which overrides ``.env``).
        session: the :class:`kit.Session` whose instances the services become (default: the default one).
        images: ``{registry image pattern: kit image}`` run instead (e.g. ``{"mariadb:*": "debian-mariadb"}``).
        profiles: active profiles (default ``COMPOSE_PROFILES``).
        strict: refuse keys that only tune operations too.

    Raises:
        ComposeFileError: the file or an argument is wrong; nothing was started.
        ServiceFailed: a service did not start or become healthy; the project was removed again.
    """
    import os

    variables = {**os.environ, **(environ or {})}
    proj = read(file, project, environ=variables, profiles=profiles, strict=strict)
    units = plan(proj, runtime, runtimes, colocate, images)
    stacks = _stacks(session)
    with stacks.lock:
        if proj.name in stacks.up:
            raise KitError(f"project {proj.name!r} is already up: down it first, or give another project=")
        stack = stacks.up[proj.name] = Stack(proj, stacks)
    stack.requested = time.time()
    stack.secrets = Secrets(proj, {**_dotenv(proj), **variables})
    created_volumes: list[str] = []
    try:
        for u in units:
            u.image = _unit_image(proj, u, images)
        _volumes(stack, units, created_volumes)
        _networks(stack, units)
        for u in units:
            _wait_dependencies(stack, u, timeout)
            _start_checked(stack, u, memory)
        if wait:
            for u in units:
                for svc in u.services:
                    _healthy(stack, svc, timeout)
    except BaseException:
        _teardown(stack, remove_volumes=created_volumes)
        raise
    stack.anonymous = [v for v in created_volumes if "_anon_" in v]
    if any(proj.services[svc].restart != "no" for u in units for svc in u.services):
        stack.supervisor = threading.Thread(target=_supervise, args=(stack,), daemon=True,
                                            name=f"kit-compose-{proj.name}")
        stack.supervisor.start()
    if any(proj.services[svc].healthcheck for u in units if len(u.services) == 1 for svc in u.services):
        stack.watcher = threading.Thread(target=_watch_health, args=(stack,), daemon=True,
                                         name=f"kit-compose-health-{proj.name}")
        stack.watcher.start()
    return stack


def _dotenv(proj: Project) -> dict:
    from .source import read_env_file

    f = proj.directory / ".env"
    return read_env_file(f) if f.is_file() else {}


def _start_checked(stack: Stack, u: Unit, memory) -> None:
    try:
        _start_unit(stack, u, memory)
    except (ComposeFileError, ServiceFailed):
        raise
    except KitError as e:
        svc = u.services[0] if len(u.services) == 1 else ", ".join(u.services)
        raise ServiceFailed(f"service {svc!r} ({u.runtime}) failed to start: {e}", svc) from e


def _supervise(stack: Stack) -> None:
    """Start again each service whose instance ended, as its ``restart`` policy says, while the project is up.

    The ended instance's logs are kept (``logs`` shows them before the new instance's, with a line
    saying why it restarted) and ``ps`` counts the restarts.
    """
    while not stack.stopping.wait(0.5):
        for u in list(stack.units.values()):
            if len(u.services) != 1 or u.instance is None:
                continue
            s = stack.project.services[u.services[0]]
            status = u.instance.status
            if status == "running" or status == "removed" or not should_restart(s, status, u.restarts):
                continue
            try:
                r = u.instance.logs()
                u.history += (r.stdout or "") + (r.stderr or "")
                u.history += f"kit-compose: {s.name} ended ({status}); restart {u.restarts + 1} ({s.restart})\n"
                _restart(stack, u)
                for other in list(stack.units.values()):  # depends_on with restart: true follows it
                    if len(other.services) == 1 and s.name in stack.project.services[other.services[0]].restart_with:
                        other.history += other.instance.logs().stdout + f"kit-compose: restarted after {s.name}\n"
                        _restart(stack, other)
            except KitError as e:
                u.history += f"kit-compose: {s.name} could not restart: {e}\n"


def _restart(stack: Stack, u: Unit) -> None:
    """A new instance of ``u`` in place of the one that ended (same name, options, volumes and networks)."""
    u.instance.rm(force=True)
    if stack.stopping.is_set():
        return
    u.instance = stack.session.start(u.image, u.kw["command"], u.runtime, **u.kw["options"])
    u.restarts += 1
    for svc in u.services:  # a new instance starts its health over, as a restarted container's does
        stack.health.pop(svc, None)


def _unit_image(proj: Project, u: Unit, mapping: dict | None = None) -> str:
    """The kit image of a unit: built from ``build:``, a kit image substituted, the service's own, one
    built from ``x-kit-packages``, or for a colocated group a Debian image with every member's packages
    (an existing one that has them all is reused)."""
    svcs = [proj.services[s] for s in u.services]
    if len(svcs) == 1 and svcs[0].build:
        return built_image(proj, svcs[0])
    if len(svcs) == 1 and substitute(svcs[0], mapping):
        return substitute(svcs[0], mapping)
    if len(svcs) == 1 and not svcs[0].packages:
        return svcs[0].image
    names = {s.image for s in svcs if s.image and not s.packages}
    if len(svcs) > 1 and len(names) == 1 and not any(s.packages for s in svcs):
        return names.pop()
    wanted: set[str] = set()
    for s in svcs:
        if s.packages:
            wanted |= set(s.packages)
        else:
            recipe = images.get(s.image).config.get("recipe") or {}
            if not recipe.get("packages") and recipe.get("builder") != "debootstrap":
                raise ComposeFileError(f"service {s.name!r} cannot be colocated: image {s.image!r} is not a Debian "
                                       f"image the kit built, so its packages are unknown; give x-kit-packages")
            wanted |= set(recipe.get("packages", []))
    if len(svcs) == 1 and svcs[0].image:
        return images.debian(svcs[0].image, packages=sorted(wanted)).name
    return packages_image(sorted(wanted)).name


def packages_image(packages) -> "images.Image":
    """A Debian image with at least ``packages``: the smallest stored one that has them, else a new
    one named ``compose-<hash>`` (built with debootstrap, cached)."""
    wanted = set(packages)
    fits = []
    for img in images.list_images():
        recipe = img.config.get("recipe") or {}
        if recipe.get("builder") == "debootstrap" and wanted <= set(recipe.get("packages", [])):
            fits.append(img)
    if fits:
        return min(fits, key=lambda i: i.size)
    digest = hashlib.sha256(" ".join(sorted(wanted)).encode()).hexdigest()[:10]
    return images.debian(f"compose-{digest}", packages=sorted(wanted))


def _volumes(stack: Stack, units: list[Unit], created: list[str]) -> None:
    used = {_mount_source(stack.project, svc, src, dest, kind) for u in units for svc in u.services
            for src, dest, _, kind in stack.project.services[svc].volumes if kind in ("volume", "anonymous")}
    if not used:
        return
    kv = stack.session.volumes
    have = set(kv.names())
    for name in sorted(used):
        if name not in have:
            kv.create(name)
            created.append(name)
        stack.volumes.append(name)


def _mount_source(proj: Project, svc: str, src: str, dest: str, kind: str) -> str:
    """The kit volume or host path behind a service's volume (an anonymous one is ``<project>_<service>_anon_<hash>``)."""
    if kind == "anonymous":
        return f"{proj.name}_{svc}_anon_{hashlib.sha256(dest.encode()).hexdigest()[:8]}"
    return volume_name(proj, src) if kind == "volume" else src


def volume_name(proj: Project, vol: str) -> str:
    """The kit volume behind top-level volume ``vol``: ``<project>_<vol>`` (an external one keeps its name)."""
    spec = proj.volumes.get(vol, {})
    if spec.get("external"):
        return spec.get("name", vol)
    return spec.get("name") or f"{proj.name}_{vol}"


def _networks(stack: Stack, units: list[Unit]) -> None:
    have = set(stack.session.networks.names())
    for name in dict.fromkeys(n for u in units for n in u.networks):
        if name not in have:
            stack.session.networks.create(name)
            stack.networks.append(name)


def _wait_dependencies(stack: Stack, u: Unit, timeout: float) -> None:
    for svc in u.services:
        for dep, cond in stack.project.services[svc].depends_on.items():
            if cond == "service_healthy" and dep not in u.services:
                _healthy(stack, dep, timeout)
            elif cond == "service_completed_successfully" and dep not in u.services:
                _completed(stack, dep, timeout)


def _completed(stack: Stack, svc: str, timeout: float) -> None:
    """Wait until ``svc`` (a one-shot job: a migration) has exited 0."""
    inst = stack.units[stack.instance(svc)].instance
    try:
        wait_until(lambda: inst.status != "running", timeout, interval=0.2, what=f"{svc!r} to complete")
    except KitTimeout:
        raise _failed(stack, svc, f"did not complete within {timeout:g} s") from None
    if inst.status != "exited (0)":
        raise _failed(stack, svc, f"did not complete successfully ({inst.status})")


def _start_unit(stack: Stack, u: Unit, memory) -> None:
    proj = stack.project
    svcs = [proj.services[s] for s in u.services]
    for s in svcs:
        stack.timings[s.name] = {}
        stack.where[s.name] = u.name
    kw = _unit_kw(stack, u, svcs)
    if len(svcs) == 1:
        s = svcs[0]
        argv = s.argv(_image_cmd(u.image)) or None
        if argv is None and images.exists(u.image):
            raise ComposeFileError(f"service {s.name!r} has no command and image {u.image!r} names none")
        kw.update(env=s.environment, workdir=s.working_dir, memory=s.memory, **run_options(proj, s))
        kw["hostname"] = s.hostname or s.name  # the network's hosts file names each member by it too
        if s.container_name:
            kw["name"] = s.container_name
            stack.where[s.name] = u.name = s.container_name
    else:
        argv = ["/bin/sh", "-c", supervisor(proj, u.services, u.image)]
        limits = [s.memory for s in svcs if s.memory]
        kw["memory"] = memory or (sum(limits) if limits else None)
    if not kw["volumes"]:
        del kw["volumes"]
    name = kw.pop("name")
    u.kw = {"command": argv, "options": {"name": name, **kw}}
    u.instance = stack.session.start(u.image, argv, u.runtime, name=name, **kw)
    stack.units[u.name] = u
    if len(u.networks) > 1:
        _bridge(stack, u, svcs[0])
    now = time.time() - stack.requested
    for s in svcs:
        stack.timings[s.name]["started"] = now


def _unit_kw(stack: Stack, u: Unit, svcs: list[Service]) -> dict:
    """Name, ports, volumes (secrets and configs too), tmpfs and network of a unit's instance."""
    proj = stack.project
    kw = {"name": u.name, "ports": [_free(p) for s in svcs for p in s.ports], "volumes": [], "tmpfs": []}
    for s in svcs:
        for src, dest, ro, kind in s.volumes:
            if kind == "tmpfs":
                kw["tmpfs"].append(src)
            else:
                kw["volumes"].append(f"{_mount_source(proj, s.name, src, dest, kind)}:{dest}" + (":ro" if ro else ""))
        kw["volumes"] += stack.secrets.mounts(s)
    if not kw["tmpfs"]:
        del kw["tmpfs"]
    if u.networks:
        kw["network"] = u.networks[0]
        exposed = _exposed(svcs)
        if exposed and _is_vm(u.runtime):
            kw["expose"] = exposed  # a VM's served ports, so that the other members reach them
    return kw


def _exposed(svcs) -> list[int]:
    return sorted({p for s in svcs for p in s.expose} | {int(p.split(":")[1]) for s in svcs for p in s.ports})


def _free(port: str) -> str:
    """``HOST:CONTAINER``, a free host port chosen for ``0:CONTAINER`` (Compose's ephemeral port)."""
    import socket

    host, cont = port.split(":")
    if host != "0":
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"{sock.getsockname()[1]}:{cont}"


def _image_cmd(image: str) -> list:
    try:
        return images.get(image).config.get("cmd") or []
    except KitError:
        return []  # a registry image the session pulls: its own command, then


def _bridge(stack: Stack, u: Unit, s: Service) -> None:
    """Reach ``s`` on each network after its first: a stand-in member with its hostname there, and its
    declared ports forwarded from that network's namespace into the one it joined."""
    nets = stack.session.networks
    for net in u.networks[1:]:
        image, argv = bridge.STAND_IN
        stand_in = Unit(f"{u.name}-{net.rsplit('_', 1)[-1]}", [], "runc", image)
        stand_in.instance = stack.session.start(image, argv, "runc", name=stand_in.name, network=net,
                                                hostname=s.hostname or s.name)
        stack.units[stand_in.name] = stand_in
        ports = _exposed([s])
        if ports:
            stack.bridges.append(bridge.Forward(nets.get(net).ns_path, nets.get(u.networks[0]).ns_path, ports).start())


def _is_vm(runtime: str | None) -> bool:
    from .. import runtimes

    try:
        return runtime is not None and runtimes.get(runtime).kind == "vm"
    except KitError:
        return False


def supervisor(proj: Project, services: list[str], image: str) -> str:
    """The shell script that runs several services in one instance.

    It names every service on 127.0.0.1 in /etc/hosts, starts each in order (its environment and
    working directory, its output prefixed ``NAME |``), runs its healthcheck until it passes before
    starting the next (a colocated group starts one by one), says so on a line of its own
    (:data:`HEALTHY`), and ends the instance when any service exits. The host waits for those lines
    rather than exec'ing into the instance: cheaper, and an exec into a VM under TCG is slow.
    """
    names = " ".join(services)
    lines = ["set -u", f'echo "127.0.0.1 {names}" >> /etc/hosts 2>/dev/null || true', "pids="]
    for svc in services:
        s = proj.services[svc]
        argv = s.argv(images.get(image).config.get("cmd") or [])
        env = ["env"] + [f"{k}={v}" for k, v in s.environment.items()] if s.environment else []
        run = shlex.join(env + argv)
        cd = f"cd {shlex.quote(s.working_dir)} && " if s.working_dir else ""
        lines += [f"( {cd}exec {run} ) 2>&1 | sed -u 's/^/{svc} | /' &", "pids=\"$pids $!\"",
                  f"echo 'kit-compose: started {svc}'"]
        hc = s.healthcheck
        if hc:  # each service healthy before the next starts: what the host waits for is this line
            lines += [f"n=0; until timeout {hc.timeout:g} {shlex.join(hc.test)} >/dev/null 2>&1; do",
                      f"  n=$((n+1)); if [ $n -ge {_polls(hc)} ]; then echo 'kit-compose: {svc} never became "
                      f"healthy'; exit 1; fi",
                      f"  sleep {_pace(hc):g}; done"]
        lines += [f"echo '{HEALTHY.format(svc)}'"]
    # Any service ending ends the instance (the kit then sees it exit); plain sh has no wait -n.
    lines += ["while :; do for p in $pids; do kill -0 $p 2>/dev/null || { echo \"kit-compose: a service exited\"; "
              "exit 1; }; done; sleep 1; done"]
    return "\n".join(lines)


def _polls(hc) -> int:
    """How many checks a colocated dependant waits for: as long as the start timeout allows."""
    return max(hc.retries, int(600 / max(_pace(hc), 0.1)))


def _pace(hc) -> float:
    """Seconds between a colocated service's checks: its script checks only until the first pass, which
    is within ``start_period`` when there is one, so at ``start_interval`` then (as Compose polls)."""
    return hc.start_interval if hc.start_period else hc.interval


def _healthy(stack: Stack, svc: str, timeout: float) -> None:
    """Wait until ``svc`` passes its healthcheck (at once if it has none but runs).

    The first check runs at once, then every ``start_interval`` during ``start_period``, else every
    ``interval`` (:mod:`kit.compose.health`); the service turning ``unhealthy`` (``retries``
    failures in a row that count), ``timeout`` seconds, or the instance exiting, fail it.
    """
    t = stack.timings.setdefault(svc, {})
    if "healthy" in t:
        return
    unit = stack.units.get(stack.instance(svc))
    hc = stack.project.services[svc].healthcheck
    deadline = time.monotonic() + timeout
    colocated = unit is not None and len(unit.services) > 1
    while True:
        status = "removed" if unit is None else unit.instance.status
        if status == "exited (0)" and hc is None and not colocated:
            break  # a one-shot job that did its work (Compose's up does not fail it either)
        if status != "running":
            raise _failed(stack, svc, "exited")
        if colocated:
            r = unit.instance.logs()
            if HEALTHY.format(svc) in r.stdout.splitlines():
                break
            if time.monotonic() > deadline:
                raise _failed(stack, svc, f"did not become healthy within {timeout:g} s")
            time.sleep(0.2)
            continue
        if hc is None:
            break
        started = stack.requested + t.get("started", 0)
        h = probe(unit.instance, hc, stack.health.setdefault(svc, Health()), started, _is_vm(unit.runtime))
        if h.status == "healthy":
            break
        if h.status == "unhealthy":
            raise _failed(stack, svc, f"is unhealthy: its healthcheck failed {h.failures} times in a row "
                                      f"(retries: {hc.retries}; last: {show(h.last, 120)})")
        if time.monotonic() > deadline:
            raise _failed(stack, svc, f"did not become healthy within {timeout:g} s after {h.checks} checks "
                                      f"(last: {show(h.last, 120)})")
        time.sleep(pause(hc, h, started))  # as Compose polls
    t["healthy"] = time.time() - stack.requested


def _watch_health(stack: Stack) -> None:
    """Run each running service's healthcheck on its schedule while the project is up, so that ``ps``
    shows its health now (a service healthy at ``up`` may turn ``unhealthy`` later, as in Compose)."""
    due: dict[str, float] = {}
    while not stack.stopping.wait(0.2):
        for svc, name in list(stack.where.items()):
            u, hc = stack.units.get(name), stack.project.services[svc].healthcheck
            if hc is None or u is None or len(u.services) > 1 or time.monotonic() < due.get(svc, 0):
                continue
            if u.instance is None or u.instance.status != "running":
                continue
            started = stack.requested + stack.timings.get(svc, {}).get("started", 0)
            h = probe(u.instance, hc, stack.health.setdefault(svc, Health()), started, _is_vm(u.runtime))
            due[svc] = time.monotonic() + pause(hc, h, started)


def _failed(stack: Stack, svc: str, what: str) -> ServiceFailed:
    tail = _tail(stack, svc)
    return ServiceFailed(f"service {svc!r} ({stack.units[stack.where[svc]].runtime if stack.where[svc] in stack.units else '?'}) "
                         f"{what}; last log lines: {' | '.join(tail) or '(none)'}", svc, "\n".join(tail))


def _tail(stack: Stack, svc: str) -> list[str]:
    try:
        return logs(stack.name, svc).splitlines()[-TAIL:]
    except KitError:
        return []


def _teardown(stack: Stack, remove_volumes=()) -> list[str]:
    stack.stopping.set()
    for thread in (stack.supervisor, stack.watcher):
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)
    for fwd in stack.bridges:
        fwd.stop()
    stack.bridges.clear()
    gone = []
    for name, unit in reversed(list(stack.units.items())):
        try:
            unit.instance.rm(force=True)
            gone.append(name)
        except KitError:  # removed already
            pass
    stack.units.clear()
    for net in reversed(stack.networks):
        try:
            stack.session.networks.rm(net)
        except KitError:  # gone with its last member already
            pass
    stack.networks.clear()
    if stack.secrets is not None:
        stack.secrets.remove()
    for v in dict.fromkeys([*remove_volumes, *stack.anonymous]):
        stack.session.volumes.rm(v)
    with stack.registry.lock:
        if stack.registry.up.get(stack.name) is stack:
            del stack.registry.up[stack.name]
    return gone


def get(project, session: Session | None = None) -> Stack:
    """The running :class:`Stack` of ``project`` (a name, or a Stack) in ``session`` (default: the default one)."""
    if isinstance(project, Stack):
        return project
    stacks = _stacks(session)
    with stacks.lock:
        try:
            return stacks.up[str(project)]
        except KeyError:
            up = ", ".join(stacks.up) or "none"
    raise KitError(f"no compose project {str(project)!r} is up (up: {up})")


def down(project, volumes: bool = False) -> list[str]:
    """Remove the project's instances and network; its named volumes too if ``volumes`` (``down -v``).

    Returns the names of the instances removed.
    """
    stack = get(project)
    return _teardown(stack, remove_volumes=[v for v in stack.volumes
                                            if volumes and not _external(stack.project, v)])


def _external(proj: Project, kit_volume: str) -> bool:
    return any(spec.get("external") and volume_name(proj, v) == kit_volume for v, spec in proj.volumes.items())


def ps(project):
    """One row per service: service, instance, runtime, image, status, health, restarts, ports, started_s, healthy_s.

    ``health`` is Compose's: ``starting``, ``healthy`` or ``unhealthy`` for a service with a healthcheck
    (kept current by the project's health thread), empty for one without.
    """
    import pandas as pd

    stack = get(project)
    rows = []
    for svc, name in stack.where.items():
        if name not in stack.units:
            continue
        s, u = stack.project.services[svc], stack.units[name]
        rows.append({"service": svc, "instance": name, "runtime": u.runtime, "image": u.image,
                     "status": u.instance.status, "health": _health(stack, svc), "restarts": u.restarts,
                     "ports": ", ".join(s.ports),
                     "started_s": stack.timings.get(svc, {}).get("started"),
                     "healthy_s": stack.timings.get(svc, {}).get("healthy")})
    return pd.DataFrame(rows, columns=["service", "instance", "runtime", "image", "status", "health", "restarts",
                                       "ports", "started_s", "healthy_s"])


def _health(stack: Stack, svc: str) -> str:
    if stack.project.services[svc].healthcheck is None:
        return ""
    if svc in stack.health:
        return stack.health[svc].status
    return "healthy" if "healthy" in stack.timings.get(svc, {}) else "starting"  # colocated: its supervisor's word


def logs(project, service: str | None = None) -> str:
    """What the project's services wrote, each line prefixed ``SERVICE |`` (only ``service``'s if given)."""
    stack = get(project)
    out = []
    for svc, name in stack.where.items():
        unit = stack.units.get(name)
        if unit is None or (service is not None and svc != service):
            continue  # not started (up failed before it), or not the service asked for
        try:
            r = unit.instance.logs()
        except KitError:
            continue
        text = unit.history + (r.stdout or "") + (r.stderr or "")
        colocated = len(unit.services) > 1
        for line in text.splitlines():
            if colocated:  # the supervisor already prefixed each line with its service
                if line.startswith(f"{svc} | ") or (line.startswith("kit-compose:") and svc == unit.services[0]):
                    out.append(line if line.startswith(f"{svc} | ") else f"{svc} | {line}")
            else:
                out.append(f"{svc} | {line}")
    return "\n".join(out)
