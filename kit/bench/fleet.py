"""The same study on many hosts, through Dask distributed: the whole study once per worker host.

>>> from kit.bench import Study, fleet
>>> study = Study(runtimes="process,runc", workload="true", repeat=5)
>>> with fleet.cluster(scheduler="tls://scheduler:8786", security=sec) as client:   # sec: its certificates
...     df = study.run(client=client)                           # one frame, with a ``host`` column
>>> study.status()                                           # per host: ok, failures, failed, lost, why
>>> study.summary()                                          # statistics per host

A fleet knows a study by its parameters (:class:`~kit.bench.params.StudyParams`) and the function
that runs them on a host (:func:`kit.bench.running.measure`), not by :class:`~kit.bench.Study`,
which calls :func:`run` with both.

How it runs:

- Over TLS (:mod:`kit.bench.fleettls`): a cluster the kit starts gets credentials made for it; a
  plaintext scheduler or worker off this machine is refused unless ``insecure=True`` asks for it,
  since whoever reaches one runs code on the workers.
- Every worker is identified first (``Client.run``) by a probe that needs nothing but Python, so
  a host without the kit still answers: its host name, boot id, machine id, kit version.
- Workers with the same boot id (else machine id, else host name) share a machine: they run one
  after the other, never at once, so a LocalCluster or a host with several workers still gives
  clean numbers. Different machines measure in parallel. The study is never split across hosts:
  a study's numbers only mean something on one machine.
- Each host's study is one task pinned to its worker (``Client.submit(..., workers=[addr],
  pure=False)``). Rows stream back through a ``distributed.Queue`` as each run completes, so a
  host that raises or dies halfway keeps what it measured; the task's own result is used when it
  finishes.
- A host without the kit, with another kit version, without a named runtime, or whose study
  fails, gives ``failed`` rows whose status is the reason, and a line in the status table; the
  other hosts go on.

Labels: the host name, or ``hostname/worker`` when several workers share a machine (two workers
of a LocalCluster are two labels).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import platform
import secrets
import time
import types

import pandas as pd

from .. import runtimes as _runtimes
from .. import version
from ..errors import InvalidSpec, KitError
from . import fleettls, metrics, plan, storage
from .params import StudyParams
from .storage import Results

#: How often (seconds) the client looks for streamed rows, finished tasks and lost workers.
POLL = 0.2

#: Seconds to wait for workers: for the first one before a run, for all of them after a cluster starts.
WAIT_WORKERS = 60.0

def _probe() -> dict:
    """Who a worker is. Runs on the worker, sent by value: it needs only Python, not the kit."""
    import os
    import platform
    import sys

    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""

    info = {"hostname": platform.node(), "boot_id": read("/proc/sys/kernel/random/boot_id"),
            "machine_id": read("/etc/machine-id"), "pid": os.getpid(), "python": sys.executable,
            "kit_version": None, "kit_error": ""}
    try:
        from kit.version import __version__  # imports the kit itself first

        info["kit_version"] = __version__
    except Exception as e:  # noqa: BLE001  (reported as the host's failure)
        info["kit_error"] = f"{type(e).__name__}: {e}"
    return info


def _by_value(fn):
    """``fn`` as a function that no module owns, so it is pickled by value (a host without the kit
    can run it: the probe must answer there too)."""
    f = types.FunctionType(fn.__code__, {"__builtins__": builtins}, fn.__name__)
    f.__module__ = None
    return f


def machine_key(info: dict) -> str:
    """What identifies a machine: its boot id (one kernel, one set of CPUs), else machine id, else name."""
    return info.get("boot_id") or info.get("machine_id") or info.get("hostname") or "?"


def workers(client) -> dict[str, dict]:
    """Every worker's identity: address -> probe record plus ``name``, ``machine`` and ``label``."""
    names = {a: w.get("name", a) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    answers = client.run(_by_value(_probe), on_error="return")
    out = {}
    for addr, info in sorted(answers.items(), key=lambda kv: str(names.get(kv[0], kv[0]))):
        if isinstance(info, BaseException):
            info = {"hostname": addr, "kit_version": None, "kit_error": f"probe failed: {type(info).__name__}: {info}"}
        out[addr] = {**info, "address": addr, "name": str(names.get(addr, addr)), "machine": machine_key(info)}
    by_machine: dict[str, list[str]] = {}
    for addr, info in out.items():
        by_machine.setdefault(info["machine"], []).append(addr)
    names_of = {}
    for m, addrs in by_machine.items():
        names_of.setdefault(out[addrs[0]]["hostname"], set()).add(m)
    for m, addrs in by_machine.items():
        for addr in addrs:
            info = out[addr]
            label = info["hostname"]
            if len(names_of.get(label, ())) > 1:  # two machines with one host name (e.g. containers)
                label += f"@{m[:8]}"
            if len(addrs) > 1:
                label += f"/{info['name']}"
            info["label"] = label
    return out


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON types (a distributed Queue carries msgpack-able data only)."""
    return json.loads(df.to_json(orient="records"))


def run_on_host(params: dict, label: str, queue_name: str, runner) -> dict:
    """The task each worker runs: the whole study on this host, rows streamed to ``queue_name``.

    Named runtimes this host cannot run become ``failed`` rows (status ``unavailable: why``); the
    others are measured by ``runner(params, on_rows)`` (see :func:`run`). Returns the frame and the
    study's metadata (environment, skipped, dropped, partial). An error escapes after the rows
    measured so far were streamed.
    """
    from distributed import Queue

    queue = Queue(queue_name)
    t0 = time.time()

    def send(kind, **kw):
        queue.put({"kind": kind, "host": label, "t": time.time(), **kw})

    p = StudyParams.from_dict(params, progress=False)
    p, unavailable = _available_here(p, t0)
    if p is None:
        send("start", planned=0, t0=t0)
        reasons = "; ".join(f"{u['runtime']}: {u['status']}" for u in unavailable)
        raise RuntimeError(f"no runtime of the study is available here ({reasons})")
    runtimes, _ = plan.resolve_runtimes(p)
    send("start", planned=plan.planned_cells(p, runtimes), t0=t0)
    first = [True]

    def on_rows(new: pd.DataFrame, meta: dict) -> None:
        env = None
        if first[0]:
            first[0] = False
            env = meta.get("environment")
            if unavailable:
                send("rows", rows=json.loads(json.dumps(unavailable)), cells=0)
        send("rows", rows=_records(new), cells=1, env=json.loads(json.dumps(env, default=str)) if env else None)

    df, meta = runner(p, on_rows)
    if unavailable:
        df = storage.normalise(pd.concat([pd.DataFrame(unavailable), df], ignore_index=True), meta["metrics"])
    meta = dict(meta)
    meta["unavailable"] = {u["runtime"]: u["status"] for u in unavailable}
    return {"df": df, "meta": meta, "t0": t0, "t1": time.time()}


def _available_here(p: StudyParams, t0: float) -> tuple[StudyParams | None, list[dict]]:
    """(``p`` with only the named runtimes this host can run, None when there is none; a ``failed`` row
    for each it cannot). A study of ``all`` runtimes takes whichever are here."""
    if p.runtimes == "all":
        return p, []
    ok, unavailable = [], []
    for r in p.runtimes:
        try:
            a = _runtimes.get(r).availability()
            why = "" if a.available else a.reason
        except KitError as e:
            why = str(e)
        if why:
            unavailable.append({"part": p.parts[0], "image": p.image[0], "runtime": r, "kind": "",
                                "workload": "-", "metric": "failed", "value": 1.0, "unit": "count",
                                "status": f"unavailable: {why}", "warmup": False, "timestamp": t0, "study": p.name})
        else:
            ok.append(r)
    return (dataclasses.replace(p, runtimes=tuple(ok)) if ok else None), unavailable


class _Host:
    """The client's view of one host while the fleet runs."""

    def __init__(self, info: dict, position: int, progress: bool):
        self.info, self.label = info, info["label"]
        self.frames: list[pd.DataFrame] = []
        self.rows = self.cells = self.planned = 0
        self.state, self.reason = "waiting", ""
        self.env: dict | None = None
        self.meta: dict = {}
        self.started = self.finished = None
        self.future = None
        self._position, self._progress, self.bar = position, progress, None

    def message(self, msg: dict) -> None:
        if msg["kind"] == "start":
            self.state, self.planned, self.started = "running", int(msg["planned"]), msg["t0"]
            if self._progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.planned, desc=self.label, unit="run", position=self._position,
                                leave=True)
        elif msg["kind"] == "rows":
            if msg.get("env"):
                self.env = msg["env"]
            df = pd.DataFrame(msg["rows"])
            self.frames.append(df)
            self.rows += len(df)
            self.cells += int(msg.get("cells", 1))
            if self.bar is not None:
                self.bar.update(int(msg.get("cells", 1)))

    def done(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, reason
        self.finished = self.finished or time.time()
        if self.bar is not None:
            self.bar.set_postfix_str(f"{state}{': ' + reason[:60] if reason else ''}")
            self.bar.close()

    def frame(self) -> pd.DataFrame:
        df = pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame()
        if len(df):
            df["host"] = self.label
        return df

    def status(self) -> dict:
        df = self.frame()
        failed = int((df["status"] != "ok").sum()) if len(df) else 0
        return {"host": self.label, "state": self.state, "reason": self.reason, "cells": self.cells,
                "planned": self.planned, "rows": len(df), "failed_rows": failed,
                "hostname": self.info.get("hostname", ""), "worker": self.info.get("name", ""),
                "machine": self.info.get("machine", "")[:12], "kit_version": self.info.get("kit_version") or "",
                "started": self.started, "finished": self.finished,
                "elapsed_s": round(self.finished - self.started, 2) if self.started and self.finished else None}


def _failure_row(p: StudyParams, host: _Host, reason: str) -> dict:
    return {"host": host.label, "study": p.name, "part": p.parts[0], "image": p.image[0],
            "runtime": "-", "kind": "-", "workload": "-", "metric": "failed", "value": 1.0, "unit": "count",
            "status": f"host: {reason}", "warmup": False, "timestamp": time.time()}


def run(params: StudyParams, client, runner, into: Results, *, per: str = "worker", poll: float = POLL,
        insecure: bool = False) -> pd.DataFrame:
    """Run a study on every worker host of ``client``; its frame and metadata go ``into`` results.

    Args:
        params: the study's parameters (sent to each host as :meth:`~StudyParams.to_dict`).
        client: a ``dask.distributed.Client``.
        runner: what each host calls, ``runner(params, on_rows) -> (frame, meta)``, calling
            ``on_rows(frame, meta)`` with each batch of rows as it completes: a module-level function
            every host can import (:func:`kit.bench.running.measure`).
        into: the results to fill, also when the run is interrupted (what came back is kept).
        per: ``"worker"`` (every worker runs the study, workers sharing a machine one after the
            other) or ``"machine"`` (one worker per machine).
        poll: seconds between looks at the queue, the tasks and the workers.
        insecure: accept a plaintext scheduler or worker off this machine (one that
            :func:`cluster` made with ``insecure=True`` is accepted already); else such a fleet is
            refused before anything is sent to a worker.

    Returns:
        The tidy frame of every host, with a ``host`` column. ``meta["hosts"]`` holds each host's
        environment and notes, ``meta["fleet"]`` the status table (``Study.status()``).
    """
    from distributed import Queue

    if per not in ("worker", "machine"):
        raise InvalidSpec(f"per={per!r}: choose 'worker' or 'machine'")
    t_start = time.time()
    try:
        client.wait_for_workers(1, timeout=WAIT_WORKERS)
    except TimeoutError:
        raise InvalidSpec(f"the Dask cluster has no worker after {WAIT_WORKERS:.0f} s: start workers first") from None
    fleettls.check_client(client, insecure)  # before the probe: it is the first code sent to the workers
    found = workers(client)
    chains, hosts = _plan(found, per, params.progress)
    queue_name = f"kit-fleet-{secrets.token_hex(4)}"
    queue = Queue(queue_name, client=client)
    sent = params.to_dict()
    extra: list[dict] = []
    running: dict = {}  # future -> address

    def start_next(machine: str) -> None:
        while chains[machine]:
            addr = chains[machine].pop(0)
            h, info = hosts[addr], found[addr]
            here = version.__version__
            if info.get("kit_version") is None:
                h.done("failed", f"kit not importable there ({info.get('kit_error')}): install it (make setup)")
            elif info["kit_version"] != here:
                h.done("failed", f"kit {info['kit_version']} there, {here} here: install the same version")
            else:
                h.future = client.submit(run_on_host, sent, h.label, queue_name, runner, workers=[addr], pure=False,
                                         allow_other_workers=False, retries=0, key=f"kit-study-{h.label}-{queue_name}")
                running[h.future] = addr
                return
            extra.append(_failure_row(params, h, h.reason))

    def drain() -> None:
        by_label = {h.label: h for h in hosts.values()}
        for msg in queue.get(batch=True):
            by_label[msg["host"]].message(msg)

    for m in list(chains):
        start_next(m)
    try:
        _watch(client, running, hosts, found, start_next, drain, poll)
    finally:
        _stop(running, hosts.values(), drain)
        frames = [f for f in [h.frame() for h in hosts.values()] + [pd.DataFrame(extra)] if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["host"])
        into.df = storage.normalise(df, metrics.definitions())
        into.meta = _fleet_meta(sent, list(hosts.values()), t_start)
    return into.df


def _watch(client, running: dict, hosts: dict, found: dict, start_next, drain, poll: float) -> None:
    """Until no study runs: take streamed rows off the queue (``drain``), record each finished, failed or
    lost host, and start the next worker of its machine (``start_next``)."""
    from distributed import wait

    while running:
        try:
            wait(list(running), timeout=poll, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        drain()
        alive = set(client.scheduler_info(n_workers=-1)["workers"])
        for fut, addr in list(running.items()):
            if _settled(fut, hosts[addr], addr, addr in alive, drain):
                del running[fut]
                start_next(found[addr]["machine"])


def _plan(found: dict, per: str, progress: bool) -> tuple[dict[str, list[str]], dict[str, _Host]]:
    """Which workers run the study, one after the other on each machine: machine -> worker addresses
    (all of them, or with ``per="machine"`` the first), and address -> :class:`_Host`."""
    chains: dict[str, list[str]] = {}
    for addr, info in found.items():
        chains.setdefault(info["machine"], []).append(addr)
    if per == "machine":
        chains = {m: addrs[:1] for m, addrs in chains.items()}
    hosts = {addr: _Host(found[addr], i, progress)
             for i, addr in enumerate(a for addrs in chains.values() for a in addrs)}
    return chains, hosts


def _stop(running: dict, hosts, drain) -> None:
    """End a fleet run (finished, failed or interrupted): cancel what still runs, mark each host that
    did not finish, and take the last progress messages off the queue (``drain``) if it still answers."""
    for fut in running:
        fut.cancel()
    for h in hosts:
        if h.state in ("waiting", "running"):
            h.done("interrupted" if h.state == "running" else "not run", "the fleet run was stopped")
    with contextlib.suppress(Exception):
        drain()


def _settled(fut, h: _Host, addr: str, alive: bool, drain) -> bool:
    """Record in ``h`` how its study's task ``fut`` ended: finished (its frame and notes), failed,
    or lost with its worker ``addr`` (not ``alive``); False while it still runs. ``drain`` first takes the
    host's last progress messages off the queue."""
    if fut.status == "finished":
        res = fut.result()
        h.frames, h.meta = [res["df"]], res["meta"]
        h.env = res["meta"].get("environment") or h.env
        h.started, h.finished = res["t0"], res["t1"]
        notes = _notes(res["meta"])
        h.done("failures" if notes or (res["df"]["status"] != "ok").any() else "ok", notes)
    elif fut.status in ("error", "cancelled", "lost"):
        exc = fut.exception() if fut.status == "error" else None
        drain()
        h.done("failed", f"{type(exc).__name__}: {exc}" if exc else "cancelled")
    elif not alive:
        drain()
        fut.cancel()
        h.done("lost", f"worker {addr} died after {h.cells} of {h.planned} cells")
    else:
        return False
    return True


def _fleet_meta(params: dict, hosts: list, t_start: float) -> dict:
    """A fleet run's ``study.meta``: its parameters and definitions, each host's environment and notes,
    the status table, and what every host together ran."""
    return {
        "params": params, "metrics": metrics.definitions(),
        "environment": {"host": ", ".join(h.label for h in hosts), "kit_version": version.__version__,
                        "client": platform.node(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "runtimes": sorted({r for h in hosts for r in h.meta.get("runtimes", [])}),
        "skipped": {}, "dropped": {}, "partial": None if all(h.state == "ok" for h in hosts)
        else "not every host completed: see study.status()",
        "hosts": {h.label: {"environment": h.env or {}, **{k: h.meta.get(k) for k in
                            ("skipped", "dropped", "partial", "unavailable", "order", "elapsed_s")}}
                  for h in hosts},
        "fleet": [h.status() for h in hosts],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "elapsed_s": round(time.time() - t_start, 1),
    }


def _notes(meta: dict) -> str:
    """What a finished host did not measure: unavailable, skipped or dropped runtimes."""
    parts = [f"{k}: {v}" for k, v in (meta.get("unavailable") or {}).items()]
    parts += [f"{k} dropped: {v}" for k, v in (meta.get("dropped") or {}).items()]
    return "; ".join(parts)


def parse_host(spec: str) -> tuple[str, dict]:
    """``[user@]host[:port]`` -> (host, asyncssh connect options).

    >>> parse_host("alice@lab1:2222")
    ('lab1', {'username': 'alice', 'port': 2222})
    """
    user, _, rest = spec.strip().rpartition("@")
    host, _, port = rest.partition(":")
    if not host or (port and not port.isdigit()):
        raise InvalidSpec(f"host {spec!r}: write it as [user@]host[:port]")
    opts: dict = {}
    if user:
        opts["username"] = user
    if port:
        opts["port"] = int(port)
    return host, opts


@contextlib.contextmanager
def cluster(scheduler: str | None = None, hosts=None, *, n_local: int = 2, connect_options: dict | None = None,
            remote_python: str | None = None, bind: str | None = None, security=None, insecure: bool = False):
    """A ``Client`` for a fleet run, closed (with the cluster it started) on exit.

    Connections use TLS (:mod:`kit.bench.fleettls`): clusters the kit starts get credentials made
    for them; a running scheduler speaks ``tls://`` with the certificates given, or ``tcp://`` on
    loopback only. Plaintext elsewhere only with ``insecure=True``, which warns.

    Args:
        scheduler: the address of a running Dask scheduler (``tls://host:8786``).
        hosts: SSH hosts (``[user@]host[:port]``, a list or a comma-separated string) for
            ``distributed.SSHCluster``: the scheduler runs on the first, one worker on each.
        n_local: with neither: a ``LocalCluster`` of this many worker processes on 127.0.0.1.
        connect_options: asyncssh options for every host (``client_keys``, ``known_hosts``, ...).
        remote_python: the Python on the hosts (default: this one's path, as a ``make setup`` clone
            at the same path has it).
        bind: the address the scheduler and workers listen on (SSH; default: 127.0.0.1 when every
            host is this one, else each host's own).
        security: a ``distributed.security.Security`` with the cluster's certificates (default:
            made for the cluster the kit starts; Dask's config for a ``tls://`` scheduler).
        insecure: plaintext (``tcp://``), asked for by name: whoever reaches the scheduler or a
            worker runs code on the workers.

    Raises:
        InvalidSpec: a plaintext scheduler off this machine without ``insecure``, a ``tls://`` one
            without certificates, or contradicting options.

    >>> with cluster() as client:            # two workers on this machine, over TLS
    ...     Study(runtimes="process", repeat=3).run(client=client)
    """
    if scheduler and hosts:
        raise InvalidSpec("give a scheduler address or SSH hosts, not both")
    if scheduler:
        made = _scheduler_client(scheduler, security, insecure)
    elif hosts:
        made = _ssh_client(hosts, connect_options, remote_python, bind, security, insecure)
    else:
        made = _local_client(n_local, security, insecure)
    with made as client:
        if insecure:
            fleettls.allow_plaintext(client)
        yield client


@contextlib.contextmanager
def _scheduler_client(scheduler: str, security, insecure: bool):
    """A client of a running scheduler (see :func:`cluster`)."""
    from distributed import Client

    tls = fleettls.choose(scheduler, security=security, insecure=insecure)
    if not tls and fleettls.plaintext_remote(scheduler):
        fleettls.warn(scheduler)
    with Client(scheduler, security=fleettls.client_security(scheduler, security) if tls else None) as client:
        yield client


@contextlib.contextmanager
def _ssh_client(hosts, connect_options: dict | None, remote_python: str | None, bind: str | None, security,
                insecure: bool):
    """A client of an ``SSHCluster`` over ``hosts``, with credentials made for it (see :func:`cluster`)."""
    import dask
    from distributed import Client, SSHCluster
    from distributed.security import Security

    specs = [h for h in hosts.split(",")] if isinstance(hosts, str) else list(hosts)
    parsed = [parse_host(h) for h in specs if h.strip()]
    if not parsed:
        raise InvalidSpec("no SSH host given: name at least one as [user@]host[:port]")
    names = [parsed[0][0]] + [h for h, _ in parsed]
    opts = [{**(connect_options or {}), **o} for o in [parsed[0][1]] + [o for _, o in parsed]]
    local = all(fleettls.is_loopback(h) for h in names)
    if bind is None and local:
        bind = "127.0.0.1"  # else the scheduler advertises the host's first address, not loopback
    net = {"host": bind} if bind else {}
    tls = fleettls.choose(hosts=names, security=security, insecure=insecure)
    if not tls and not local:
        fleettls.warn(", ".join(dict.fromkeys(names)))
    with contextlib.ExitStack() as stack:
        sec = creds = None
        if tls:
            sec = security if security is not None else Security.temporary()
            creds = fleettls.RemoteCredentials(sec, list(zip(names, opts)), remote_python)
            stack.callback(creds.remove)  # after the cluster has stopped (the stack unwinds in reverse)
            creds.write()
        # The hosts' scheduler and workers inherit this process's Dask config when they start:
        # with TLS, that names the credential files they read.
        with dask.config.set(creds.config() if creds else {}):
            c = stack.enter_context(SSHCluster(
                names, connect_options=opts, remote_python=remote_python, security=sec,
                worker_options={"nthreads": 1, **net},
                scheduler_options={"port": 0, "dashboard": False, **({"protocol": "tls"} if tls else {}),
                                   **net}))
        client = stack.enter_context(Client(c))
        # a worker has printed its address before the scheduler has registered it
        client.wait_for_workers(len(parsed), timeout=WAIT_WORKERS)
        yield client


@contextlib.contextmanager
def _local_client(n_local: int, security, insecure: bool):
    """A client of a ``LocalCluster`` of ``n_local`` worker processes on 127.0.0.1 (see :func:`cluster`)."""
    from distributed import Client, LocalCluster
    from distributed.security import Security

    tls = fleettls.choose(security=security, insecure=insecure)
    sec = (security if security is not None else Security.temporary()) if tls else None
    with LocalCluster(n_workers=n_local, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, security=sec) as c, Client(c) as client:
        client.wait_for_workers(n_local, timeout=WAIT_WORKERS)
        yield client
