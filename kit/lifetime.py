"""Nothing outlives its session.

Every instance carries the id of the kit session that made it (Docker labels,
``kit-<session>-<name>`` ids for runc/runsc/LXC, files under
``$KIT_HOME/run/<session>``, a ``KIT_SESSION`` marker in the environment of
every host process the kit launches). Three mechanisms remove what a session
started:

- ``atexit`` (one hook, in :mod:`kit.api`) closes every open :class:`kit.Session` on a normal exit,
  then removes this process's directory (:func:`remove_own_directory`);
- a **reaper**, a separate process started with the first instance, holds the
  read end of a pipe whose write end only this process has. When this process
  dies for any reason, SIGKILL included, the kernel closes the write end, the
  reaper reads EOF and sweeps the session (testcontainers' Ryuk, without a
  socket);
- a **sweep of dead sessions** (once per process, in a background thread started when the
  first :class:`kit.Session` is made, and in ``%container prune``) removes what sessions whose
  owner is gone left behind.

"Session" here is the *owner*: one Python process (:data:`kit.config.SESSION_ID`), however
many :class:`kit.Session` objects it has; each of those puts its own token after the owner's
id (``kit-<owner>-<session>-<name>``, ``$KIT_HOME/run/<owner>/<session>/``), so everything
below finds them by the owner's prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from . import cgroups, config, mounts, runtimes, userns

MARKER = "KIT_SESSION"
_reaper: subprocess.Popen | None = None
_reaper_fd: int | None = None
_lock = threading.Lock()


def _owner_file(session: str) -> Path:
    return config.home() / "run" / session / "owner.json"


def _write_owner() -> None:
    me = psutil.Process()
    _owner_file(config.SESSION_ID).parent.mkdir(parents=True, exist_ok=True)
    _owner_file(config.SESSION_ID).write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))


def ensure_reaper() -> None:
    """Start this session's reaper once; cheap to call before every start."""
    global _reaper, _reaper_fd
    with _lock:
        if _reaper is not None and _reaper.poll() is None:
            return
        _write_owner()
        read_end, write_end = os.pipe()  # both close-on-exec: no child of ours inherits the write end
        env = dict(os.environ, KIT_HOME=str(config.home()))
        _reaper = subprocess.Popen(
            [sys.executable, "-m", "kit.lifetime", config.SESSION_ID, str(os.getpid())],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=open(_log_path(), "ab"),
            start_new_session=True, env=env,
        )
        os.close(read_end)
        _reaper_fd = write_end


def _log_path() -> Path:
    p = config.home() / "run" / "reaper.log"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def owner_alive(session: str) -> bool:
    try:
        info = json.loads(_owner_file(session).read_text())
        p = psutil.Process(info["pid"])
        return abs(p.create_time() - info["create_time"]) < 1 and p.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, KeyError, psutil.Error):
        return False


def session_processes(session: str) -> list[psutil.Process]:
    """Host processes the kit launched for ``session`` (found by their environment marker)."""
    needle = f"{MARKER}={session}".encode()
    found = []
    for p in psutil.process_iter():
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(p)
        except OSError:
            continue
    return found


def sweep(session: str) -> list[str]:
    """Remove everything ``session`` left: instances of every runtime, processes, mounts, cgroups, files.

    Returns a line per thing removed.
    """
    removed: list[str] = []
    procs = session_processes(session)
    for p in procs:
        try:
            p.kill()
            removed.append(f"process {p.pid}")
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
    for name in runtimes.names():
        rt = runtimes.get(name)
        try:
            removed += rt.sweep(session)
        except Exception as e:  # one broken backend must not stop the others
            removed.append(f"{name}: sweep failed: {e}")
    run_dir = config.home() / "run" / session
    removed += [f"mount {m}" for m in mounts.unmount_below(run_dir)]
    removed += _remove_cgroups(session)
    if run_dir.exists():
        userns.rmtree(run_dir)  # shutil.rmtree, and what a user namespace made unreadable
        removed.append(f"directory {run_dir}")
    return removed


