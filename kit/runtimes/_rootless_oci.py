"""How runc, crun and runsc run as an ordinary (non-root) user: as root of a user namespace of the
kit's own. Used by :mod:`.oci` only; apart because it is one idea with its own invariants (what the
launcher mounts, which namespace a control command must enter), used at four points of the backend.

Rootless runc and crun run inside a user namespace of the kit's own (``unshare --user
--map-root-user --mount``, plus ``--map-auto`` for the user's subordinate IDs, ``/etc/subuid``,
when ``newuidmap`` is installed: :func:`kit.userns.unshare_args`): the user is root there, the
instance's overlay is mounted in that namespace's private mount namespace (an ordinary user cannot
mount one on the host), and the runtime runs as that namespace's root, so it makes the container's
other namespaces inside it. The overlay goes when the last process of that mount namespace does:
nothing to unmount, nothing to leak. Later control commands run on the host (``kill``, ``state``,
``delete``: the user owns the processes and the state) or, for ``exec``, enter the container's user
namespace (``nsenter``). Runtime state lives under ``$XDG_RUNTIME_DIR`` or ``$KIT_HOME``
(:func:`kit.userns.state_base`); there are no cgroups of the runtime's own.

Memory and CPU limits need a cgroup the user may write: on cgroup v2 a subtree systemd delegated
to the user (:func:`kit.cgroups.delegated_cgroup`); elsewhere (cgroup v1) a run asking for a limit
is refused (:meth:`kit.runtimes.base.Runtime.check_limits`), never run unlimited.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import cgroups, userns
from . import _rootfs

#: What a writable rootless OCI root is (InstanceState.info["rootfs"]).
ROOTFS_KIND = "overlay (in the kit's user namespace)"
#: Run by ``sh -c`` as root of the kit's user namespace: mount the overlay (when there is one), then
#: become the runtime. Data only as arguments: $1 the overlay's options, $2 its mount point.
_LAUNCH = ('if [ -n "$1" ]; then mount -t overlay overlay -o "$1" "$2" || exit 125; fi; '
           'if [ "$3" = net ]; then ip link set lo up || exit 125; fi; shift 3; exec "$@"')


def fit_config(cfg: dict) -> dict:
    """Make a root OCI config fit a runtime run as root of the kit's user namespace (see
    :func:`launcher`; as ``runc spec --rootless`` does, but the user namespace is the launcher's and
    the own network namespace stays): /sys bound instead of mounted, no uid=/gid= mount options,
    no cgroup path or resources unless systemd delegated a cgroup v2 subtree."""
    linux = cfg["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "user"]
    linux.pop("resources", None)
    if cgroups.delegated_cgroup() is None:  # cgroup v2 with a delegated subtree: the kit's group is the user's
        linux.pop("cgroupsPath", None)
    mounts = []
    for m in cfg["mounts"]:
        if m["destination"] == "/sys":
            m = {"destination": "/sys", "type": "none", "source": "/sys",
                 "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        elif "options" in m:
            m = {**m, "options": [o for o in m["options"] if not o.startswith(("uid=", "gid="))]}
        mounts.append(m)
    cfg["mounts"] = mounts
    return cfg


def launcher(overlay: tuple[str, str] | None = None, net: bool = False) -> list[str]:
    """The argv prefix that starts a runtime as root of a new user namespace of the kit's, after
    mounting ``overlay`` (options, mount point; from :func:`overlay`) there; with ``net``,
    in a new network namespace too, its loopback up (gVisor's ``--network=host`` uses it)."""
    opts, target = overlay or ("", "")
    return [*userns.unshare_args(), *(["--net"] if net else []), "--", "sh", "-c", _LAUNCH, "sh", opts, target,
            "net" if net else ""]


def control_prefix(runtime_root: Path, inst) -> list[str]:
    """The argv prefix of a control command for ``inst``: :func:`launcher` before it is launched,
    then ``nsenter`` into its user namespace while it runs (``exec`` must join namespaces that
    namespace owns; with the launcher's own network namespace, into that too, where gVisor's
    control socket is), then nothing (``delete`` of what is left needs no namespace)."""
    net = bool(inst.info.get("launcher_netns"))
    if inst.proc is None:
        return launcher(inst.info.get("overlay_mount"), net)
    for pid in (_state_pid(runtime_root / inst.id / "state.json"), inst.proc.pid):
        if pid and _in_other_userns(pid):
            return ["nsenter", "-t", str(pid), "-U", *(["-n"] if net else []), "--preserve-credentials", "--"]
    return []


def _state_pid(state: Path) -> int | None:
    """runc's (and crun's) container init pid from its state file, or None."""
    try:
        return int(json.loads(state.read_text())["init_process_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _in_other_userns(pid: int) -> bool:
    """Whether ``pid`` lives in a user namespace other than this process's (the kit's)."""
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


def overlay(lower: Path, state_dir: Path, target: Path) -> tuple[str, str]:
    """Make the upper, work and mount point directories of an instance's overlay; return what
    :func:`launcher` mounts (the overlay's options, its mount point)."""
    return _rootfs.overlay_options(lower, state_dir, target), str(target)
