"""Subprocess plumbing shared by the runtimes that drive a command line.

Argv lists only: nothing here ever goes through a shell.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from ._files import open_append, write_all

#: A callback receiving ("stdout" | "stderr", bytes) as output arrives.
Stream = Callable[[str, bytes], None]


class Popen(subprocess.Popen):
    """subprocess.Popen that keeps the exited child's own resource usage, from the reap itself (wait4).

    ``rusage`` (None until the child is reaped): what this child and the descendants it waited for
    used. RUSAGE_CHILDREN of this process cannot say that: it also counts every other child reaped
    meanwhile (another run's runc, a load tool). Popen reaps in two private methods, ``_try_wait``
    (wait) and ``_internal_poll`` (poll, __del__), the same since CPython 3.3: both reap with wait4.
    """

    rusage = None

    def _wait4(self, pid, flags, _wait4=os.wait4):  # bound now: __del__ may run at interpreter exit
        got, status, usage = _wait4(pid, flags)
        if got == pid:
            self.rusage = usage
        return got, status

    def _try_wait(self, wait_flags):
        try:
            return self._wait4(self.pid, wait_flags)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as Popen, exit status unknown
            return self.pid, 0

    def _internal_poll(self, _deadstate=None, **_kw):
        return super()._internal_poll(_deadstate, _waitpid=self._wait4)

    @property
    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the exited child (None while it runs)."""
        return None if self.rusage is None else self.rusage.ru_utime + self.rusage.ru_stime


class Pumped:
    """A running subprocess whose stdout/stderr are teed to log files and a stream.

    A foreground process's output is pumped by the first thread that waits for it (:meth:`wait`),
    in that thread: a pump thread of its own per run would cost a thread start (and its switches)
    on every foreground run, which in a start storm on 2 cores is measurable CPU (issue 24). Output
    that comes before anyone waits stays in the pipes until then. Whatever no wait collects (a wait
    that timed out, a stray grandchild holding the pipes after the exit, a process nobody waits for)
    is pumped by a background thread, started then (:meth:`release`).

    Args:
        argv: the command line.
        log_dir: where ``stdout.log`` and ``stderr.log`` are written (each made on its first output).
        stream: called with each chunk of output as it arrives, or None.
        detach: write output straight to the log files (the process can then
            outlive the pumping threads, as a service must).
        pump_thread: pump from a thread started now, not in :meth:`wait` (output that must be
            collected before anyone waits: a pre-created container's).
        new_session: start the process in a session of its own (no controlling terminal: a command
            that opens /dev/tty fails instead of stopping in the background). False: in a process
            group of its own, in this session (see :func:`group_of_its_own`). Either way a terminal's
            Ctrl-C does not reach it and :func:`kill_group` ends it with its children.
    """

    def __init__(self, argv: Sequence[str], log_dir: Path, stream: Stream | None = None,
                 detach: bool = False, env=None, cwd=None, preexec_fn=None, stdin=subprocess.DEVNULL,
                 pump_thread: bool = False, new_session: bool = True):
        self.argv = list(argv)
        self.log_dir = Path(log_dir)
        self.stdout_path = self.log_dir / "stdout.log"
        self.stderr_path = self.log_dir / "stderr.log"
        self.launched_at = time.time()
        #: When :meth:`wait` first saw the process exit (epoch seconds), None before.
        self.exited_at: float | None = None
        #: Set once every pipe has ended and its log is closed (at once when detached).
        self._drained = threading.Event()
        self._lock = threading.Lock()
        self._pump: _Pump | None = None  # not yet claimed by a waiter or a thread
        launch = {"start_new_session": True, "preexec_fn": preexec_fn} if new_session else group_of_its_own(preexec_fn)
        kw = {"env": marked_env(env), "cwd": cwd, "stdin": stdin, **launch}
        # Descriptors, not Popen's PIPE or open()'s file objects: each of those wraps its end in an
        # fstat, an isatty ioctl and an lseek, system calls on every start (kit._files, issue 24).
        if detach:
            out = open_append(self.stdout_path)
            try:
                err = open_append(self.stderr_path)
                try:
                    self.proc = Popen(self.argv, stdout=out, stderr=err, **kw)
                finally:
                    os.close(err)
            finally:
                os.close(out)
            self._drained.set()
            return
        (out_r, out_w), (err_r, err_w) = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = Popen(self.argv, stdout=out_w, stderr=err_w, **kw)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._pump = _Pump([("stdout", out_r, self.stdout_path), ("stderr", err_r, self.stderr_path)],
                           stream, self._drained)
        if pump_thread:
            self.release()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def cpu_seconds(self) -> float | None:
        """CPU seconds (user + system) the process used, once it has exited and been reaped (else None)."""
        return self.proc.cpu_seconds

    def _claim(self) -> "_Pump | None":
        with self._lock:
            pump, self._pump = self._pump, None
        return pump

    def release(self) -> None:
        """Leave what is left of the output to a background thread (idempotent): the process may never
        be waited for (a failed start, a pre-created container) or its pipes outlive the wait."""
        pump = self._claim()
        if pump is not None:
            pump.start_thread()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and for all output; raises subprocess.TimeoutExpired."""
        pump = self._claim()
        if pump is not None:
            try:
                fd = os.pidfd_open(self.proc.pid) if self.proc.poll() is None else None
            except (AttributeError, OSError):  # no pidfd (Linux < 5.3): a thread pumps, Popen polls below
                pump.start_thread()
            else:
                try:
                    return self._pump_until_exit(pump, fd, timeout)
                finally:
                    if not pump.done():  # timed out, or the pipes outlive the exit: a thread goes on
                        pump.start_thread()
        code = _wait(self.proc, timeout) if timeout is not None else self.proc.wait()
        self._saw_exit()
        # The pipes close when every holder exits; a stray grandchild could
        # hold them open, so output collection gets its own deadline.
        self._drained.wait(timeout=DRAIN_DEADLINE)
        return code

    def _saw_exit(self) -> None:
        if self.exited_at is None:  # the exit as seen, before the output is collected
            self.exited_at = time.time()

    def _pump_until_exit(self, pump: "_Pump", fd: int | None, timeout: float | None) -> int:
        """Pump output in this thread until the process exits (woken by ``fd``, its pidfd, as
        :func:`wait_exit` is; None: it has exited already), then until its pipes end (at most
        :data:`DRAIN_DEADLINE` seconds more); its exit code. ``fd`` is closed here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if fd is not None:
            try:
                pump.poller.register(fd, select.POLLIN)
                while not pump.step(None if deadline is None else max(0.0, deadline - time.monotonic()), wake=fd):
                    if deadline is not None and time.monotonic() >= deadline:
                        raise subprocess.TimeoutExpired(self.proc.args, timeout)
            finally:
                pump.poller.unregister(fd)  # a thread may go on with this poller: never a closed fd in it
                os.close(fd)
        code = self.proc.wait()  # exited: the reap does not block
        self._saw_exit()
        end = time.monotonic() + DRAIN_DEADLINE
        while not pump.done() and time.monotonic() < end:
            pump.step(end - time.monotonic())
        return code

    def kill(self) -> None:
        kill_group(self.proc)


#: Seconds a wait collects output after the process's exit (a stray grandchild may hold the pipes).
DRAIN_DEADLINE = 5.0


class _Pump:
    """Copies each (label, pipe's read descriptor, log path) to its log file (opened on the first chunk)
    and to a stream, until every pipe ends; then sets ``drained``. One thread at a time: a waiter's, or
    a thread's. It owns the descriptors: each is closed when its pipe ends."""

    def __init__(self, pipes, stream: Stream | None, drained: threading.Event):
        self.poller = select.poll()
        self.stream = stream
        self.drained = drained
        self.open: dict[int, list] = {}  # pipe's descriptor -> [label, log path, log's descriptor or None]
        for label, fd, path in pipes:
            self.open[fd] = [label, path, None]
            self.poller.register(fd, select.POLLIN)

    def done(self) -> bool:
        return not self.open

    def __del__(self):
        # Never claimed (its Pumped dropped without a wait or a release): its descriptors go with it,
        # as a file object's would.
        self._close_all()

    def _close_all(self) -> None:
        """Close every pipe still open and its log."""
        for fd, (_label, _path, log) in list(self.open.items()):
            for d in (fd, log):
                if d is not None:
                    try:
                        os.close(d)
                    except OSError:
                        pass
        self.open.clear()

    def step(self, timeout: float | None, wake: int | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) and copy what came; True when ``wake`` (a
        descriptor registered by the caller) became ready."""
        woken = False
        for fd, _ev in self.poller.poll(None if timeout is None else timeout * 1000):
            if fd == wake:
                woken = True
            else:
                self._copy(fd)
        if not self.open:
            self.drained.set()
        return woken

    def _copy(self, fd: int) -> None:
        entry = self.open[fd]
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.poller.unregister(fd)
            del self.open[fd]
            if entry[2] is not None:
                os.close(entry[2])
            os.close(fd)
            return
        if entry[2] is None:  # unbuffered: what came is in the file at once, even while a stray holds the pipe
            entry[2] = open_append(entry[1])
        write_all(entry[2], chunk)
        self.stream = deliver(self.stream, entry[0], chunk)

    def start_thread(self) -> None:
        """Pump what is left from a background thread, which then owns this pump."""
        threading.Thread(target=self.run, daemon=True, name="kit-pump").start()

    def run(self) -> None:
        """Pump until every pipe ends (a thread's target)."""
        try:
            while self.open:
                self.step(None)
        finally:
            self._close_all()
            self.drained.set()


def marked_env(env) -> dict:
    """``env`` (None: this process's) with this session's marker, ``KIT_SESSION``, so a reaper finds
    the process it is given to (:mod:`kit.lifetime`).

    This process's own environment is copied as CPython keeps it, encoded (a dict of bytes, which
    Popen takes as it takes str): ``dict(os.environ)`` decodes every variable, ~50 us of CPU on
    every start here against well under 1 us (issue 24).
    """
    from .config import SESSION_ID

    raw = getattr(os.environ, "_data", None) if env is None else None
    if isinstance(raw, dict):
        out = dict(raw)
        out[b"KIT_SESSION"] = SESSION_ID.encode()
        return out
    env = dict(os.environ if env is None else env)
    env["KIT_SESSION"] = SESSION_ID
    return env


def process_alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)? A zombie's namespaces are gone already: a
    runtime that cannot enter its container's finds it exited, whatever its daemon says yet."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_exit(proc: subprocess.Popen, timeout: float) -> None:
    """Block until ``proc`` exits (woken by the kernel through a pidfd), or raise TimeoutExpired.

    Popen.wait(timeout) polls with sleeps of up to 50 ms, so it notices an exit
    up to 50 ms late: that lateness would be measured as start-up time.
    """
    if proc.poll() is not None:
        return
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): Popen's polling it is
        return
    try:
        poller = select.poll()  # not select.select: it fails on descriptors >= 1024
        poller.register(fd, select.POLLIN)
        ready = poller.poll(max(0.0, timeout) * 1000)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)


