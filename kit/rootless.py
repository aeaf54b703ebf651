"""The kit as an ordinary (non-root) user: what differs, and why a runtime cannot run rootless.

Rootless runc and crun run inside a user namespace of the kit's own (``unshare --user
--map-root-user --mount``, plus ``--map-auto`` for the user's subordinate IDs, ``/etc/subuid``,
when ``newuidmap`` is installed): the user is root there, the instance's overlay is mounted in that
namespace's private mount namespace (an ordinary user cannot mount one on the host), and the
runtime runs as that namespace's root, so it makes the container's other namespaces inside it.
The overlay goes when the last process of that mount namespace does: nothing to unmount, nothing
to leak. Later control commands run on the host (``kill``, ``state``, ``delete``: the user owns
the processes and the state) or, for ``exec``, enter the container's user namespace (``nsenter``).
Runtime state lives under ``$XDG_RUNTIME_DIR`` or ``$KIT_HOME``; there are no cgroups of the
runtime's own.

Memory and CPU limits need a cgroup the user may write: on cgroup v2 a subtree systemd delegated
to the user (:func:`delegated_cgroup`); elsewhere (cgroup v1) a run asking for a limit is refused
with :func:`limits_refusal`, never run unlimited.

Every ``*_reason`` function returns "" when nothing stands in the way, else one line that says
what is missing and how to get it; the runtimes' probes put it in ``kit.runtimes.available()``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

from . import config

#: Runtimes whose memory/CPU limits are kit-made cgroups (Docker's daemon and QEMU's guest size
#: enforce their own).
KIT_CGROUP_RUNTIMES = ("process", "runc", "crun", "runsc", "lxc")
#: What a writable rootless OCI root is (Instance.info["rootfs"]).
ROOTFS_KIND = "overlay (in the kit's user namespace)"
#: Run by ``sh -c`` as root of the kit's user namespace: mount the overlay (when there is one), then
#: become the runtime. Data only as arguments: $1 the overlay's options, $2 its mount point.
_LAUNCH = ('if [ -n "$1" ]; then mount -t overlay overlay -o "$1" "$2" || exit 125; fi; '
           'if [ "$3" = net ]; then ip link set lo up || exit 125; fi; shift 3; exec "$@"')


def active() -> bool:
    """True when the kit runs as an ordinary user."""
    return os.geteuid() != 0


def user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def mode() -> str:
    """``rootless`` or ``root``: what the environment record of a study says."""
    return "rootless" if active() else "root"


# -- user namespaces ------------------------------------------------------------------
def subordinate_ids(kind: str = "uid", name: str | None = None) -> list[tuple[int, int]]:
    """The user's ranges in ``/etc/sub{uid,gid}`` as (first, count)."""
    name = name or user()
    ids = {name, str(os.geteuid() if kind == "uid" else os.getegid())}
    out = []
    try:
        lines = Path(f"/etc/sub{kind}").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in ids and parts[1].isdigit() and parts[2].isdigit():
            out.append((int(parts[1]), int(parts[2])))
    return out


def _helper(name: str) -> str | None:
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        p = Path(d) / name
        if p.exists():
            return str(p)
    return None


def id_mappings() -> tuple[list[dict], list[dict]]:
    """OCI ``uidMappings``/``gidMappings``: the user as root inside; the first subordinate range as
    1..N inside when ``newuidmap``/``newgidmap`` exist to install it (runc and crun call them)."""
    maps = []
    for kind, own, helper in (("uid", os.geteuid(), "newuidmap"), ("gid", os.getegid(), "newgidmap")):
        m = [{"containerID": 0, "hostID": own, "size": 1}]
        ranges = subordinate_ids(kind)
        if ranges and _helper(helper):
            first, count = ranges[0]
            m.append({"containerID": 1, "hostID": first, "size": min(count, 65536)})
        maps.append(m)
    return maps[0], maps[1]


