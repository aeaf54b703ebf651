"""Startup: time one run from launch to exit or readiness, and its teardown.

Only the public API is used (``kit.run``, ``kit.start`` and the handle it returns,
``kit.rm``, ``kit.api.wait_for_teardown``), so what is timed is what a user gets.
Times come from the phases the instance records plus the host clock around the calls.

Every runtime's clock starts at the same moment: ``requested``, stamped by the
session (:meth:`kit.Session.run`) just before it hands the instance to the runtime. What the kit
and the runtime do before the runtime's own process or API call starts
(overlay, bundle, cgroup, disk; Docker's image check; a warm start's container
or template when none was waiting) is the phase ``prepare`` = ``launched`` -
``requested``, inside every startup figure alike.

Every sample starts on a quiet kit (:func:`kit.api.wait_until_quiet`): nothing
of an earlier sample (the background removal of a foreground run, a warm pool
refill) still runs beside it. Measured before that wait existed, on 2 cores,
about half the samples of an interleaved study overlapped the previous one's
removal or a refill, by tens of milliseconds for LXC and Docker, which made a
study's startup longer than a whole ``kit.run`` timed from outside
(``benchmarks/bench_study_clock.py`` compares the two). The study's own work
between samples is kept small for the same reason (see :meth:`kit.bench.storage.Results.add`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import api
from .. import runtimes as _runtimes
from .._proc import wait_until
from ..errors import KitError, StartFailed
from ..instance import Instance
from ..net import free_port
from .workloads import Workload, started_at


@dataclass
class Sample:
    """What one run produced: metric rows, a status, the accelerator used and, for a warm start,
    whether its container or template was waiting (``pool``: ``hit`` or ``miss``; "" for a cold one)."""

    rows: list[dict] = field(default_factory=list)
    status: str = "ok"
    accel: str = ""
    pool: str = ""

    def add(self, metric: str, value: float, component: str = "") -> None:
        self.rows.append({"metric": metric, "component": component, "value": float(value)})


@dataclass(frozen=True)
class Ready:
    """When a started instance was asked for and when it became ready (host clock, epoch seconds).

    The instance itself is the :class:`kit.Instance` handle :func:`start` returns beside this."""

    called: float
    """The host clock just before the API call (``total`` counts from it)."""
    requested: float
    """When the startup clock starts (see the module's docstring)."""
    at: float
    """When it was ready."""

    @property
    def after(self) -> float:
        """Seconds from the request to readiness: the ``launch_to_ready`` figure."""
        return self.at - self.requested


def clock_start(phases: dict, fallback: float) -> float:
    """The moment every startup figure counts from: ``requested`` (or ``fallback``, the host
    clock just before the API call, for an instance that does not carry it)."""
    return phases.get("requested", fallback)


def _phases(sample: Sample, phases: dict, t0: float) -> None:
    """Each milestone in seconds after ``t0``; ``launched`` is named ``prepare``: the time spent
    before the runtime's own process or API call started."""
    for key, ts in sorted(phases.items(), key=lambda kv: kv[1]):
        if key != "requested" and isinstance(ts, (int, float)):
            sample.add("phase", ts - t0, component="prepare" if key == "launched" else key)


def run_to_exit(runtime: str, image: str, workload: Workload, name: str, timeout: float,
                memory=None, start_mode: str = "cold", options: dict | None = None) -> Sample:
    """One foreground run: launch to exit, teardown (waited for: the removal itself), total, phases.
    ``options``: the runtime's own (e.g. a VM's ``kernel``)."""
    sample = Sample()
    api.wait_until_quiet()
    t_call = time.time()
    try:
        r = api.run(image, workload.command(), runtime=runtime, name=name, timeout=timeout, memory=memory,
                    start=start_mode, **(options or {}))
    except KitError as e:
        sample.status = f"error: {e}"
        sample.add("failed", 1)
        return sample
    t_back = time.time()
    # kit.run returns with the result; the removal finishes in the background: wait for it and
    # take its end, so that teardown and total reach "everything removed" as their definitions say.
    t_gone = api.wait_for_teardown(name) or time.time()
    sample.accel = str(r.info.get("accel", ""))
    sample.pool = str(r.info.get("pool", ""))
    if r.timed_out:
        sample.status = f"timeout after {timeout:g} s"
    elif r.exit_code != 0:
        tail = (r.stderr.strip().splitlines() or [""])[-1][:200]
        sample.status = f"exit {r.exit_code}: {tail}".rstrip(": ")
    t0 = clock_start(r.phases, t_call)
    exited = r.phases.get("exited", t_back)
    sample.add("launch_to_exit", exited - t0)
    sample.add("teardown", t_gone - exited)
    sample.add("total", t_gone - t_call)
    _phases(sample, r.phases, t0)
    if sample.status != "ok":
        sample.add("failed", 1)
    return sample


def start(runtime: str, image: str, workload: Workload, name: str, timeout: float, memory=None,
          start_mode: str = "cold", options: dict | None = None) -> tuple[Instance, Ready]:
    """Start a detached instance and wait until it is ready: its handle, and when it was asked for and ready.

    Raises:
        KitError: it could not start, exited early, or was not ready within
            ``timeout`` (it is then removed).
    """
    port = free_port() if workload.needs_port else None
    api.wait_until_quiet()
    t_call = time.time()
    inst = api.start(image, workload.command(port, host_network=_runtimes.get(runtime).host_network), runtime=runtime,
                     name=name, memory=memory, start=start_mode, ports=[(port, port)] if port else (),
                     **(options or {}))
    try:
        def ready():
            if workload.ready(inst, port):
                return True
            if inst.status != "running":
                out = inst.logs()
                tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
                raise StartFailed(f"{runtime}: {name} exited before it was ready: {tail[0][:200]}")
            return False

        wait_until(ready, timeout, interval=0.005, what=f"{runtime} instance {name} becoming ready")
        t_ready = time.time()
        if workload.kind == "idle":  # ready when its command started: the host's stamp, not the poll
            t_ready = started_at(inst.phases) or t_ready
    except BaseException:
        remove(inst)
        raise
    return inst, Ready(t_call, clock_start(inst.phases, t_call), t_ready)


def remove(inst: Instance) -> float:
    """Force-remove a started instance; return how long it took (seconds)."""
    t0 = time.time()
    try:
        inst.rm(force=True)
    except KitError:
        pass  # already gone
    return time.time() - t0


def service(runtime: str, image: str, workload: Workload, name: str, timeout: float, memory=None,
            start_mode: str = "cold", options: dict | None = None) -> Sample:
    """One service run: launch to ready, then teardown (kill and remove)."""
    sample = Sample()
    try:
        inst, ready = start(runtime, image, workload, name, timeout, memory, start_mode, options)
    except KitError as e:
        sample.status = f"error: {e}"
        sample.add("failed", 1)
        return sample
    sample.accel, sample.pool = str(inst.info.get("accel", "")), str(inst.info.get("pool", ""))
    phases = dict(inst.phases)
    teardown = remove(inst)
    sample.add("launch_to_ready", ready.after)
    sample.add("teardown", teardown)
    sample.add("total", ready.at - ready.called + teardown)
    _phases(sample, phases, ready.requested)
    return sample


def measure(runtime: str, image: str, workload: Workload, name: str, timeout: float, memory=None,
            start_mode: str = "cold", options: dict | None = None) -> Sample:
    """One startup sample of any workload kind, started as ``start_mode`` (:data:`kit.spec.START_MODES`)
    with the runtime's ``options`` (e.g. a VM's ``kernel``)."""
    if workload.kind == "exit":
        return run_to_exit(runtime, image, workload, name, timeout, memory, start_mode, options)
    return service(runtime, image, workload, name, timeout, memory, start_mode, options)