def deliver(stream: Stream | None, label: str, chunk: bytes) -> Stream | None:
    """Hand ``chunk`` to ``stream``; return the stream to use next: None once it has failed,
    because a broken display must not stop the collection of output (the logs have it all)."""
    if stream is None:
        return None
    try:
        stream(label, chunk)
        return stream
    except Exception:
        return None


def group_of_its_own(preexec_fn=None) -> dict:
    """Popen's keywords that start a child in a process group of its own, in this session (and run
    ``preexec_fn``, if any, in the child before exec).

    Not a session of its own, for a runtime's launch in a start storm: where the scheduler's
    autogroups are on (``/proc/sys/kernel/sched_autogroup_enabled``, the default of Debian's and
    Ubuntu's kernels), every new session is a new CFS task group: in a storm of 16 ``runc run``, 16
    groups made, scheduled and freed at once cost runc's processes 1.6-2.6 ms more CPU per start
    and the storm 2-7 % of its starts per second here (the storms guide; no difference with
    autogroups off). A process group keeps what the kit needs: :func:`kill_group`, and a terminal's
    Ctrl-C going to the foreground group only.
    """
    if sys.version_info >= (3, 11):
        return {"process_group": 0, "preexec_fn": preexec_fn}
    if preexec_fn is None:
        return {"preexec_fn": os.setpgrp}

    def both():
        os.setpgrp()
        preexec_fn()

    return {"preexec_fn": both}