def userns_reason() -> str:
    """Why this user cannot make a user namespace, or ""."""
    try:
        if Path("/proc/sys/kernel/unprivileged_userns_clone").read_text().strip() == "0":
            return "unprivileged user namespaces are off: sysctl kernel.unprivileged_userns_clone=1 (as root)"
    except OSError:
        pass
    try:
        if Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0":
            return "user namespaces are disabled: sysctl user.max_user_namespaces=15000 (as root)"
    except OSError:
        pass
    return ""


def oci_config(cfg: dict) -> dict:
    """Make a root OCI config fit a runtime run as root of the kit's user namespace (see
    :func:`launcher`; as ``runc spec --rootless`` does, but the user namespace is the launcher's and
    the own network namespace stays): /sys bound instead of mounted, no uid=/gid= mount options,
    no cgroup path or resources unless systemd delegated a cgroup v2 subtree."""
    linux = cfg["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "user"]
    linux.pop("resources", None)
    if delegated_cgroup() is None:  # cgroup v2 with a delegated subtree: the kit's group is the user's
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


def state_base() -> Path:
    """Where a rootless session keeps runtime state (``runc --root``...): ``$XDG_RUNTIME_DIR/kit``
    when that is the user's own directory, else ``$KIT_HOME``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.stat(xdg)
            if st.st_uid == os.geteuid() and os.access(xdg, os.W_OK):
                return Path(xdg) / "kit"
        except OSError:
            pass
    return config.home()


def unshare_args() -> list[str]:
    """``unshare`` making the kit's user namespace (the user as root, subordinate IDs from 1) and
    a private mount namespace in it."""
    argv = ["unshare", "--user", "--map-root-user", "--mount"]
    if subordinate_ids("uid") and subordinate_ids("gid") and _helper("newuidmap") and _helper("newgidmap"):
        argv.insert(3, "--map-auto")
    return argv


def launcher(overlay: tuple[str, str] | None = None, net: bool = False) -> list[str]:
    """The argv prefix that starts a runtime as root of a new user namespace of the kit's, after
    mounting ``overlay`` (options, mount point; from :func:`overlay_options`) there; with ``net``,
    in a new network namespace too, its loopback up (gVisor's ``--network=host`` uses it)."""
    opts, target = overlay or ("", "")
    return [*unshare_args(), *(["--net"] if net else []), "--", "sh", "-c", _LAUNCH, "sh", opts, target,
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
        import json

        return int(json.loads(state.read_text())["init_process_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _in_other_userns(pid: int) -> bool:
    """Whether ``pid`` lives, in a user namespace other than this process's (the kit's)."""
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


def overlay_options(lower: Path, state_dir: Path, target: Path) -> tuple[str, str]:
    """Make the upper, work and mount point directories of an instance's overlay; return what
    :func:`launcher` mounts (the overlay's options, its mount point)."""
    from .runtimes._rootfs import _escape

    upper, work = state_dir / "overlay" / "upper", state_dir / "overlay" / "work"
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    return f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}", str(target)


# -- limits ----------------------------------------------------------------------------
def delegated_cgroup(self_cgroup: str | None = None, root: Path | None = None) -> str | None:
    """On cgroup v2, the writable subtree with the memory and cpu controllers that systemd delegates
    to the user (``user@UID.service``) and this process runs in, as a path below ``root``
    (/sys/fs/cgroup); else None. Only from inside it may the kit move processes into groups of its
    own there (a login session's scope is outside it: its common ancestor is root's).

    Args:
        self_cgroup, root: this process's /proc/self/cgroup text and the hierarchy's root (tests).
    """
    from . import cgroups

    if root is None and cgroups.version() != 2:
        return None
    root = root or cgroups.ROOT
    try:
        text = self_cgroup if self_cgroup is not None else Path("/proc/self/cgroup").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("0::"))
    except (OSError, StopIteration):
        return None
    rel = line[3:].strip("/")
    parts = rel.split("/")
    # Go up to the delegated unit (user@UID.service): the kit's groups go beside the session's own.
    for i in range(len(parts), 0, -1):
        if parts[i - 1].startswith("user@") and parts[i - 1].endswith(".service"):
            base = "/".join(parts[:i])
            d = root / base
            try:
                ctrl = set((d / "cgroup.controllers").read_text().split())
            except OSError:
                return None
            if {"memory", "cpu"} <= ctrl and os.access(d, os.W_OK):
                return base
            return None
    return None


def limits_refusal() -> str:
    """Why an ordinary user's run cannot have a memory/CPU limit here, or "" when it can."""
    from . import cgroups

    if not active():
        return ""
    if cgroups.version() != 2:
        return (f"limits need a cgroup this user may write; cgroup {cgroups.describe()} gives non-root users "
                "none: run as root, or use a cgroup v2 host with systemd (a delegated subtree)")
    if delegated_cgroup() is None:
        return ("limits need a cgroup this user may write: run the kit inside the subtree your systemd user "
                "manager is delegated (e.g. systemd-run --user --scope jupyter lab), or run as root")
    return ""


def check_limits(runtime: str, memory, cpus) -> None:
    """Refuse a limited run that this user's runtime cannot enforce (LimitsUnavailable)."""
    if not (memory or cpus) or runtime not in KIT_CGROUP_RUNTIMES:
        return
    why = limits_refusal()
    if why:
        from .errors import LimitsUnavailable

        raise LimitsUnavailable(f"{runtime}: cannot limit {'memory' if memory else 'cpu'} as {user()}: {why}")


def idle_limit(runtime: str, memory):
    """The memory limit of a study's idle instance: ``memory``, or None where this user's runtime
    cannot enforce one (the study's environment record says so: :func:`enforced_limits`); a limit
    caps an idle instance, it does not change what it uses."""
    return None if limits_refusal() and runtime in KIT_CGROUP_RUNTIMES else memory


def enforced_limits(runtime: str) -> str:
    """What the environment record says about limits for ``runtime`` run by this user."""
    if not active() or runtime not in KIT_CGROUP_RUNTIMES:
        return "enforced"
    return "refused (" + limits_refusal() + ")" if limits_refusal() else "enforced (delegated cgroup v2)"


# -- why a runtime cannot run as this user -----------------------------------------------
def docker_socket_reason(host: str) -> str:
    """Why this user cannot reach the Docker daemon at ``host`` (a unix:// URL), or ""."""
    if not host.startswith("unix://"):
        return ""
    sock = host[len("unix://"):]
    try:
        st = os.stat(sock)
    except FileNotFoundError:
        return ""
    except PermissionError:
        return f"permission denied on the directory of {sock}: set DOCKER_HOST to a daemon this user can reach"
    if not stat.S_ISSOCK(st.st_mode) or os.access(sock, os.R_OK | os.W_OK):
        return ""
    group = _group(st.st_gid)
    how = f"add your user to the {group} group (then log in again)" if group != "root" else \
        "ask for access to it"
    return f"permission denied on {sock}: {how} or set DOCKER_HOST to a rootless daemon"


def kvm_reason(dev: Path = Path("/dev/kvm")) -> str:
    """Why this user cannot open ``/dev/kvm`` although it exists, or ""."""
    try:
        st = dev.stat()
    except OSError:
        return ""
    if os.access(dev, os.R_OK | os.W_OK):
        return ""
    group = _group(st.st_gid)
    if group == "root":
        how = "add yourself to the kvm group (then log in again); here the device is root-only " \
              f"({stat.filemode(st.st_mode)} root:root): as root, chgrp kvm {dev} && chmod 660 {dev}"
    else:
        how = f"add yourself to the {group} group (then log in again)"
    return f"{dev} exists but {user()} cannot open it: {how}"


def lxc_reason() -> str:
    """The exact piece unprivileged LXC lacks here, or "" (it then runs without cgroups of its own)."""
    if not subordinate_ids("uid") or not subordinate_ids("gid"):
        return f"unprivileged LXC needs subordinate IDs for {user()}: as root, usermod --add-subuids " \
               f"100000-165535 --add-subgids 100000-165535 {user()}"
    if not (_helper("newuidmap") and _helper("newgidmap")):
        return "unprivileged LXC needs newuidmap and newgidmap: apt-get install uidmap"
    return ""


def lxc_idmap_lines() -> list[str]:
    """``lxc.idmap`` lines of an unprivileged LXC container: :func:`id_mappings` in LXC's words."""
    uids, gids = id_mappings()
    return [f"lxc.idmap = {k} {m['containerID']} {m['hostID']} {m['size']}"
            for k, maps in (("u", uids), ("g", gids)) for m in maps]


def podman_args() -> list[str]:
    """Podman's global options for this user: rootless Podman's default runtime (crun) refuses
    cgroup v1 hybrid hosts, where rootless runc works."""
    from . import cgroups

    if active() and cgroups.version() != 2 and _helper("runc"):
        return ["--runtime", "runc"]
    return []


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# -- sockets inside a user-namespace-owned network namespace ---------------------------------
NS_GET_USERNS = 0xB701
_SOCKET_SERVER = r"""
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
user_fd, net_fd, ch_fd = map(int, sys.argv[1:4])
for fd, kind in ((user_fd, 0x10000000), (net_fd, 0x40000000)):  # CLONE_NEWUSER, then CLONE_NEWNET
    if libc.setns(fd, kind) != 0:
        sys.stderr.write("setns: " + os.strerror(ctypes.get_errno()) + "\n"); sys.exit(1)
    os.close(fd)
ch = socket.socket(fileno=ch_fd)
ch.sendall(b"!")
while ch.recv(1):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socket.send_fds(ch, [b"s"], [s.fileno()])
    s.close()
"""


class NetnsSockets:
    """Hands out TCP sockets created in a network namespace that a user namespace owns.

    An ordinary user cannot ``setns`` a thread into a container's network namespace (that needs
    CAP_SYS_ADMIN in the user's own namespace too), but a fresh, single-threaded helper process of
    the same user may enter the container's user namespace (its owner has every capability there)
    and then its network namespace. The helper creates each socket there and passes it back over a
    socketpair (SCM_RIGHTS); the socket stays in that namespace wherever it is used. The helper
    exits when the socketpair closes, also when this process dies.

    Args:
        netns_fd: an open fd of the target network namespace.
    """

    def __init__(self, netns_fd: int, timeout: float = 10.0):
        import fcntl
        import socket
        import sys

        self._lock = __import__("threading").Lock()
        user_fd = fcntl.ioctl(netns_fd, NS_GET_USERNS)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fds = (user_fd, netns_fd, theirs.fileno())  # the user namespace, the network one, its end
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SOCKET_SERVER, *map(str, fds)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=fds)
        finally:
            os.close(user_fd)
            theirs.close()
        self._sock = ours
        ours.settimeout(timeout)
        try:
            ready = ours.recv(1)
        except OSError:
            ready = b""
        if ready != b"!":
            ours.close()
            try:
                err = self._proc.communicate(timeout=5)[1].decode(errors="replace").strip()
            except subprocess.TimeoutExpired:
                self._proc.kill()
                err = self._proc.communicate()[1].decode(errors="replace").strip()
            raise OSError(f"cannot enter the container's namespaces as {user()}: {err or 'helper failed'}")

    def socket(self):
        import socket

        with self._lock:
            self._sock.sendall(b"?")
            _msg, fds, _flags, _addr = socket.recv_fds(self._sock, 1, 1)
        if not fds:
            raise OSError("the namespace helper is gone")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        self._sock.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()



def rmtree(path: Path) -> None:
    """``shutil.rmtree`` that also removes directories the user owns but may not read (an overlay's
    ``work/work``, mode 000, which a user-namespace mount leaves) and, as an ordinary user, files a
    container made as one of the user's subordinate IDs (through ``unshare --map-auto``, as root of a
    namespace with the same mapping); never raises."""
    import shutil

    def retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, ignore_errors=True)
            else:
                func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
    if os.path.lexists(path) and active() and subordinate_ids("uid") and _helper("newuidmap"):
        try:
            subprocess.run(["unshare", "--map-root-user", "--map-auto", "rm", "-rf", "--", str(path)],
                           capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
