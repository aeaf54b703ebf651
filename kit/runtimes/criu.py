"""CRIU: whether checkpoint/restore works on this host, and runc's command lines for it.

A container's ``snapshot`` start is a ``runc restore`` of a checkpoint taken (``runc
checkpoint``) from a detached service that was already up: the restored process answers without
running its start-up again. That needs CRIU, and CRIU needs kernel features it checks itself:
:func:`probe` runs ``criu check`` once (with a deadline) and keeps its verdict and, when it
fails, CRIU's own last error (e.g. on a Firecracker guest kernel: "vdso: Unexpected rt vDSO area
bounds"). The runtimes table shows it on runc's row; runc offers ``snapshot`` only where it works.

The command lines are built here (:func:`checkpoint_argv`, :func:`restore_argv`) and run by
:func:`checkpoint` and :func:`restore` through an injectable runner, so they are tested on hosts
where CRIU cannot run.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .._proc import run as _run
from ..errors import StartFailed
from .base import which

CHECK_TIMEOUT = 20.0


@dataclass(frozen=True)
class CriuVerdict:
    """CRIU here: ``works``, its ``version`` and, when it does not work, ``reason`` (one line)."""

    works: bool
    version: str = ""
    reason: str = ""

    @property
    def summary(self) -> str:
        """For the runtimes table: ``yes (3.17.1)`` or ``no: REASON``."""
        return f"yes ({self.version})" if self.works else f"no: {self.reason}"


_verdict: CriuVerdict | None = None
_lock = threading.Lock()


def probe(refresh: bool = False, runner=None) -> CriuVerdict:
    """Whether ``criu check`` passes here (probed once per session; ``refresh`` probes again)."""
    global _verdict
    with _lock:
        if _verdict is None or refresh or runner is not None:
            v = _probe(runner or _run)
            if runner is not None:
                return v
            _verdict = v
        return _verdict


def _probe(runner) -> CriuVerdict:
    path = which("criu")
    if path is None:
        return CriuVerdict(False,
                           reason="criu is not installed: apt-get install criu (Debian 12 has 3.17; run make setup)")
    try:
        p = runner([path, "--version"], timeout=10, check=False)
        m = re.search(r"Version:\s*(\S+)", p.stdout.decode(errors="replace"))
        version = m.group(1) if m else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return CriuVerdict(False, reason=f"criu --version failed: {e}")
    if os.geteuid() != 0:
        return CriuVerdict(False, version, reason="criu check needs root (CAP_SYS_ADMIN and friends)")
    try:
        p = runner([path, "check"], timeout=CHECK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return CriuVerdict(False, version, reason=f"criu check did not finish within {CHECK_TIMEOUT:g} s")
    except OSError as e:
        return CriuVerdict(False, version, reason=f"criu check failed: {e}")
    if p.returncode == 0:
        return CriuVerdict(True, version)
    return CriuVerdict(False, version, reason=f"criu {version} check fails on this kernel: {first_error(p.stderr)}")


def first_error(stderr: bytes) -> str:
    """CRIU's first ``Error (file:line): what`` line, as ``what`` (the root cause; later ones follow from it)."""
    text = stderr.decode(errors="replace")
    for line in text.splitlines():
        m = re.match(r"\s*Error \([^)]*\):\s*(.+)", line)
        if m:
            return m.group(1).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no reason given"


# -- runc checkpoint / restore -------------------------------------------------------
def checkpoint_argv(cli: list[str], cid: str, images: Path, leave_running: bool = False) -> list[str]:
    """``runc checkpoint``: dump ``cid`` (a detached service) into ``images``."""
    return [*cli, "checkpoint", "--image-path", str(images), "--work-path", str(images / "work"),
            *(["--leave-running"] if leave_running else []), cid]


def restore_argv(cli: list[str], cid: str, images: Path, bundle: Path, pid_file: Path,
                 work: Path | None = None) -> list[str]:
    """``runc restore --detach``: a new container ``cid`` from the dump in ``images``, on ``bundle``
    (a fresh overlay over the same image: CRIU finds the same files at the same paths); ``work``
    (CRIU's logs) is the restore's own, so restores from one dump can run at once."""
    return [*cli, "restore", "--detach", "--image-path", str(images),
            "--work-path", str(work or images / "restore-work"), "--bundle", str(bundle), "--pid-file", str(pid_file),
            cid]


def checkpoint(cli: list[str], cid: str, images: Path, runner=None, timeout: float = 60) -> None:
    """Dump ``cid`` into ``images`` (StartFailed with runc's reason when it fails)."""
    (images / "work").mkdir(parents=True, exist_ok=True)
    _checked(runner or _run, checkpoint_argv(cli, cid, images), "checkpoint", timeout)


def restore(cli: list[str], cid: str, images: Path, bundle: Path, pid_file: Path, runner=None,
            timeout: float = 60) -> None:
    """Restore ``cid`` from ``images`` on ``bundle``, detached; its pid written to ``pid_file``."""
    (images / "restore-work").mkdir(parents=True, exist_ok=True)
    _checked(runner or _run, restore_argv(cli, cid, images, bundle, pid_file), "restore", timeout)


def _checked(runner, argv: list[str], what: str, timeout: float) -> None:
    try:
        p = runner(argv, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise StartFailed(f"runc {what} did not finish within {timeout:g} s") from None
    if p.returncode != 0:
        raise StartFailed(f"runc {what} failed: {first_error(p.stderr)}")
