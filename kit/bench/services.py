"""Services from Debian's packages (Redis, MariaDB) as a bare process, in a container or in a VM: how
long until a real client gets an answer on 127.0.0.1, their memory at rest and under a short load,
and whether what they saved survives ``rm``. What notebook 04 measures, one instance at a time.

A service counts as started when a real client gets an answer through its port on the host's
127.0.0.1 (Redis's ``PONG``, the kit's MariaDB user logging in), not when a connection is merely
accepted: the kit's forwarder accepts before the service inside listens, and the client's
connection error then means "not yet" (:meth:`kit.Instance.wait_until`, which gives up at once if
the instance exits). Inside a container or VM the service listens on all of its own interfaces and
the kit publishes the port on 127.0.0.1; a bare process listens on 127.0.0.1 itself, in a directory
of the bench's scratch space.

>>> bench = ServiceBench(Path(tempfile.mkdtemp()), redis_requests=500)
>>> row = bench.measure("redis", "runc")   # ready_s, idle_pss_mib, load_peak_pss_mib, load_result...
>>> results, failures = bench.measure_all(["redis"], ["process", "runc"])
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import pandas as pd

from .. import api, usage
from .. import runtimes as _runtimes
from ..errors import KitError
from ..net import free_port
from .._proc import which
from . import loads, tools

#: Each service: its image (Debian bookworm with ``packages``), its port inside an instance, and what
#: the host needs to run it as a bare process and to load it (the load generators run on the host).
SERVICES = {"redis": {"image": "debian-redis", "packages": ["redis-server"], "port": 6379,
                      "host_needs": ["redis-server", "redis-benchmark"]},
            "mariadb": {"image": "debian-mariadb", "packages": ["mariadb-server"], "port": 3306,
                        "host_needs": ["mariadbd", "mariadb-install-db", "mariadb-slap"]}}

#: The columns of :meth:`ServiceBench.measure_all`'s frame (memory in MiB, 2^20 bytes).
COLUMNS = ("service", "runtime", "kind", "ready_s", "idle_pss_mib", "load_peak_pss_mib", "load_result", "accel",
           "accel_reason")
#: The columns of :meth:`ServiceBench.keeps_all`'s frame.
KEEP_COLUMNS = ("runtime", "saved", "after_rm_and_restart", "kept")

_SLAP_SECONDS = re.compile(r"Average number of seconds to run all queries: ([\d.]+)")


def host_has(cmd: str) -> bool:
    """Whether ``cmd`` is installed on the host (sbin included: ``mariadbd`` lives in /usr/sbin)."""
    return which(cmd) is not None


def missing_on_host(service: str, runtime: str) -> list[str]:
    """The commands ``service`` needs on the host to run under ``runtime`` that are not installed: only
    a runtime that runs on the host's own network and files (the bare process) needs the server there."""
    if not _runtimes.get(runtime).host_network:
        return []
    return [c for c in SERVICES[service]["host_needs"] if not host_has(c)]


def redis_server(datadir: str, port: int, bind: str) -> list[str]:
    """Redis serving on ``bind:port`` with ``datadir`` as its directory (``SAVE`` writes dump.rdb there),
    without background saves or an append-only file, so that only an explicit ``SAVE`` writes.

    >>> redis_server("/var/lib/kit-redis", 6379, "0.0.0.0")[:2]
    ['sh', '-c']
    """
    return ["sh", "-c", f"mkdir -p {datadir} && exec redis-server --port {port} --bind {bind} "
                        f"--protected-mode no --dir {datadir} --appendonly no --save ''"]


def load_result(service: str, out: str, queries: int) -> str:
    """What the load generator reported, in a few words: redis-benchmark's requests per second per test
    (its CSV, read by the kit's parser of it), or how long mariadb-slap took for its ``queries``.

    >>> load_result("mariadb", "Average number of seconds to run all queries: 0.412 seconds", 50)
    '50 queries in 0.41 s'
    """
    if service == "redis":
        return ", ".join(f"{f.component} {f.value:,.0f}/s" for f in tools.parse("redis-benchmark", out)
                         if f.metric == "throughput")
    secs = _SLAP_SECONDS.search(out)
    return f"{queries} queries in {float(secs[1]):.2f} s" if secs else out.strip()[-80:]


