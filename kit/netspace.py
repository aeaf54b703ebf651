"""Kit networks' mechanism: instances that reach each other by name, on loopback only (the pod model).

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
with ``lxc.namespace.share.net = PID``, QEMU by ``setns`` before exec. A runtime
that can join nothing but a holder of its own kind says so
(:attr:`~kit.runtimes.base.Runtime.network_holder`: Docker joins only another
Docker container, ``network_mode = container:ID``), so when such a runtime is
available the holder *is* a tiny Docker container (busybox ``sleep``,
``network_mode=none``: a loopback-only namespace that dockerd made), labelled
with the kit session like every kit container. Otherwise the holder is a host
``sleep`` the kit starts inside a namespace it made
(:func:`kit.portfwd.new_loopback_netns`); such a network refuses Docker members.
``create(..., holder="process")`` asks for that one.

**Lifetime.** A network is removed (holder killed, hosts file deleted) by
:meth:`Networks.rm`, and, when a run created it on the fly for an unknown name
(as Compose does for a project's network), with its last member. After a SIGKILL
of the session, the sweep finds a Docker holder by its ``kit.session`` label and
a process holder by its ``KIT_SESSION`` environment marker, like every other
thing a session starts.

**VMs** (a runtime whose guest keeps its own copy of the hosts file,
:attr:`~kit.runtimes.base.Runtime.hosts_copied`) run QEMU inside the namespace
with user-mode networking: the guest reaches the namespace's loopback at QEMU's
gateway, ``10.0.2.2`` (an address inside QEMU's own user network, which never
leaves the QEMU process), so the guest's ``/etc/hosts`` maps the other members to
``10.0.2.2`` and its own name to ``127.0.0.1``, and it is rewritten by exec as
members come and go. Members reach a VM through ``hostfwd=tcp:127.0.0.1:P-:P``
inside the namespace, for each port it ``expose``-s and each container port of
its ``-p``. Published ports (``-p``) of any member appear on the host's
``127.0.0.1`` only, forwarded into the network's namespace.

One :class:`Networks` collection per :class:`kit.Session` (``session.networks``); the module-level
:mod:`kit.networks` functions act on the default session's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import images, runtimes
from ._proc import marked_env
from .errors import KitError, NameInUse, NetworkNotFound, StartFailed
from .images import engine
from .portfwd import Forwarder, new_loopback_netns, setns
from .runtimes.base import Context, InstanceState, Runtime
from .spec import check_name, show

#: Where a VM guest reaches the namespace's loopback (QEMU user networking's gateway).
GUEST_GATEWAY = "10.0.2.2"
#: The kinds of holder: a Docker container, or a host process in a namespace the kit made.
HOLDERS = ("docker", "process")


@dataclass
class Member:
    name: str
    hostname: str
    rt: Runtime
    inst: InstanceState


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

    def publish(self, ports) -> Forwarder:
        """Forward ``127.0.0.1:HOST`` on the host to ``127.0.0.1:PORT`` in the namespace (a member's ``-p``)."""
        return Forwarder(self.ns_path, list(ports)).start()


def _nothing(*_a, **_k) -> None:
    return None


class Networks:
    """A session's kit networks, by name; thread-safe.

    Args:
        ctx: the session's context: its ids (the holders' names and labels) and state directory.
        remove_member: removes a member instance by name, forcibly (the session's ``rm``), for
            :meth:`rm` with ``force``.
        settle: waits for the session's background teardowns, before :meth:`rm` counts members.
    """

    def __init__(self, ctx: Context, remove_member: Callable[[str], None] = _nothing,
                 settle: Callable[[], object] = _nothing):
        self.ctx, self.remove_member, self.settle = ctx, remove_member, settle
        self._lock = threading.RLock()
        self._networks: dict[str, Network] = {}

    def _dir(self, name: str) -> Path:
        # A dot-name: never an instance's state directory (instance names start with a letter or digit).
        return self.ctx.state_root / ".networks" / name

    def _holder_ref(self, name: str) -> str:
        # "--" cannot occur in an instance id (kit-<owner>-<session>-<name>, names start with a letter or digit).
        return f"kit-{self.ctx.owner}-{self.ctx.session}--net-{name}"

    def create(self, name: str, holder: str | None = None, *, auto: bool = False) -> Network:
        """Create the network ``name``: a loopback-only namespace and its holder.

        Args:
            name: letters, digits, ``_ . -`` (as instance names).
            holder: ``docker`` (a tiny Docker container; Docker members need it), ``process``
                (a host process; no Docker members), or None: Docker when it is available.
            auto: made on the fly by a run (removed with its last member).

        Raises:
            InvalidSpec: a bad name. NameInUse: the network exists. KitError: not root.
        """
        check_name(name)
        kind = _holder_kind(holder)
        if os.geteuid() != 0:
            raise KitError("kit networks need root (joining a network namespace needs CAP_SYS_ADMIN): run as root")
        with self._lock:
            if name in self._networks:
                raise NameInUse(f"network {name!r} already exists: use it, or remove it with networks.rm({name!r})")
            d = self._dir(name)
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            try:
                net = self._start_docker(name, d) if kind == "docker" else _start_process(name, d)
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                raise
            net.auto = auto
            _write_hosts(net)
            self._networks[name] = net
            return net

    def _start_docker(self, name: str, d: Path) -> Network:
        import docker

        api = self.ctx.docker().api
        ref = engine.ensure_in_docker(self.ctx.docker(), images.get("busybox"))
        labels = {"kit.session": self.ctx.owner, "kit.network": name, "kit.managed": "1"}
        try:
            cid = api.create_container(ref, ["sleep", "2147483647"], name=self._holder_ref(name), labels=labels,
                                       host_config=api.create_host_config(network_mode="none", init=False),
                                       detach=True)["Id"]
            api.start(cid)
            pid = int(api.inspect_container(cid)["State"]["Pid"])
            nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except (docker.errors.APIError, OSError) as e:
            try:
                api.remove_container(self._holder_ref(name), force=True)
            except docker.errors.APIError:
                pass
            raise StartFailed(f"network {name!r}: could not start its Docker holder: {e}") from None
        return Network(name, "docker", cid, pid, nsfd, d)

    def get(self, name: str) -> Network:
        """The network ``name``; NetworkNotFound if there is none."""
        with self._lock:
            try:
                return self._networks[name]
            except KeyError:
                have = ", ".join(sorted(self._networks)) or "none"
        raise NetworkNotFound(f"no network named {show(name)} (networks: {have}); see networks.ls()")

    def inspect(self, name: str) -> dict:
        """What the network is made of: holder, namespace, hosts file, members."""
        net = self.get(name)
        with self._lock:
            return {"name": net.name, "holder": net.holder, "holder_id": net.holder_id, "holder_pid": net.pid,
                    "netns": f"/proc/{net.pid}/ns/net", "hosts": str(net.hosts_path), "auto": net.auto,
                    "created": net.created,
                    "members": [{"name": m.name, "hostname": m.hostname, "runtime": m.rt.name}
                                for m in sorted(net.members.values(), key=lambda m: m.name)]}

    def ls(self):
        """A DataFrame of the networks: name, members, holder, created."""
        import pandas as pd

        with self._lock:
            rows = [{"name": n.name, "members": ", ".join(sorted(n.members)), "holder": n.holder,
                     "created": pd.Timestamp(n.created, unit="s", tz="UTC").floor("s")}
                    for n in sorted(self._networks.values(), key=lambda n: n.name)]
        return pd.DataFrame(rows, columns=["name", "members", "holder", "created"])

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._networks)

    def rm(self, name: str, force: bool = False) -> None:
        """Remove the network ``name`` and its holder.

        Refuses while it has members, unless ``force``: then they are removed first (as ``kit.rm -f``).
        """
        net = self.get(name)
        self.settle()  # finished foreground members are on their way out: let them go first
        with self._lock:
            members = sorted(net.members)
        if members and not force:
            raise KitError(f"network {name!r} has members ({', '.join(members)}): remove them first, "
                           f"or use force=True")
        for m in members:
            try:
                self.remove_member(m)
            except KitError:
                pass
        with self._lock:
            if self._networks.get(name) is not net:
                return  # an auto network went with its last member
            if net.members:
                raise KitError(f"network {name!r} still has members ({', '.join(sorted(net.members))}) that could "
                               f"not be removed: see ps, rm them, and try again")
            self._destroy(net)

    def _destroy(self, net: Network) -> None:
        self._networks.pop(net.name, None)
        try:
            if net.holder == "docker":
                import docker

                try:
                    self.ctx.docker().api.remove_container(net.holder_id, force=True)
                except docker.errors.NotFound:
                    pass
            elif net.proc is not None:
                net.proc.kill()
                net.proc.wait(5)
        finally:
            os.close(net.nsfd)
            shutil.rmtree(net.dir, ignore_errors=True)

    def join(self, name: str, rt: Runtime, inst: InstanceState) -> Network:
        """Make ``inst`` (not yet started) a member of ``name``, creating the network if it does not exist.

        Called by the session before ``rt.start``; sets ``inst.net``.
        """
        with self._lock:
            net = self._networks.get(name) or self.create(name, auto=True)
            if rt.network_holder and net.holder != rt.network_holder:
                if net.auto and not net.members:
                    self._destroy(net)
                raise KitError(f"network {name!r} is held by a host process, which {rt.name} cannot join: "
                               f"create it with holder={rt.network_holder!r} or use another runtime")
            net.members[inst.name] = Member(inst.name, inst.spec.hostname or inst.name, rt, inst)
            inst.net = net
            self._changed(net, skip=inst.name)
            return net

    def leave(self, inst: InstanceState) -> None:
        """``inst`` is gone: drop it from its network's hosts files; an auto network goes with its last member."""
        net = inst.net
        if not isinstance(net, Network):
            return
        with self._lock:
            net.members.pop(inst.name, None)
            inst.net = None
            if self._networks.get(net.name) is not net:
                return
            if net.auto and not net.members:
                self._destroy(net)
            else:
                self._changed(net)

    def _changed(self, net: Network, skip: str | None = None) -> None:
        """Rewrite the hosts file, and each running member's own copy of it (a VM guest's)."""
        _write_hosts(net)
        for m in list(net.members.values()):
            if m.rt.hosts_copied and m.name != skip:
                _refresh_guest(net, m)

    def remove_all(self) -> None:
        """Remove every network (when the session closes, after its instances)."""
        for n in self.names():
            try:
                self.rm(n, force=True)
            except KitError:
                pass