def kill_group(proc: subprocess.Popen, grace: float = 0.0) -> None:
    """SIGTERM (after ``grace`` > 0) then SIGKILL the process group of ``proc``."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    if grace > 0:
        with _suppress():
            os.killpg(pgid, signal.SIGTERM)
        try:
            _wait(proc, grace)
            return
        except subprocess.TimeoutExpired:
            pass
    with _suppress():
        os.killpg(pgid, signal.SIGKILL)
    with _suppress():
        _wait(proc, 10)


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """Popen.wait with the exit noticed at once (pidfd), not up to 50 ms late."""
    wait_exit(proc, timeout)
    return proc.wait(timeout)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, (ProcessLookupError, PermissionError, subprocess.TimeoutExpired))


def run(argv: Sequence[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a helper command to completion, capturing output (argv list, no shell)."""
    p = subprocess.run(list(argv), capture_output=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, argv, p.stdout, p.stderr)
    return p


def last_line(path: Path) -> str:
    """The last line of a log file, stripped; "" when it is empty or cannot be read."""
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.01, what: str = "condition",
               ignoring: tuple[type[BaseException], ...] = ()):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes.

    ``ignoring``: exception types that mean "not yet", as a falsy value would (a client's connection
    refused while the service starts, e.g. ``(redis.ConnectionError,)``); any other exception propagates.

    Returns the truthy value; raises :class:`kit.errors.KitTimeout` on deadline, naming the last
    exception ignored.
    """
    from .errors import KitTimeout

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignoring as e:
            value, last = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            why = f" (last: {type(last).__name__}: {' '.join(str(last).split())[:200]})" if last is not None else ""
            raise KitTimeout(f"{what} did not happen within {timeout:g} s{why}")
        time.sleep(interval)


def which(*names: str) -> str | None:
    """The first of ``names`` found on PATH or in /usr/sbin and /sbin (where mkfs, debootstrap and
    runtimes such as lxc-* live, off an ordinary user's PATH); None if none is."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for n in names:
        p = shutil.which(n, path=path)
        if p:
            return p
    return None
