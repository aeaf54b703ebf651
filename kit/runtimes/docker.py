"""Docker: containers of the local daemon, driven through the ``docker`` SDK.

Nothing is pulled during a run: the kit image's root filesystem is
``docker import``-ed once (tag ``kit/<name>:<short id>``) and reused. Every
container is named after the instance id and labelled ``kit.session``,
``kit.name`` and ``kit.managed=1``, so a later sweep can find what a dead
session left. A container has no network (``network_mode=none``: only its own
loopback) or a kit network's namespace; Docker's bridge and docker-proxy are never
used. Published ports are the kit's own :class:`~kit.portfwd.Forwarder` on
127.0.0.1, into the container's namespace (``/proc/PID/ns/net``) once it runs, as
for the OCI runtimes.

The container's cgroup and its containerd shim belong to the daemon: the kit
reads them for measurement (:meth:`DockerRuntime.cgroup_path`,
:meth:`DockerRuntime.monitor_pids`) and never kills or removes them; removing
the container is the daemon's job (``inst.cgroup`` stays None).

Startup clock: ``requested`` (stamped by the API) -> ``image_ready`` (the image
is in the daemon: Docker's preparation) -> ``launched`` (the create call, the
first half of ``docker run``) -> ``created`` -> ``started``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from .._proc import Stream, deliver, process_alive
from ..cgroups import Cgroup
from ..cgroups import version as cgroup_version
from ..errors import CommandNotFound, KitError, KitTimeout, NameInUse, StartFailed
from ..images import engine
from ..portfwd import Forwarder
from . import _rootfs
from .base import Availability, InstanceState, Runtime, descendants

PROBE_TIMEOUT = 2


class DockerRuntime(Runtime):
    name = "docker"
    kind = "container"
    supports_networks = True  # kit.networks: joins the network's namespace
    network_holder = "docker"  # network_mode=container:ID: only a Docker container's namespace
    supports_volumes = True  # kit.volumes: bind mounts of the kit's directories
    image_formats = ("docker",)  # the daemon's copy of the image (and its containers' writable layers)
    daemons = ("dockerd", "containerd")
    #: ``precreated``: :meth:`create` ahead, :meth:`start_created` on demand (the warm pool, :mod:`kit.pool`).
    start_modes = ("cold", "precreated")

    @staticmethod
    def _api(inst: InstanceState):
        """The Docker API of ``inst``'s session (its client, through the instance's context)."""
        return inst.ctx.docker().api

    def probe(self) -> Availability:
        try:
            import docker  # noqa: F401  (whether the SDK is there)
        except ImportError:
            return Availability(self.name, self.kind, False,
                                reason="the docker Python SDK is not installed: pip install docker")
        try:
            # A short-lived client: a hung daemon must not hold up the probe.
            with engine.connected(timeout=PROBE_TIMEOUT) as quick:
                quick.ping()
                v = quick.version()
        except Exception:
            return Availability(self.name, self.kind, False, reason=engine.daemon_unreachable())
        return Availability(self.name, self.kind, True, version=v.get("Version", ""),
                            info={"api": v.get("ApiVersion", ""), "host": engine.docker_host()})

    # -- lifecycle ---------------------------------------------------------
    def start(self, inst: InstanceState, stream: Stream | None = None) -> None:
        self.create(inst)
        self.start_created(inst, stream)

    def create(self, inst: InstanceState) -> str:
        """``docker create``: the image in the daemon, the container made (not started); its id.

        The first half of a cold start, and what a ``precreated`` start does ahead of time (:mod:`kit.pool`)."""
        import docker

        spec = inst.spec
        # Docker's preparation: the image must be in the daemon (imported once, then a lookup).
        ref = engine.ensure_in_docker(inst.ctx.docker(), inst.image)
        inst.info["docker_image"] = ref
        inst.phases["image_ready"] = time.time()
        labels = {"kit.session": inst.ctx.owner, "kit.name": inst.name, "kit.managed": "1"}
        api = self._api(inst)
        host = {"read_only": spec.read_only or None}
        net = inst.net
        if net is not None:
            # A kit network member: the holder's namespace (kit.networks), its names at /etc/hosts;
            # ports go through the kit's forwarder, and Docker refuses a hostname in this mode.
            host["network_mode"] = f"container:{net.holder_id}"
            host["binds"] = [f"{net.hosts_path}:/etc/hosts:ro"]
        else:
            # No network even with ports: a port binding would put the container on Docker's bridge
            # (a 172.x address the host routes to); start_created forwards into its loopback instead.
            host["network_mode"] = "none"
        if inst.mounts:  # kit.volumes: the same host directories every runtime mounts
            host["mounts"] = [docker.types.Mount(m.target, str(m.host), type="bind", read_only=m.read_only)
                              for m in inst.mounts]
        if spec.memory:
            host["mem_limit"] = spec.memory
            host["memswap_limit"] = spec.memory  # equal: no swap on top of the limit
        if spec.cpus:
            host["nano_cpus"] = int(spec.cpus * 1e9)
        if not spec.harden:
            host["security_opt"] = ["seccomp=unconfined"]
        host.update(_extras(spec))
        host_config = api.create_host_config(**host)
        if not spec.harden:
            # Docker's default filter and masked /proc paths off (what the CLI's
            # systempaths=unconfined sends); its default capability set stays.
            host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        try:
            # The low-level calls: the SDK's models add an inspect after each step. docker run is
            # create + start: the clock's launch is the create call, as runc's is its spawn.
            inst.phases["launched"] = time.time()
            cid = api.create_container(
                ref, command=spec.command, name=inst.id, hostname=None if net else spec.hostname,
                labels={**spec.labels, **labels}, environment=spec.environment(inst.image),
                working_dir=spec.working_dir(inst.image), user=spec.user, stop_signal=spec.stop_signal,
                host_config=host_config, stdin_open=False, tty=False, detach=True)["Id"]
        except docker.errors.APIError as e:
            if e.status_code == 409:
                raise NameInUse(f"docker: a container named {inst.id!r} already exists: remove it "
                                f"(docker rm -f {inst.id}) or choose another --name") from None
            raise StartFailed(f"docker: could not create the container: {_explain(e)}") from None
        inst.info["container_id"] = cid
        inst.phases["created"] = time.time()
        return cid

    def start_created(self, inst: InstanceState, stream: Stream | None = None) -> None:
        """``docker start`` of the container :meth:`create` made (attached first when in the foreground)."""
        import docker

        spec, net, cid, api = inst.spec, inst.net, inst.info["container_id"], self._api(inst)
        try:
            if not spec.detach:
                self._attach(inst, cid, stream)
            api.start(cid)
            inst.phases["started"] = time.time()
            if spec.detach or (spec.ports and net is None):
                # A foreground run may be gone already; pids()/cgroup_path() find it on demand.
                self._locate(inst)
            if spec.ports:
                with _rootfs.step(inst, "forwarder"):
                    inst.forwarder = net.publish(spec.ports) if net is not None else self._publish(inst)
        except docker.errors.APIError as e:
            self.cleanup(inst)
            text = _explain(e)
            if _command_missing(text, spec.command[0]):
                raise CommandNotFound(f"docker: command {spec.command[0]!r} not found in image "
                                      f"{inst.image.name!r}: install it in the image or give its full path") from None
            raise StartFailed(f"docker: could not start the container: {text}") from None
        except BaseException:
            self.cleanup(inst)
            raise

    def _publish(self, inst: InstanceState) -> Forwarder | None:
        """The kit's forwarder from 127.0.0.1 into the started container's own namespace; None when
        a quick foreground command has finished already (its result stands; nothing to publish)."""
        pid = inst.info.get("pid")
        if not pid:
            return None
        try:
            fwd = Forwarder(f"/proc/{pid}/ns/net", inst.spec.ports).start()
        except StartFailed:
            # Its process has exited (or is a zombie its shim has not reaped yet), though the daemon may
            # say Running a moment longer, until containerd reports the exit.
            if process_alive(pid) and self.running(inst):
                raise
            return None
        if _cgroup_of(pid) != inst.info.get("docker_cgroup"):
            fwd.stop()  # the container ended and its pid went to another process before the namespace opened
            return None
        return fwd

    def _attach(self, inst: InstanceState, cid: str, stream: Stream | None) -> None:
        """Attach before start (as ``docker run`` does), so no output is missed."""
        from docker.utils.socket import STDERR, frames_iter

        # No "logs": the daemon subscribes to the streams before it answers the attach, so the
        # stream alone misses nothing; logs=1 replays what the stream also delivers (doubled output).
        sock = self._api(inst).attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1})

        def pump():
            with open(inst.stdout_path, "ab") as out, open(inst.stderr_path, "ab") as err:
                cb = stream
                try:
                    for stream_id, data in frames_iter(sock, tty=False):
                        label, f = ("stderr", err) if stream_id == STDERR else ("stdout", out)
                        f.write(data)
                        cb = deliver(cb, label, data)
                finally:
                    try:
                        sock.close()
                    except OSError:
                        pass

        t = threading.Thread(target=pump, name=f"docker-attach-{inst.name}", daemon=True)
        t.start()
        inst.threads.append(t)

    def _locate(self, inst: InstanceState) -> None:
        """Record the container's host PID, shim and cgroup (while it runs), for measurement only.

        The cgroup is the daemon's: it goes into ``inst.info["docker_cgroup"]``, never into
        ``inst.cgroup``, which :meth:`Runtime.remove` would destroy.
        """
        attrs = self._container(inst)
        pid = attrs["State"].get("Pid") if attrs else 0
        if pid:
            inst.info["pid"] = pid
            try:
                inst.info["shim_pid"] = psutil.Process(pid).ppid()
            except psutil.Error:  # it may already have exited
                pass
            rel = _cgroup_of(pid)
            if rel:
                inst.info["docker_cgroup"] = rel

    def _container(self, inst: InstanceState):
        import docker

        try:
            return self._api(inst).inspect_container(inst.id)
        except docker.errors.NotFound:
            return None

    def wait(self, inst: InstanceState, timeout: float | None = None) -> int:
        import docker
        import requests

        try:
            res = self._api(inst).wait(inst.id, timeout=timeout)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            raise subprocess.TimeoutExpired(inst.spec.command, timeout) from None
        except docker.errors.NotFound:
            return inst.exit_code if inst.exit_code is not None else 137
        inst.phases.setdefault("exited", time.time())
        inst.exit_code = int(res.get("StatusCode", -1))
        self._join(inst)
        return inst.exit_code

    def _join(self, inst: InstanceState, timeout: float = 5.0) -> None:
        # The attach stream ends when the container does; a bounded join all the same.
        for t in list(inst.threads):
            t.join(timeout)

    def running(self, inst: InstanceState) -> bool:
        if "container_id" not in inst.info:  # the daemon never made it (its create failed, or never ran)
            return False
        attrs = self._container(inst)
        return bool(attrs and attrs["State"].get("Running"))

    def stop(self, inst: InstanceState, timeout: float = 10.0) -> None:
        import docker

        try:
            if timeout <= 0:
                self._api(inst).kill(inst.id)
            else:
                self._api(inst).stop(inst.id, timeout=max(1, int(round(timeout))))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: it is not running any more
                raise

    def cleanup(self, inst: InstanceState) -> None:
        import docker

        self.unpublish(inst)
        try:
            if "container_id" in inst.info:  # else the daemon never made it (a name taken by another is not ours)
                self._api(inst).remove_container(inst.id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e):
                raise
        self._join(inst)
        inst.threads[:] = [t for t in inst.threads if t.is_alive()]

    def sweep(self, session: str, dry_run: bool = False) -> list[str]:
        """Remove the daemon's containers labelled ``kit.session=<session>``."""
        if not self.availability().available:
            return []
        import docker

        out = []
        with engine.connected(timeout=60) as client:  # a dead session's: this process has no session for it
            for c in client.api.containers(all=True, filters={"label": f"kit.session={session}"}):
                if not dry_run:
                    try:
                        client.api.remove_container(c["Id"], force=True, v=True)
                    except docker.errors.NotFound:
                        pass
                out.append(f"docker container {(c.get('Names') or [c['Id']])[0].lstrip('/')}")
        return out

    def exec(self, inst, argv, stream=None, timeout=None):
        import docker

        try:
            ex = self._api(inst).exec_create(inst.id, argv, stdout=True, stderr=True)
            frames = self._api(inst).exec_start(ex["Id"], stream=True, demux=True)
        except docker.errors.APIError as e:
            raise StartFailed(f"docker: could not exec {argv[0]!r} in {inst.name!r}: {_explain(e)}") from None
        out, err, failed = bytearray(), bytearray(), []

        def pump():
            try:
                for o, e in frames:
                    for label, data, buf in (("stdout", o, out), ("stderr", e, err)):
                        if data:
                            buf.extend(data)
                            if stream is not None:
                                stream(label, data)
            except KitError as e:  # the daemon went away mid-exec: said by the caller
                failed.append(e)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        t.join(timeout or 60)
        if failed:
            raise failed[0]
        info = self._api(inst).exec_inspect(ex["Id"])
        if t.is_alive():
            pid = info.get("Pid")
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise KitTimeout(f"docker: exec of {argv[0]!r} in {inst.name!r} did not finish within {timeout or 60:g} s "
                             f"and was killed")
        code = info.get("ExitCode")
        if code is None:
            code = 126
        if code in (126, 127) and _command_missing(bytes(out + err).decode(errors="replace"), argv[0]):
            raise CommandNotFound(f"docker: command {argv[0]!r} not found in {inst.name!r}: give its full path")
        return code, bytes(out), bytes(err)

    def logs(self, inst: InstanceState) -> tuple[bytes, bytes]:
        if not inst.spec.detach:
            self._join(inst)
            return super().logs(inst)
        # A service's output stays with the daemon, which keeps it however long it runs.
        import docker

        try:
            out = self._api(inst).logs(inst.id, stdout=True, stderr=False)
            err = self._api(inst).logs(inst.id, stdout=False, stderr=True)
            return out, err
        except docker.errors.NotFound:
            return b"", b""

    def oom_killed(self, inst: InstanceState) -> bool:
        attrs = self._container(inst)
        if attrs is None:
            return inst.oom_killed
        return bool(attrs["State"].get("OOMKilled"))

    # -- measurement ---------------------------------------------------------
    def pids(self, inst: InstanceState) -> list[int]:
        """The container's processes (from the daemon and its cgroup) plus its containerd shim."""
        out: set[int] = set()
        attrs = self._container(inst)
        pid = attrs["State"].get("Pid") if attrs else 0
        if pid:
            out.add(pid)
            out.update(descendants(pid))
            if "docker_cgroup" not in inst.info or "shim_pid" not in inst.info:
                self._locate(inst)
            out.update(self.monitor_pids(inst))
            group = self._cgroup(inst)
            if group is not None:
                out.update(group.pids())
        return sorted(out)

    def monitor_pids(self, inst: InstanceState) -> list[int]:
        """The container's containerd shim: one per container, its parent, not a descendant.

        Reported apart from the container's own memory (as ``runc run`` is for runc).
        """
        shim = inst.info.get("shim_pid")
        if not shim:
            return []
        try:
            if psutil.Process(shim).name().startswith("containerd-shim"):
                return [shim]
        except psutil.Error:
            pass
        return []

    def cgroup_path(self, inst: InstanceState) -> Path | None:
        """The daemon's cgroup of the container (its memory group), read-only for the kit."""
        group = self._cgroup(inst)
        return group.path if group is not None else None

    def _cgroup(self, inst: InstanceState) -> Cgroup | None:
        # A view for reading only: it is never inst.cgroup, so remove() never destroys it.
        if "docker_cgroup" not in inst.info:
            self._locate(inst)
        rel = inst.info.get("docker_cgroup")
        return Cgroup(rel) if rel else None


