"""VM templates: a guest booted up to where the kit's init waits for its run spec, saved to disk,
so that a run with ``start="snapshot"`` restores it instead of booting.

A template is built by booting the VM once with its RAM in a shared file
(``memory-backend-file,share=on``): when the init says ``ready`` (it is then blocked
reading the spec on its control port), QEMU is stopped and migrated to a state
file with the ``x-ignore-shared`` capability, so the state holds the devices and
small ROMs only, and the file ``memory`` holds the RAM. A restore starts a fresh
QEMU with the same command line, that file mapped *privately* (copy-on-write: each
restore has its own RAM, the template is never written) and ``-incoming fd:0`` on
the state file; QEMU resumes the guest when the state is loaded. (Kata Containers'
VM templating works the same way.)

The writable layer of a kit VM (its tmpfs overlay, see init.sh) is made after the
spec arrives, in guest RAM: each restore gets its own. Block devices are the
image's read-only base disk, the same file for the template and every restore.

Layout, under ``$KIT_HOME/templates``::

    KEY/meta.json   the inputs, sizes, the state's SHA-256, build time
    KEY/state       QEMU's migration stream (devices)
    KEY/memory      guest RAM (sparse)
    KEY.lock        flock: exclusive while built or removed, shared while restored from

``KEY`` hashes everything that must match between the template and a restore:
the QEMU command line with its per-run parts (sockets, output files, forwarded
ports) left out, the identity of the kernel (so the kit's own kernel and the
distribution's have templates of their own), initramfs, disk and QEMU binary,
QEMU's version and this module's format. Change any of them and runs use a new
key; :func:`prune` removes templates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .._proc import kill_group, last_line, marked_env, run
from .. import config, faults
from ..errors import StartFailed
from . import machine, qmp
from .qemubin import version_line as qemu_version_line
from .channel import Channel, LineRecords

FORMAT = 1  # bump when the layout or the guest's template point changes
BUILD_DEADLINE = 120.0  # boot to "ready" (TCG on a busy host: a few seconds)
SAVE_DEADLINE = 60.0  # stop + migrate of the device state
PER_RUN = "/per-run"  # stands in for per-run paths in the key's command line


class TemplateCorrupt(StartFailed):
    """A template's files are not what was saved (truncated, changed): it is removed and rebuilt."""


@dataclasses.dataclass
class Template:
    key: str
    path: Path
    meta: dict

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def memory(self) -> Path:
        return self.path / "memory"

    def open_state(self):
        """The state file, opened for QEMU's stdin, after checking its size and SHA-256."""
        try:
            data = self.state.read_bytes()
        except OSError as e:
            raise TemplateCorrupt(f"VM template {self.key}: cannot read its state ({e.strerror})") from None
        if len(data) != self.meta.get("state_bytes") or hashlib.sha256(data).hexdigest() != self.meta.get("state_sha256"):
            raise TemplateCorrupt(f"VM template {self.key}: state file is corrupt ({len(data)} bytes, "
                                  f"saved {self.meta.get('state_bytes')})")
        try:
            if self.memory.stat().st_size != self.meta.get("memory_bytes"):
                raise TemplateCorrupt(f"VM template {self.key}: memory file has the wrong size")
        except OSError:
            raise TemplateCorrupt(f"VM template {self.key}: its memory file is missing") from None
        return open(self.state, "rb")


def root() -> Path:
    return config.home() / "templates"


# -- keys -------------------------------------------------------------------

def _identity(p: Path | None) -> list | None:
    if p is None:
        return None
    st = os.stat(p)
    return [str(p), st.st_size, st.st_mtime_ns, st.st_ino]


def _canonical(cfg: machine.VMConfig) -> machine.VMConfig:
    """The template's configuration with its per-run parts replaced by placeholders."""
    per = Path(PER_RUN)
    return dataclasses.replace(
        cfg, sockets={n: per / n for n in cfg.sockets}, files={n: per / n for n in cfg.files},
        qmp=per / "qmp", ports=[], net=bool(cfg.ports or cfg.net), mem_path=per / "memory", mem_shared=True,
        incoming=None)


