"""The kit as an ordinary (non-root) user: the facts every runtime shares.

Who the user is (:func:`active`, :func:`user`, :func:`mode`), the user's subordinate IDs and the
mappings made from them (:func:`subordinate_ids`, :func:`id_mappings`), whether a user namespace
can be made (:func:`userns_reason`) and the ``unshare`` that makes the kit's own
(:func:`unshare_args`), where rootless state lives (:func:`state_base`), removing what a user
namespace left (:func:`rmtree`), and sockets made inside a network namespace that a user namespace
owns (:class:`NetnsSockets`). What each runtime does with them is in its own module under
:mod:`kit.runtimes`; which cgroup an ordinary user may limit is :mod:`kit.cgroups`'.

This module sits at the bottom of the kit: it imports nothing of it but :mod:`kit.config`.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from . import config
from ._files import remove_files_and_dir


def active() -> bool:
    """True when the kit runs as an ordinary user."""
    return os.geteuid() != 0


def user() -> str:
    """The user's name (the uid as a string when it has none)."""
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


def system_tool(name: str) -> str | None:
    """The path of ``name`` (``newuidmap``, ``runc``...) in the system's own bin directories, or None."""
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
        if ranges and system_tool(helper):
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
    if subordinate_ids("uid") and subordinate_ids("gid") and system_tool("newuidmap") and system_tool("newgidmap"):
        argv.insert(3, "--map-auto")
    return argv


def group_name(gid: int) -> str:
    """The name of group ``gid`` (the number when it has none)."""
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
        self._lock = threading.Lock()
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

    def socket(self) -> socket.socket:
        """A new TCP socket of the namespace (its creation there is serialised: one helper, one pipe)."""
        with self._lock:
            self._sock.sendall(b"?")
            _msg, fds, _flags, _addr = socket.recv_fds(self._sock, 1, 1)
        if not fds:
            raise OSError("the namespace helper is gone")
        return socket.socket(fileno=fds[0])

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the helper has used so far: part of its forwarder's CPU time.

        Raises:
            OSError: the helper's times cannot be read (it is gone).
        """
        import psutil

        try:
            t = psutil.Process(self._proc.pid).cpu_times()
        except psutil.Error as e:
            raise OSError(f"the namespace helper's CPU time cannot be read: {e}") from None
        return t.user + t.system

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
    if remove_files_and_dir(path):  # the usual state directory: files only
        return

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
    if os.path.lexists(path) and active() and subordinate_ids("uid") and system_tool("newuidmap"):
        try:
            subprocess.run(["unshare", "--map-root-user", "--map-auto", "rm", "-rf", "--", str(path)],
                           capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