def _extras(spec) -> dict:
    """The host config of a spec's capabilities, sysctls, tmpfs and init, as the daemon takes them."""
    out: dict = {}
    if spec.cap_add:
        out["cap_add"] = list(spec.cap_add)
    if spec.cap_drop:
        out["cap_drop"] = list(spec.cap_drop)
    if spec.sysctls:
        out["sysctls"] = dict(spec.sysctls)
    if spec.tmpfs:
        out["tmpfs"] = {t.target: ",".join(["nosuid", "nodev", "noexec", *t.options()]) for t in spec.tmpfs}
    if spec.init:
        out["init"] = True
    return out


def _explain(e) -> str:
    return str(getattr(e, "explanation", None) or e).strip()


def _command_missing(text: str, argv0: str) -> bool:
    """Does the daemon's error say the command is not in the image?"""
    text = text.lower()
    return "executable file not found" in text or (argv0.lower() in text and "no such file or directory" in text)


def _cgroup_of(pid: int) -> str | None:
    """The container's cgroup below the hierarchy root, from /proc/<pid>/cgroup.

    v1: the ``memory`` line (``/docker/<id>``); v2: the unified ``0::`` line.
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if cgroup_version() == 2 and controllers == "":
            return path.lstrip("/") or None
        if cgroup_version() == 1 and "memory" in controllers.split(","):
            return path.lstrip("/") or None
    return None