def leftovers(session: str) -> list[str]:
    """What of ``session`` is still on the machine (empty when the sweep was complete)."""
    found = [f"process {p.pid} ({_name(p)})" for p in session_processes(session)]
    for name in runtimes.names():
        try:
            found += runtimes.get(name).sweep(session, dry_run=True)
        except Exception as e:
            found.append(f"{name}: cannot list: {e}")
    run_dir = config.home() / "run" / session
    found += [f"mount {m}" for m in mounts.below(run_dir)]
    found += [f"cgroup kit/{g}" for g in _session_cgroups(session)]
    if run_dir.exists():
        found.append(f"directory {run_dir}")
    return found


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return "?"


def _session_cgroups(session: str) -> list[str]:
    # On v1 the runtimes also create groups in hierarchies the kit does not limit
    # (cpuset, freezer, devices, name=systemd...): look in every one.
    bases = [cgroups.ROOT / cgroups.kit_rel()] if cgroups.version() == 2 else \
        [d / "kit" for d in cgroups.ROOT.iterdir() if d.is_dir()]
    groups = set()
    for base in bases:
        if base.is_dir():
            groups.update(d.name for d in base.iterdir() if d.is_dir() and d.name.startswith(session + "-"))
    return sorted(groups)


def _remove_cgroups(session: str) -> list[str]:
    out = []
    for g in _session_cgroups(session):
        cgroups.Cgroup(f"{cgroups.kit_rel()}/{g}").destroy()
        out.append(f"cgroup kit/{g}")
    return out


def dead_sessions() -> list[str]:
    run = config.home() / "run"
    if not run.is_dir():
        return []

    def dead(d: Path) -> bool:
        if not (d / "owner.json").exists():
            # Being set up right now by a live session, or left by a crash long ago.
            try:
                return time.time() - d.stat().st_mtime > 600
            except FileNotFoundError:  # its session ended and removed it while we looked
                return False
        return not owner_alive(d.name)

    return [d.name for d in run.iterdir() if d.is_dir() and d.name != config.SESSION_ID and dead(d)]


def sweep_dead_sessions() -> list[str]:
    removed = []
    for s in dead_sessions():
        removed += [f"{s}: {x}" for x in sweep(s)]
    return removed


def sweep_dead_sessions_in_background() -> threading.Thread:
    t = threading.Thread(target=_quiet_sweep, name="kit-sweep", daemon=True)
    t.start()
    return t


_sweeper: threading.Thread | None = None


def sweep_once_in_background() -> threading.Thread:
    """The background sweep of dead sessions, started by the first call of this process (the
    first :class:`kit.Session`): importing the kit starts no thread."""
    global _sweeper
    with _lock:
        if _sweeper is None:
            _sweeper = sweep_dead_sessions_in_background()
        return _sweeper


def sweeper() -> threading.Thread | None:
    """This process's background sweep, once started (None before)."""
    return _sweeper


def _quiet_sweep():
    try:
        sweep_dead_sessions()
    except Exception:
        pass


def _reaper_main(session: str, parent: int) -> int:
    """Block until the parent is gone (EOF on stdin), then sweep its session."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    removed = sweep(session)
    for line in removed:
        print(f"reaper {session} (parent {parent}): removed {line}", file=sys.stderr)
    return 0


def remove_own_directory() -> None:
    """At a normal exit, after every session is closed: this process's directory goes too
    (:mod:`kit.api`'s exit hook calls it last)."""
    run_dir = config.home() / "run" / config.SESSION_ID
    (run_dir / "owner.json").unlink(missing_ok=True)
    try:
        run_dir.rmdir()  # only when empty: anything still inside is the reaper's to sweep
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(_reaper_main(sys.argv[1], int(sys.argv[2])))
