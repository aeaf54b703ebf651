"""The bare-process baseline: the command runs on the host, no isolation at all.

The image is ignored: the command is looked up on the host's PATH. A memory or
CPU limit still applies through a kit-owned cgroup, so the baseline can be
compared like for like.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time

from .._proc import Pumped, Stream, kill_group
from ..errors import StartFailed
from .base import Availability, InstanceState, Runtime, exec_cli


class ProcessRuntime(Runtime):
    name = "process"
    kind = "process"
    uses_image = False
    limits_in_kit_cgroup = True
    # The host's own network and files, no image; CPU from its processes (no cgroup unless limited).
    host_network = shares_host_files = True
    image_formats = ()
    cgroup_accounting = False
    cannot = {k: f"a bare process runs as this user on the host, {why}" for k, why in (
        ("user", "with no image users to switch to"), ("cap_add", "with this user's capabilities"),
        ("cap_drop", "with this user's capabilities"), ("sysctls", "in the host's namespaces"),
        ("tmpfs", "in the host's files"), ("init", "whose init is the host's"),
        ("stop_signal", "stopped by SIGTERM to its process group"))}

    def probe(self) -> Availability:
        return Availability(self.name, self.kind, True, version=f"Linux {platform.release()}")

    def start(self, inst: InstanceState, stream: Stream | None = None) -> None:
        spec = inst.spec
        if spec.memory or spec.cpus:
            inst.cgroup = inst.kit_cgroup().create(spec.memory, spec.cpus)
        env = dict(os.environ)
        env.update(spec.env)
        group = inst.cgroup

        def enter_cgroup():  # runs in the child before exec, so the limit holds from the first byte
            if group is not None:
                group.add(os.getpid())

        try:
            inst.proc = Pumped(spec.command, inst.state_dir, stream=stream, detach=spec.detach, env=env,
                               cwd=spec.workdir, preexec_fn=enter_cgroup if group else None)
        except (OSError, subprocess.SubprocessError) as e:
            if group is not None:
                group.destroy()
            raise StartFailed(f"process: could not start {spec.command[0]!r}: {e}") from None
        inst.phases["launched"] = inst.proc.launched_at
        inst.phases["started"] = time.time()  # Popen returns once the exec succeeded: the command runs

    def stop(self, inst: InstanceState, timeout: float = 10.0) -> None:
        if inst.proc is not None:
            kill_group(inst.proc.proc, grace=timeout)

    def exec(self, inst, argv, stream=None, timeout=None):
        # A bare process has no inside: exec runs beside it on the host.
        return exec_cli(inst, argv, argv, stream, timeout, cwd=inst.spec.workdir)