def key_of(cfg: machine.VMConfig, qemu: str) -> str:
    """The template key for runs of ``cfg`` (which may not name volumes or a kit network)."""
    binary = shutil.which(qemu) or qemu
    inputs = {
        "format": FORMAT,
        "argv": machine.argv(_canonical(cfg), "qemu")[1:],
        "files": [_identity(cfg.kernel), _identity(cfg.initrd), _identity(cfg.disk), _identity(Path(binary))],
        "qemu": qemu_version_line(binary),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# -- locking ----------------------------------------------------------------

@contextlib.contextmanager
def _locked(key: str, shared: bool = False, wait: bool = True):
    """flock on ``KEY.lock``: yields the descriptor, or False when ``wait`` is off and it is taken.

    Each call opens the file anew, so two threads of one process exclude each other as two
    processes do. Lock files are never removed (removing one could split its holders).
    """
    root().mkdir(parents=True, exist_ok=True)
    fd = os.open(root() / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield fd
    finally:
        os.close(fd)


def _load(key: str) -> Template | None:
    path = root() / key
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return Template(key, path, meta)


class InUse:
    """A shared hold on a template while a restore loads it (prune skips it meanwhile)."""

    def __init__(self, key: str):
        self._cm = _locked(key, shared=True)
        self._cm.__enter__()

    def release(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)


# -- building ---------------------------------------------------------------

def ensure(cfg: machine.VMConfig, qemu: str) -> tuple[Template, float | None]:
    """The template for ``cfg``, built first if missing; and the build's seconds (None if reused)."""
    key = key_of(cfg, qemu)
    t = _load(key)
    if t is not None:
        return t, None
    with _locked(key):
        t = _load(key)  # built by another thread or process while this one waited
        if t is not None:
            return t, None
        t0 = time.monotonic()
        t = _build(key, cfg, shutil.which(qemu) or qemu)
        return t, time.monotonic() - t0


def checkout(cfg: machine.VMConfig, qemu: str) -> tuple[Template, float | None, InUse]:
    """:func:`ensure`, then a shared hold on the template (release it once the restore loaded it):
    a prune between the two is seen, and the template built again."""
    built_total = None
    for _ in range(3):
        t, built = ensure(cfg, qemu)
        if built is not None:
            built_total = (built_total or 0) + built
        hold = InUse(t.key)
        if (t.path / "meta.json").exists():
            return t, built_total, hold
        hold.release()  # removed meanwhile
    raise StartFailed(f"qemu: VM template {t.key} was removed each time it was built (a prune running in a loop?)")


def _build(key: str, cfg: machine.VMConfig, binary: str) -> Template:
    root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root()))
    socks = Path(tempfile.mkdtemp(prefix="kit-tpl-"))  # short: unix socket paths
    ready = threading.Event()
    console = bytearray()
    channels = {
        "console": Channel(socks / "console.sock", lambda b: console.extend(b[-4096:])),
        "kit.ctl": Channel(socks / "ctl.sock", LineRecords(lambda line, t: line == "ready" and ready.set())),
        "kit.exec": Channel(socks / "exec.sock", lambda b: None),
    }
    bcfg = dataclasses.replace(
        cfg, sockets={n: c.path for n, c in channels.items()},
        files={"kit.out": tmp / "out", "kit.err": tmp / "err"}, qmp=socks / "qmp.sock", ports=[],
        net=bool(cfg.ports or cfg.net), mem_path=tmp / "memory", mem_shared=True, incoming=None)
    argv = machine.argv(bcfg, binary)
    proc = None
    try:
        with open(tmp / "qemu.log", "wb") as log:
            # Marked with this session: a reaper ends it if this process dies mid-build (the half-built
            # directory is removed by prune, its lock being free).
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=marked_env(None),
                                    start_new_session=True)
        alive = lambda: proc.poll() is None  # noqa: E731
        for c in channels.values():
            c.start(alive, accept_timeout=30)
        t0 = time.monotonic()
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() - t0 > BUILD_DEADLINE:
                why = last_line(tmp / "qemu.log") or bytes(console).decode(errors="replace").strip()[-200:]
                when = "exited" if proc.poll() is not None else f"did not reach the kit init in {BUILD_DEADLINE:g} s"
                raise StartFailed(f"qemu: building VM template {key} failed: QEMU {when} ({why or 'no message'})")
        _save(socks / "qmp.sock", tmp / "state", key)
        proc.wait(10)
        state = (tmp / "state").read_bytes()
        meta = {
            "key": key, "format": FORMAT, "created": time.time(), "build_s": round(time.monotonic() - t0, 3),
            "accel": cfg.accel, "machine": cfg.machine, "memory_mib": cfg.memory_mib, "cpus": cfg.cpus,
            "kernel": str(cfg.kernel), "initrd": str(cfg.initrd), "disk": str(cfg.disk) if cfg.disk else None,
            "net": bcfg.net, "qemu": qemu_version_line(binary), "argv": argv,
            "state_bytes": len(state), "state_sha256": hashlib.sha256(state).hexdigest(),
            "memory_bytes": (tmp / "memory").stat().st_size,
        }
        for f in ("out", "err", "qemu.log"):
            (tmp / f).unlink(missing_ok=True)
        _dig_holes(tmp / "memory")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        final = root() / key
        shutil.rmtree(final, ignore_errors=True)  # a broken one without meta.json
        os.rename(tmp, final)
        return Template(key, final, meta)
    except (StartFailed, OSError) as e:
        raise _said_as_storage(e, key, cfg) from None
    finally:
        if proc is not None and proc.poll() is None:
            kill_group(proc)
        if proc is not None:
            proc.wait()
        for c in channels.values():
            c.close()
        shutil.rmtree(socks, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _said_as_storage(e: Exception, key: str, cfg: machine.VMConfig) -> Exception:
    """A build's failure said as the full (or read-only) disk's when that is what it was: QEMU dies of
    SIGBUS, with no message, once the guest touches RAM its file on a full ``$KIT_HOME`` cannot hold."""
    what, needed = f"saving VM template {key}", cfg.memory_mib * 2**20
    if isinstance(e, OSError):
        return faults.translate(e, root(), what, needed) or e
    return faults.no_space(root(), what, needed) if faults.full(root()) else e


def _save(qmp_path: Path, state: Path, key: str) -> None:
    """Stop the guest, migrate its devices to ``state`` (RAM stays in the shared file), quit QEMU."""
    try:
        mon = qmp.Monitor(qmp_path, SAVE_DEADLINE)
    except OSError as e:
        raise StartFailed(f"qemu: saving VM template {key}: no QMP connection ({e})") from None
    try:
        def cmd(name, **args):
            try:
                return mon.cmd(name, **args)
            except (RuntimeError, OSError) as e:  # QEMU's reason, or the socket gone / timed out
                raise StartFailed(f"qemu: saving VM template {key}: {name} failed: {e}") from None

        cmd("stop")
        cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        cmd("migrate", uri=f"exec:cat > {shlex.quote(str(state))}")
        t0 = time.monotonic()
        while True:
            status = (cmd("query-migrate") or {}).get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() - t0 > SAVE_DEADLINE:
                raise StartFailed(f"qemu: saving VM template {key}: migration {status}")
            time.sleep(0.02)  # polling QEMU's own status; it has no blocking wait
        try:
            mon.cmd("quit")
        except (RuntimeError, OSError):  # QEMU closing the socket as it quits
            pass
    finally:
        mon.close()


def incoming(qmp_path: Path, alive, deadline: float) -> str | None:
    """Restore: QEMU was started with ``-incoming defer`` and the state on its stdin. Set
    x-ignore-shared (RAM is the template's file) and events, ``migrate-incoming fd:0``, wait for
    the load to complete, ``cont`` (the template was saved stopped, so QEMU stays paused).
    Returns None once the guest runs, or why not (the caller then kills QEMU)."""
    end = time.monotonic() + deadline
    mon = None
    while mon is None:  # QEMU creates the socket, then listens on it, while it starts up
        try:
            mon = qmp.Monitor(qmp_path, deadline)
        except (FileNotFoundError, ConnectionRefusedError):
            if not alive() or time.monotonic() > end:
                return "QEMU did not open its QMP socket"
            time.sleep(0.002)
        except OSError as e:
            return f"QMP: {e}"
    try:
        mon.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "x-ignore-shared", "state": True}, {"capability": "events", "state": True}])
        mon.cmd("migrate-incoming", uri="fd:0")
        while True:
            ev = mon.event(end)
            status = ev.get("data", {}).get("status") if ev.get("event") == "MIGRATION" else None
            if status == "completed":
                mon.cmd("cont")
                return None
            if status == "failed":
                return "QEMU could not load the state"
    except TimeoutError:
        return f"the state did not load within {deadline:g} s"
    except (RuntimeError, OSError, ValueError) as e:  # QEMU's refusal, or QEMU gone
        return f"QMP: {e}"
    finally:
        if mon is not None:
            mon.close()


