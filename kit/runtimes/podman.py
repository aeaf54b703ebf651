"""Podman, through its command line (argv lists, never a shell).

Same shape as the Docker backend: the kit image is ``podman import``-ed from a
tar of its root filesystem (tag ``kit/<name>:<short id>``), containers are
named after the instance id and labelled with the session. ``podman run``
stays attached, so its exit code is the command's and its output is teed to
the state directory like any command-line runtime.

Podman refuses to start containers on some hosts (e.g. where raising
RLIMIT_NOFILE is forbidden); the probe proves a tiny run works, and reports
the exact error when it does not.
"""

from __future__ import annotations

import subprocess
import time

from .. import cgroups, config, userns
from .._proc import Pumped, Stream, kill_group, run
from ..errors import ImageError, StartFailed
from ..images import archive, engine
from ..images import get as get_image
from .base import Availability, InstanceState, Runtime, descendants, exec_cli, which

PROBE_TIMEOUT = 30


def global_args() -> list[str]:
    """Podman's global options for this user: rootless Podman's default runtime (crun) refuses
    cgroup v1 hybrid hosts, where rootless runc works."""
    if userns.active() and cgroups.version() != 2 and userns.system_tool("runc"):
        return ["--runtime", "runc"]
    return []


class PodmanRuntime(Runtime):
    name = "podman"
    kind = "container"
    image_formats = ("podman",)  # podman's own copy of the image (podman import)
    #: Its own -p: rootlessport for an ordinary user (as root the kernel's NAT: no process).
    forwarder_process = "rootlessport"

    def probe(self) -> Availability:
        exe = which("podman")
        if not exe:
            return Availability(self.name, self.kind, False, reason="podman is not installed: apt-get install podman")
        try:
            version = run([exe, "--version"], timeout=10).stdout.decode().strip().rsplit(" ", 1)[-1]
            ref = self._ensure(get_image("busybox"))
            p = run([exe, *global_args(), "run", "--rm", "--network", "none",
                     "--name", f"kit-probe-{config.SESSION_ID}", ref, "true"],
                    timeout=PROBE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return Availability(self.name, self.kind, False, reason=f"podman did not answer within {PROBE_TIMEOUT} s")
        except (ImageError, subprocess.CalledProcessError, OSError) as e:
            return Availability(self.name, self.kind, False, reason=f"podman cannot prepare an image here: {e}")
        if p.returncode != 0:
            lines = p.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {p.returncode}"]
            why = lines[-1].removeprefix("Error: ").strip()
            if "RLIMIT" in why:
                why += " (this host forbids raising resource limits: CAP_SYS_RESOURCE is dropped)"
            return Availability(self.name, self.kind, False, version=version, reason=f"podman run fails here: {why}")
        return Availability(self.name, self.kind, True, version=version)

    def _ensure(self, image) -> str:
        """``podman import`` the image's rootfs once; return its tag."""
        ref = engine.engine_ref(image)
        if run(["podman", "image", "exists", ref], timeout=30, check=False).returncode == 0:
            return ref
        changes = [a for k, v in engine.engine_labels(image).items() for a in ("--change", f"LABEL {k}={v}")]
        tar = archive.pack(image.rootfs)
        try:
            p = subprocess.run(["podman", "import", *changes, "-", ref], stdin=tar.stdout, capture_output=True,
                               timeout=600)
        finally:
            tar.stdout.close()
            try:
                tar.wait(60)
            except subprocess.TimeoutExpired:
                tar.kill()
                tar.wait()
        if p.returncode:
            raise ImageError(f"podman import of {image.name!r} failed: {p.stderr.decode(errors='replace').strip()[-300:]}")
        return ref

    def start(self, inst: InstanceState, stream: Stream | None = None) -> None:
        spec = inst.spec
        inst.phases["launched"] = time.time()
        ref = self._ensure(inst.image)
        argv = ["podman", *global_args(), "run", "--name", inst.id, "--hostname", spec.hostname,
                "--label", f"kit.session={inst.ctx.owner}", "--label", f"kit.name={inst.name}",
                "--label", "kit.managed=1"]
        if spec.ports:
            for host, cont in spec.ports:
                argv += ["-p", f"127.0.0.1:{host}:{cont}"]
        else:
            argv += ["--network", "none"]
        if spec.memory:
            argv += ["--memory", str(spec.memory), "--memory-swap", str(spec.memory)]
        if spec.cpus:
            argv += ["--cpus", str(spec.cpus)]
        # podman import keeps no ENV or WORKDIR of the kit's image: both are given here, the
        # image's own (its PATH, for one) under the user's, as for every other runtime.
        for k, v in spec.environment(inst.image).items():
            argv += ["-e", f"{k}={v}"]
        argv += ["-w", spec.working_dir(inst.image)]
        if spec.read_only:
            argv.append("--read-only")
        argv += _extras(spec)
        try:
            inst.proc = Pumped(argv + [ref, *spec.command], inst.state_dir, stream=stream, detach=spec.detach)
        except OSError as e:
            raise StartFailed(f"podman: could not start: {e}") from None

    def stop(self, inst: InstanceState, timeout: float = 10.0) -> None:
        if timeout <= 0:
            run(["podman", "kill", inst.id], timeout=30, check=False)
        else:
            run(["podman", "stop", "-t", str(max(1, int(round(timeout)))), inst.id], timeout=timeout + 30, check=False)

    def cleanup(self, inst: InstanceState) -> None:
        run(["podman", "rm", "-f", "-v", inst.id], timeout=60, check=False)
        if inst.proc is not None:
            kill_group(inst.proc.proc)

    def sweep(self, session: str, dry_run: bool = False) -> list[str]:
        """Remove podman's containers labelled ``kit.session=<session>``."""
        if not which("podman"):
            return []
        p = run(["podman", "ps", "-a", "--filter", f"label=kit.session={session}", "--format", "{{.Names}}"],
                timeout=30, check=False)
        names = p.stdout.decode(errors="replace").split() if p.returncode == 0 else []
        if names and not dry_run:
            run(["podman", "rm", "-f", "-v", *names], timeout=60, check=False)
        return [f"podman container {n}" for n in names]

    def exec(self, inst, argv, stream=None, timeout=None):
        return exec_cli(inst, ["podman", "exec", inst.id, *argv], argv, stream, timeout)

    def _inspect(self, inst: InstanceState, fmt: str) -> str:
        p = run(["podman", "inspect", "--format", fmt, inst.id], timeout=30, check=False)
        return p.stdout.decode(errors="replace").strip() if p.returncode == 0 else ""

    def oom_killed(self, inst: InstanceState) -> bool:
        return self._inspect(inst, "{{.State.OOMKilled}}") == "true"

    def pids(self, inst: InstanceState) -> list[int]:
        out = set(super().pids(inst))
        pid = self._inspect(inst, "{{.State.Pid}}")
        if pid.isdigit() and int(pid) > 0:
            out.add(int(pid))
            out.update(descendants(int(pid)))
        out.update(self.monitor_pids(inst))
        return sorted(out)

    def monitor_pids(self, inst: InstanceState) -> list[int]:
        """Podman's per-container monitor, conmon: the parent of the container's first process."""
        pid = self._inspect(inst, "{{.State.ConmonPid}}")
        return [int(pid)] if pid.isdigit() and int(pid) > 0 else []


def _extras(spec) -> list[str]:
    """``podman run``'s flags of a spec's user, capabilities, sysctls, tmpfs, init, stop signal and labels."""
    argv = ["--user", spec.user] if spec.user else []
    argv += [a for c in spec.cap_add for a in ("--cap-add", c)] + [a for c in spec.cap_drop for a in ("--cap-drop", c)]
    argv += [a for k, v in spec.sysctls.items() for a in ("--sysctl", f"{k}={v}")]
    argv += [a for t in spec.tmpfs for a in ("--tmpfs", f"{t.target}:{','.join(['nosuid', 'nodev', 'noexec', *t.options()])}")]
    argv += ["--init"] if spec.init else []
    argv += ["--stop-signal", spec.stop_signal] if spec.stop_signal != "SIGTERM" else []
    return argv + [a for k, v in spec.labels.items() for a in ("--label", f"{k}={v}")]
