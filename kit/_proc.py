"""Subprocess plumbing shared by the runtimes that drive a command line.

Argv lists only: nothing here ever goes through a shell.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

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

    Args:
        argv: the command line.
        log_dir: where ``stdout.log`` and ``stderr.log`` are written.
        stream: called with each chunk of output as it arrives, or None.
        detach: write output straight to the log files (the process can then
            outlive the pumping threads, as a service must).
    """

    def __init__(self, argv: Sequence[str], log_dir: Path, stream: Stream | None = None,
                 detach: bool = False, env=None, cwd=None, preexec_fn=None, stdin=subprocess.DEVNULL):
        self.argv = list(argv)
        self.log_dir = Path(log_dir)
        self.stdout_path = self.log_dir / "stdout.log"
        self.stderr_path = self.log_dir / "stderr.log"
        self._threads: list[threading.Thread] = []
        self.launched_at = time.time()
        #: When :meth:`wait` first saw the process exit (epoch seconds), None before.
        self.exited_at: float | None = None
        env = marked_env(env)
        if detach:
            with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
                self.proc = Popen(self.argv, stdin=stdin, stdout=out, stderr=err, env=env,
                                  cwd=cwd, preexec_fn=preexec_fn, start_new_session=True)
        else:
            self.proc = Popen(self.argv, stdin=stdin, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, cwd=cwd,
                              preexec_fn=preexec_fn, start_new_session=True)
            # One thread reads both pipes (poll): a second thread per run costs a thread start
            # on every foreground run, which on a busy 2-core host is measurable start-up time.
            t = threading.Thread(target=_pump_both, args=(
                [("stdout", self.proc.stdout, self.stdout_path), ("stderr", self.proc.stderr, self.stderr_path)],
                stream), daemon=True, name="kit-pump")
            t.start()
            self._threads.append(t)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def cpu_seconds(self) -> float | None:
        """CPU seconds (user + system) the process used, once it has exited and been reaped (else None)."""
        return self.proc.cpu_seconds

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and for all output; raises subprocess.TimeoutExpired."""
        code = _wait(self.proc, timeout) if timeout is not None else self.proc.wait()
        if self.exited_at is None:  # the exit as seen, before the output is collected
            self.exited_at = time.time()
        for t in self._threads:
            # The pipes close when every holder exits; a stray grandchild could
            # hold them open, so output collection gets its own deadline.
            t.join(timeout=5)
        return code

    def kill(self) -> None:
        kill_group(self.proc)


def marked_env(env) -> dict[str, str]:
    """``env`` (None: this process's) with this session's marker, ``KIT_SESSION``, so a reaper finds
    the process it is given to (:mod:`kit.lifetime`)."""
    from .config import SESSION_ID

    env = dict(os.environ if env is None else env)
    env["KIT_SESSION"] = SESSION_ID
    return env


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


def _pump_both(pipes, stream: Stream | None) -> None:
    """Copy each (label, pipe, log path) to its log file, and to ``stream``, until every pipe ends."""
    poller = select.poll()
    open_ = {}
    for label, pipe, path in pipes:
        fd = pipe.fileno()
        open_[fd] = (label, pipe, open(path, "ab"))
        poller.register(fd, select.POLLIN)
    try:
        while open_:
            for fd, _ev in poller.poll():
                label, pipe, log = open_[fd]
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    poller.unregister(fd)
                    del open_[fd]
                    log.close()
                    pipe.close()
                    continue
                log.write(chunk)
                stream = deliver(stream, label, chunk)
    finally:
        for _label, pipe, log in open_.values():
            log.close()
            pipe.close()


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