def _errors() -> tuple[type[BaseException], ...]:
    """What a measurement that failed raises: the kit's, the host tools', and the clients' own errors."""
    import pymysql
    import redis

    return KitError, OSError, subprocess.SubprocessError, redis.RedisError, pymysql.MySQLError


def _not_yet() -> tuple[type[BaseException], ...]:
    """A client's errors while the service is still starting."""
    import pymysql
    import redis

    return redis.ConnectionError, pymysql.MySQLError, OSError


def _failure(what: str, e: BaseException) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{what}: {type(e).__name__}: {first}"


class ServiceBench:
    """One run's services: their clients' password, the host directories of the bare processes, and
    the bounds of the loads.

    Args:
        scratch: a private host directory of this run (the bare processes' data, the client's options).
        redis_requests: redis-benchmark ``-n`` (per test: SET and GET).
        mariadb_queries: mariadb-slap ``--number-of-queries``.
        vm_memory: a VM's guest RAM.
        timeout: seconds a service may take to answer (VMs boot under TCG without KVM), and a load to run.
    """

    def __init__(self, scratch: Path, redis_requests: int = 2000, mariadb_queries: int = 200,
                 vm_memory: str = "512m", timeout: float = 300):
        self.scratch, self.timeout, self.vm_memory = Path(scratch), timeout, vm_memory
        self.redis_requests, self.mariadb_queries = redis_requests, mariadb_queries
        # MariaDB's password for this run ([A-Za-z0-9_-]: nothing to quote): the server gets it in its
        # environment, mariadb-slap in an options file only its owner can read, never on a command line
        self.password = secrets.token_urlsafe(18)
        self.client_file = self.scratch / f"mariadb-client-{secrets.token_hex(4)}.cnf"
        fd = os.open(self.client_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[client]\nuser={loads.DB_USER}\npassword={self.password}\n")

    def start(self, service: str, runtime: str, name: str, datadir: str | None = None):
        """``service`` started under ``runtime`` as instance ``name``.

        Args:
            datadir: the bare process's data directory (default: one of its own in the scratch space).

        Returns:
            Its :class:`kit.Instance` and the port on the host's 127.0.0.1 it answers on.
        """
        rt = _runtimes.get(runtime)
        port = free_port()
        inner, bind, d = (port, "127.0.0.1", datadir or str(self.scratch / name)) if rt.host_network else \
            (SERVICES[service]["port"], "0.0.0.0", f"/var/lib/kit-{service}")
        server = redis_server if service == "redis" else loads.mariadb_server
        return api.start(SERVICES[service]["image"], server(d, inner, bind), runtime=runtime, name=name,
                         ports=[] if rt.host_network else [f"{port}:{inner}"],
                         memory=self.vm_memory if rt.kind == "vm" else None,
                         env={loads.SECRET_ENV: self.password} if service == "mariadb" else None), port

    def answers(self, service: str, port: int) -> bool:
        """A real client's answer on 127.0.0.1:``port``: Redis's PONG, or MariaDB letting the kit's user in."""
        import pymysql
        import redis

        if service == "redis":
            return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).ping()
        with pymysql.connect(host="127.0.0.1", port=port, user=loads.DB_USER, password=self.password,
                             connect_timeout=5) as c:
            return c.open

    def load_argv(self, service: str, port: int) -> list[str]:
        """The host's load generator against 127.0.0.1:``port``, bounded by a count, never by time."""
        if service == "redis":  # the redis load's own command (kit.bench.loads), with this bench's count
            return loads.fill_argv(loads.LOADS["redis"].argv, port=port, count=self.redis_requests)
        return ["mariadb-slap", f"--defaults-extra-file={self.client_file}", "--protocol=tcp", "--host=127.0.0.1",
                f"--port={port}", "--concurrency=4", "--iterations=1", "--auto-generate-sql",
                f"--number-of-queries={self.mariadb_queries}"]

    def measure(self, service: str, runtime: str) -> dict:
        """Start ``service`` under ``runtime``, time it until a real client gets an answer, read its PSS
        once settled, then its peak while the load generator runs; the instance is removed after.

        Returns:
            One row of :data:`COLUMNS`.

        Raises:
            KitError, OSError, subprocess.SubprocessError, or a client's error: it failed to start,
            answer, or take the load.
        """
        t0 = time.perf_counter()
        db, port = self.start(service, runtime, f"nb04-{service}-{runtime}")
        with db:  # removed on leaving the block, whatever happens inside
            db.wait_until(lambda: self.answers(service, port), self.timeout, what=f"{service} to answer",
                          ignoring=_not_yet())
            ready = time.perf_counter() - t0
            idle = usage.steady(lambda: db.memory()["pss"])
            peak, out = usage.peak(lambda: db.memory()["pss"], lambda: subprocess.run(
                self.load_argv(service, port), capture_output=True, text=True, timeout=self.timeout,
                check=True).stdout)
            return {"service": service, "runtime": runtime, "kind": _runtimes.get(runtime).kind, "ready_s": ready,
                    "idle_pss_mib": idle / 2**20, "load_peak_pss_mib": peak / 2**20,
                    "load_result": load_result(service, out, self.mariadb_queries),
                    "accel": db.info.get("accel", ""), "accel_reason": db.info.get("accel_reason", "")}

    def measure_all(self, services, runtimes, strict: bool = False) -> tuple[pd.DataFrame, list[str]]:
        """:meth:`measure` for each service under each runtime, one at a time (so that they do not
        compete for the CPUs).

        Args:
            strict: raise the first failure (CI) instead of reporting it and moving on.

        Returns:
            The rows (:data:`COLUMNS`), and a sentence for each one not measured, saying why.
        """
        rows, failures = [], []
        for svc in services:
            for rt in runtimes:
                missing = missing_on_host(svc, rt)
                if missing:
                    failures.append(f"{svc} as a process: not installed on this host ({', '.join(missing)}); "
                                    f"apt-get install {' '.join(SERVICES[svc]['packages'])}")
                    continue
                try:
                    rows.append(self.measure(svc, rt))
                except _errors() as e:
                    if strict:
                        raise
                    failures.append(_failure(f"{svc} in {rt}", e))
        return pd.DataFrame(rows, columns=list(COLUMNS)), failures

    def keeps_after_rm(self, runtime: str) -> dict:
        """Write a key into Redis under ``runtime`` and ``SAVE`` it (dump.rdb into its directory),
        remove the instance, start a new one of the same image, command and directory, and ask for the
        key again.

        Returns:
            One row of :data:`KEEP_COLUMNS`: ``kept`` is whether the new instance read what the first wrote.
        """
        import redis

        written, seen = f"written at {time.strftime('%H:%M:%S')}", {}
        for step in ("write", "read"):  # two instances in turn
            db, port = self.start("redis", runtime, f"nb04-keep-{runtime}-{step}",
                                  datadir=str(self.scratch / "redis-keep"))
            with db:
                client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)
                db.wait_until(client.ping, self.timeout, what="redis to answer", ignoring=_not_yet())
                if step == "write":
                    client.set("kit:greeting", written)
                    seen["saved"] = client.save()  # SAVE: dump.rdb into its directory
                else:
                    seen["value"] = client.get("kit:greeting")
        return {"runtime": runtime, "saved": seen["saved"], "after_rm_and_restart": seen["value"] or "(nil)",
                "kept": seen["value"] == written}

    def keeps_all(self, runtimes, strict: bool = False) -> tuple[pd.DataFrame, list[str]]:
        """:meth:`keeps_after_rm` under each runtime that can run Redis here (a bare process needs it
        installed on the host).

        Returns:
            The rows (:data:`KEEP_COLUMNS`), and a sentence for each runtime that failed, saying why.
        """
        rows, failures = [], []
        for rt in runtimes:
            if missing_on_host("redis", rt):
                continue  # said once already by measure_all
            try:
                rows.append(self.keeps_after_rm(rt))
            except _errors() as e:
                if strict:
                    raise
                failures.append(_failure(f"persistence in {rt}", e))
        return pd.DataFrame(rows, columns=list(KEEP_COLUMNS)), failures