def _dig_holes(path: Path) -> None:
    """Give back the disk blocks of the RAM file's zero pages (a third of a small guest's RAM);
    reads of them still give zeros. Best effort: without util-linux's fallocate, nothing."""
    tool = shutil.which("fallocate")
    if tool:
        run([tool, "--dig-holes", str(path)], timeout=60, check=False)


# -- listing and removal --------------------------------------------------------

def discard(key: str) -> bool:
    """Remove one template (waits for restores loading it); True if it existed."""
    with _locked(key):
        path = root() / key
        existed = path.exists()
        shutil.rmtree(path, ignore_errors=True)
        return existed


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.iterdir() if f.is_file())


def ls() -> list[dict]:
    """The stored templates: key, kernel (its cache folder's name: ``kit-<key>`` or the distribution's
    release), machine, accel, memory, and bytes on disk (the RAM file is sparse)."""
    out = []
    if not root().exists():
        return out
    for d in sorted(root().iterdir()):
        t = _load(d.name) if d.is_dir() and not d.name.startswith(".") else None
        if t is None:
            continue
        m = t.meta
        out.append({"key": t.key, "kernel": Path(m["kernel"]).parent.name if m.get("kernel") else None,
                    "machine": m.get("machine"), "accel": m.get("accel"),
                    "memory_mib": m.get("memory_mib"), "cpus": m.get("cpus"), "disk": m.get("disk"),
                    "state_bytes": m.get("state_bytes"), "disk_bytes": _disk_bytes(d),
                    "build_s": m.get("build_s"), "created": m.get("created")})
    return out


def table():
    """:func:`ls` as a DataFrame: key, kernel, machine, accel, memory, cpus, MB on disk, state KB, build seconds."""
    import pandas as pd

    cols = ["key", "kernel", "machine", "accel", "memory_mib", "cpus", "disk_mb", "state_kb", "build_s", "created"]
    rows = [{**t, "disk_mb": round(t["disk_bytes"] / 1e6, 1), "state_kb": round((t["state_bytes"] or 0) / 1e3, 1),
             "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["created"] or 0))} for t in ls()]
    return pd.DataFrame(rows, columns=cols)


def prune() -> list[str]:
    """Remove every template not being restored from right now (and half-built leftovers of dead
    builders); return the removed keys."""
    removed = []
    if not root().exists():
        return removed
    for d in sorted(root().iterdir()):
        if d.name.endswith(".lock"):
            continue
        key = d.name.split("-")[1] if d.name.startswith(".build-") else d.name
        with _locked(key, wait=False) as held:
            if not held:
                continue  # in use (restoring, or being built)
            shutil.rmtree(d, ignore_errors=True)
            if not d.name.startswith("."):
                removed.append(key)
    return removed

