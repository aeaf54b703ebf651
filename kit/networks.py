"""Kit networks: instances that reach each other by name, on loopback only (the pod model).

A kit network is **one network namespace that every member shares**, as the
containers of a Kubernetes pod do (or ``docker run --network container:X``).
It has only a loopback device: no veth, no bridge, nothing on the host's own
interfaces. Members talk over ``127.0.0.1``, and so they share one port space
(two members cannot both listen on 6379). Names resolve through a hosts file
per network, listing each member's name and hostname as ``127.0.0.1``, which
each container member sees read-only at ``/etc/hosts``; it is rewritten in
place (same inode) as members come and go, so the bind mounts follow.

**The holder.** A namespace lives as long as a process in it, or an open
handle on it. Every runtime joins the holder's ``/proc/PID/ns/net``: runc and
crun by path, runsc by being started inside it with ``--network=host``, LXC
with ``lxc.namespace.share.net = PID``, QEMU by ``setns`` before exec. Docker
alone can join nothing but another Docker container (``network_mode =
container:ID``), so when Docker is available the holder *is* a tiny Docker
container (busybox ``sleep``, ``network_mode=none``: a loopback-only namespace
that dockerd made), labelled with the kit session like every kit container.
Without Docker the holder is a host ``sleep`` the kit starts inside a namespace
it made (:func:`kit.portfwd.new_loopback_netns`); such a network refuses
Docker members. ``create(..., holder="process")`` asks for that one.

**Lifetime.** A network is removed (holder killed, hosts file deleted) by
:func:`rm`, and, when :func:`kit.run`/:func:`kit.start` created it on the
fly for an unknown name (as Compose does for a project's network), with its
last member. After a SIGKILL of the session, the sweep finds a Docker holder
by its ``kit.session`` label and a process holder by its ``KIT_SESSION``
environment marker, like every other thing a session starts.

**VMs** run QEMU inside the namespace with user-mode networking: the guest
reaches the namespace's loopback at QEMU's gateway, ``10.0.2.2`` (an address
inside QEMU's own user network, which never leaves the QEMU process), so the
guest's ``/etc/hosts`` maps the other members to ``10.0.2.2`` and its own name
to ``127.0.0.1``. Members reach a VM through ``hostfwd=tcp:127.0.0.1:P-:P``
inside the namespace, for each port it ``expose``-s and each container port
of its ``-p``. Published ports (``-p``) of any member appear on the host's
``127.0.0.1`` only, forwarded into the network's namespace.

>>> import kit
>>> kit.networks.create("backend")
>>> kit.start("debian-redis", ["redis-server", "--protected-mode", "no"], runtime="runsc",
...           name="cache", network="backend")
>>> kit.run("debian-redis", ["redis-cli", "-h", "cache", "ping"], runtime="runc", network="backend").stdout
'PONG\\n'
>>> kit.rm("cache", force=True); kit.networks.rm("backend")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .errors import InvalidSpec, KitError, NameInUse, NetworkNotFound, StartFailed
from .spec import check_name, show

#: Where a VM guest reaches the namespace's loopback (QEMU user networking's gateway).
GUEST_GATEWAY = "10.0.2.2"
HOLDERS = ("docker", "process")

_lock = threading.RLock()
_networks: dict[str, "Network"] = {}


@dataclass
class Member:
    name: str
    hostname: str
    runtime: str
    kind: str
    inst: object = None


@dataclass
class Network:
    """One kit network: its holder, a handle on its namespace, its members and hosts file.

    Attributes:
        holder: ``docker`` (a Docker container) or ``process`` (a host process).
        holder_id: the Docker container id, or the process id as text.
        pid: the holder's host PID (whose ``/proc/PID/ns/net`` members join).
        auto: made on the fly by a run; removed with its last member.
    """

    name: str
    holder: str
    holder_id: str
    pid: int
    nsfd: int
    dir: Path
    auto: bool = False
    created: float = field(default_factory=time.time)
    members: dict[str, Member] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return (f"<Network {self.name}: holder {self.holder} {self.holder_id[:12]}, "
                f"members: {', '.join(sorted(self.members)) or 'none'}>")

    @property
    def ns_path(self) -> str:
        """A path to the namespace that stays right as long as the network exists (the kit's own fd)."""
        return f"/proc/{os.getpid()}/fd/{self.nsfd}"

    @property
    def hosts_path(self) -> Path:
        return self.dir / "hosts"

    def open_ns(self) -> int:
        """A new fd on the namespace, for a member that must hold its own (closed by its runtime)."""
        return os.open(self.ns_path, os.O_RDONLY | os.O_CLOEXEC)

    def hosts_text(self, guest: str | None = None) -> str:
        """The hosts file: every member on 127.0.0.1; ``guest`` (a VM member's name) sees the
        others at QEMU's gateway and only itself on its own loopback."""
        lines = [f"# kit network {self.name}: its members share one loopback", "127.0.0.1\tlocalhost",
                 "::1\tlocalhost ip6-localhost ip6-loopback"]
        for m in sorted(self.members.values(), key=lambda m: m.name):
            names = " ".join(dict.fromkeys([m.name, m.hostname]))
            own = guest is None or m.name == guest
            lines.append(f"{'127.0.0.1' if own else GUEST_GATEWAY}\t{names}")
        return "\n".join(lines) + "\n"

    def oci_mount(self) -> dict:
        """The OCI ``mounts`` entry of the hosts file."""
        return {"destination": "/etc/hosts", "type": "bind", "source": str(self.hosts_path),
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}

    def publish(self, ports):
        """Forward ``127.0.0.1:HOST`` on the host to ``127.0.0.1:PORT`` in the namespace (a member's ``-p``)."""
        from .portfwd import Forwarder

        return Forwarder(self.ns_path, list(ports)).start()


def parse_expose(value) -> list[int]:
    """The ports a VM member serves to its network (``expose=[6379]``, ``"6379,8080"`` or ``--expose``).

    Containers need none: they share the namespace's loopback. A VM's ports are forwarded into it.
    """
    if value in (None, "", []):
        return []
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    out = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise InvalidSpec(f"expose {show(item)} is not a port: give numbers from 1 to 65535, e.g. expose=[6379]")
        out.append(int(text))
    return out


def _dir(name: str) -> Path:
    # A dot-name: never an instance's state directory (instance names start with a letter or digit).
    return config.state_dir() / ".networks" / name


def _holder_kind(holder: str | None) -> str:
    if holder not in (None, "auto", *HOLDERS):
        raise KitError(f"holder {show(holder)} is not known: use 'docker', 'process' or leave it out")
    if holder in (None, "auto"):
        from . import runtimes

        return "docker" if runtimes.get("docker").availability().available else "process"
    return holder


def create(name: str, holder: str | None = None, *, _auto: bool = False) -> Network:
    """Create the network ``name``: a loopback-only namespace and its holder.

    Args:
        name: letters, digits, ``_ . -`` (as instance names).
        holder: ``docker`` (a tiny Docker container; Docker members need it), ``process``
            (a host process; no Docker members), or None: Docker when it is available.

    Raises:
        InvalidSpec: a bad name. NameInUse: the network exists. KitError: not root.
    """
    check_name(name)
    kind = _holder_kind(holder)
    if os.geteuid() != 0:
        raise KitError("kit networks need root (joining a network namespace needs CAP_SYS_ADMIN): run as root")
    with _lock:
        if name in _networks:
            raise NameInUse(f"network {name!r} already exists: use it, or remove it with networks.rm({name!r})")
        d = _dir(name)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        try:
            net = _start_docker(name, d) if kind == "docker" else _start_process(name, d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        net.auto = _auto
        _write_hosts(net)
        _networks[name] = net
        return net


def _holder_ref(name: str) -> str:
    # "--" cannot occur in an instance id (kit-<session>-<name>, names start with a letter or digit).
    return f"kit-{config.SESSION_ID}--net-{name}"


def _start_docker(name: str, d: Path) -> Network:
    import docker

    from . import images
    from .images import engine

    client = engine.docker_client(timeout=60)
    api = client.api
    ref = engine.ensure_in_docker(client, images.get("busybox"))
    labels = {"kit.session": config.SESSION_ID, "kit.network": name, "kit.managed": "1"}
    try:
        cid = api.create_container(ref, ["sleep", "2147483647"], name=_holder_ref(name), labels=labels,
                                   host_config=api.create_host_config(network_mode="none", init=False),
                                   detach=True)["Id"]
        api.start(cid)
        pid = int(api.inspect_container(cid)["State"]["Pid"])
        nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except (docker.errors.APIError, OSError) as e:
        try:
            api.remove_container(_holder_ref(name), force=True)
        except docker.errors.APIError:
            pass
        raise StartFailed(f"network {name!r}: could not start its Docker holder: {e}") from None
    return Network(name, "docker", cid, pid, nsfd, d)


def _start_process(name: str, d: Path) -> Network:
    from ._proc import marked_env as _marked
    from .portfwd import new_loopback_netns, setns

    nsfd = new_loopback_netns()
    sleep = shutil.which("sleep") or "/bin/sleep"
    try:
        # The environment marker lets the sweep of a dead session find and kill it.
        proc = subprocess.Popen([sleep, "infinity"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=_marked(None), start_new_session=True,
                                preexec_fn=lambda: setns(nsfd))
    except (OSError, subprocess.SubprocessError) as e:
        os.close(nsfd)
        raise StartFailed(f"network {name!r}: could not start its holder process: {e}") from None
    return Network(name, "process", str(proc.pid), proc.pid, nsfd, d, proc=proc)


def get(name: str) -> Network:
    """The network ``name``; NetworkNotFound if there is none."""
    with _lock:
        try:
            return _networks[name]
        except KeyError:
            have = ", ".join(sorted(_networks)) or "none"
            raise NetworkNotFound(f"no network named {show(name)} (networks: {have}); "
                                  f"see networks.ls()") from None


def inspect(name: str) -> dict:
    """What the network is made of: holder, namespace, hosts file, members."""
    net = get(name)
    with _lock:
        return {"name": net.name, "holder": net.holder, "holder_id": net.holder_id, "holder_pid": net.pid,
                "netns": f"/proc/{net.pid}/ns/net", "hosts": str(net.hosts_path), "auto": net.auto,
                "created": net.created,
                "members": [{"name": m.name, "hostname": m.hostname, "runtime": m.runtime}
                            for m in sorted(net.members.values(), key=lambda m: m.name)]}


def ls():
    """A DataFrame of this session's networks: name, members, holder, created."""
    import pandas as pd

    with _lock:
        rows = [{"name": n.name, "members": ", ".join(sorted(n.members)), "holder": n.holder,
                 "created": pd.Timestamp(n.created, unit="s", tz="UTC").floor("s")}
                for n in sorted(_networks.values(), key=lambda n: n.name)]
    return pd.DataFrame(rows, columns=["name", "members", "holder", "created"])


def rm(name: str, force: bool = False) -> None:
    """Remove the network ``name`` and its holder.

    Refuses while it has members, unless ``force``: then they are removed first (as ``kit.rm -f``).
    """
    from . import api

    net = get(name)
    api.wait_for_teardown()  # finished foreground members are on their way out: let them go first
    with _lock:
        members = sorted(net.members)
    if members and not force:
        raise KitError(f"network {name!r} has members ({', '.join(members)}): remove them first, "
                       f"or use force=True")
    for m in members:
        try:
            api.rm(m, force=True)
        except KitError:
            pass
    with _lock:
        if _networks.get(name) is not net:
            return  # an auto network went with its last member
        if net.members:
            raise KitError(f"network {name!r} still has members ({', '.join(sorted(net.members))}) that could "
                           f"not be removed: see ps, rm them, and try again")
        _destroy(net)


def _destroy(net: Network) -> None:
    _networks.pop(net.name, None)
    try:
        if net.holder == "docker":
            import docker

            from .images import engine

            try:
                engine.docker_client(timeout=60).api.remove_container(net.holder_id, force=True)
            except docker.errors.NotFound:
                pass
        elif net.proc is not None:
            net.proc.kill()
            net.proc.wait(5)
    finally:
        os.close(net.nsfd)
        shutil.rmtree(net.dir, ignore_errors=True)


def join(name: str, rt, inst) -> Network:
    """Make ``inst`` (not yet started) a member of ``name``, creating the network if it does not exist.

    Called by the API before ``rt.start``; sets ``inst.net``.
    """
    with _lock:
        net = _networks.get(name) or create(name, _auto=True)
        if rt.name == "docker" and net.holder != "docker":
            if net.auto and not net.members:
                _destroy(net)
            raise KitError(f"network {name!r} is held by a host process, which Docker cannot join: "
                           f"create it with holder='docker' (needs dockerd) or use another runtime")
        net.members[inst.name] = Member(inst.name, inst.spec.hostname or inst.name, rt.name, rt.kind, inst)
        inst.net = net
        _changed(net, skip=inst.name)
        return net


def leave(inst) -> None:
    """``inst`` is gone: drop it from its network's hosts files; an auto network goes with its last member."""
    net = getattr(inst, "net", None)
    if net is None:
        return
    with _lock:
        net.members.pop(inst.name, None)
        inst.net = None
        if _networks.get(net.name) is not net:
            return
        if net.auto and not net.members:
            _destroy(net)
        else:
            _changed(net)


def _write_hosts(net: Network) -> None:
    # In place (truncate and write the same inode): the bind mounts of running members see it.
    with open(net.hosts_path, "w") as f:
        f.write(net.hosts_text())


def _changed(net: Network, skip: str | None = None) -> None:
    """Rewrite the hosts file, and each running VM member's own copy of it."""
    _write_hosts(net)
    for m in list(net.members.values()):
        if m.kind == "vm" and m.name != skip and m.inst is not None:
            _refresh_guest(net, m)


def _refresh_guest(net: Network, m: Member) -> None:
    from . import runtimes

    rt = runtimes.get(m.runtime)
    try:
        if rt.running(m.inst):
            rt.exec(m.inst, ["sh", "-c", 'printf "%s" "$1" >/etc/hosts', "sh", net.hosts_text(guest=m.name)],
                    timeout=20)
    except KitError:
        pass  # a VM that cannot take it keeps its old list (names that joined later do not resolve there)


def names() -> list[str]:
    with _lock:
        return sorted(_networks)


def remove_all() -> None:
    """Remove every network of this session (at exit, after the instances)."""
    for n in names():
        try:
            rm(n, force=True)
        except KitError:
            pass