def _holder_kind(holder: str | None) -> str:
    if holder not in (None, "auto", *HOLDERS):
        raise KitError(f"holder {show(holder)} is not known: use 'docker', 'process' or leave it out")
    if holder not in (None, "auto"):
        return holder
    # A holder every available runtime can join: one of the kind a picky runtime needs, where one is here.
    for name in runtimes.names():
        rt = runtimes.get(name)
        if rt.network_holder in HOLDERS and rt.availability().available:
            return rt.network_holder
    return "process"


def _start_process(name: str, d: Path) -> Network:
    nsfd = new_loopback_netns()
    sleep = shutil.which("sleep") or "/bin/sleep"
    try:
        # The environment marker lets the sweep of a dead session find and kill it.
        proc = subprocess.Popen([sleep, "infinity"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=marked_env(None), start_new_session=True,
                                preexec_fn=lambda: setns(nsfd))
    except (OSError, subprocess.SubprocessError) as e:
        os.close(nsfd)
        raise StartFailed(f"network {name!r}: could not start its holder process: {e}") from None
    return Network(name, "process", str(proc.pid), proc.pid, nsfd, d, proc=proc)


def _write_hosts(net: Network) -> None:
    # In place (truncate and write the same inode): the bind mounts of running members see it.
    with open(net.hosts_path, "w") as f:
        f.write(net.hosts_text())


def _refresh_guest(net: Network, m: Member) -> None:
    try:
        if m.rt.running(m.inst):
            m.rt.exec(m.inst, ["sh", "-c", 'printf "%s" "$1" >/etc/hosts', "sh", net.hosts_text(guest=m.name)],
                      timeout=20)
    except KitError:
        pass  # a VM that cannot take it keeps its old list (names that joined later do not resolve there)
