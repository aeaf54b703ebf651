"""Performance under load: a real tool runs in (or against) an instance; its own figures become rows.

>>> from kit.bench import loads
>>> rows = loads.sample("cpu", "runc", seconds=2)          # one bounded run: throughput, p95, cpu_per_op...
>>> sorted({r["metric"] for r in rows})
['cpu_per_op', 'mean_latency', 'p95', 'throughput']

Two shapes of load (:data:`LOADS`):

- ``inside``: the tool (sysbench, dd, fio) is exec'd in an idle instance of ``debian-bench``;
- ``host``: the instance runs a server (iperf3, Redis, MariaDB) and the generator runs on the host
  against its port published on 127.0.0.1, so the path to a published port (the kit's forwarder,
  QEMU's user network, podman's own) is part of what is measured.

Every load is bounded in time (the tool's own ``--time``) and count, and has a deadline
(``deadline`` seconds, then the tool is killed and the sample fails). A missing tool or output
the parser does not know gives a one-line :class:`~kit.bench.tools.ToolOutputError` naming tool
and runtime; the instance is removed whatever happens. The raw output is kept on each row
(``raw``), so a number can be traced to what printed it.

Fairness on a small host: the instance's processes (and the cpuset cgroup the runtime made for it,
so exec'd processes follow) are pinned to one CPU and the host-side generator (``taskset``) to
another; :func:`pinning` says which, and a study records it in its environment record. The host
CPU time the instance used during the load is divided by the operations the tool counted
(:func:`kit.bench.tools.operations`: its own counts, never a rate times the wall time):
``cpu_per_op`` (the cgroup's cpuacct where the runtime made one, else the CPU time of its host
processes, e.g. QEMU; for the bare process, a tool run beside it adds its own CPU time from its reap).

The path to a published port is measured as a component of its own. A host load runs on one of
two paths (:data:`PATHS`): ``published`` (from the host through 127.0.0.1:PORT, the rows'
components as the tool names them) or ``direct`` (the same tool reaching the service inside the
instance's own network namespace, ``nsenter --net``; for a VM, exec'd in the guest; components
prefixed ``direct/``). Their difference is what port publishing costs. The forwarder's CPU time
during a published load is ``cpu_per_op`` with component ``forwarder/OP``: every thread of the kit's
forwarder (:meth:`kit.portfwd.Forwarder.cpu_seconds`; Docker's ports go through it too), podman's
rootlessport for podman as an ordinary user. QEMU's user network runs inside the QEMU process, so
for a VM it is part of the instance's own figure.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import api
from .. import runtimes as _runtimes
from .._proc import Popen, kill_group, wait_until
from ..errors import KitError, KitTimeout
from ..instance import Instance
from ..net import free_port
from . import footprint
from .tools import ToolOutputError, operations, parse

#: The image the in-instance tools come from (``make setup`` builds it: kit.images.prebuild).
BENCH_IMAGE = "debian-bench"


@dataclass(frozen=True)
class Load:
    """One load workload: what runs where, and which parser reads it.

    ``argv`` may hold ``{seconds}``, ``{count}``, ``{dir}`` (inside) or ``{port}`` (host). ``server``
    is the service a host load targets (``{port}``, ``{bind}``, ``{dir}``); ``inner_port`` its port
    inside the instance.
    """

    name: str
    tool: str
    where: str
    argv: tuple[str, ...]
    image: str = BENCH_IMAGE
    server: tuple[str, ...] = ()
    inner_port: int = 0
    ready: str = ""           # host loads: how the server proves it answers (redis, mysql, echo, log:REGEX)
    what: str = ""
    defaults: dict = field(default_factory=dict, compare=False, hash=False)


#: The environment variable that carries the generated password into the server's shell.
SECRET_ENV = "KIT_DB_PASSWORD"
#: The MariaDB user the kit's clients log in as.
DB_USER = "kit"
#: MariaDB with its grant tables: the kit's client logs in as ``kit`` (DB_USER) with a password generated for each
#: instance (:data:`SECRET_ENV`, handed over in the environment, never on a command line other users can
#: read), written by the server's own shell into an init file in its private data directory. root keeps
#: MariaDB's default: unix_socket authentication, on a socket in that directory (host: a 0700 temporary one).
_MARIADB = ("sh", "-c", "umask 077 && mkdir -p {dir} && { test -d {dir}/mysql || mariadb-install-db --no-defaults "
            "--user=root --datadir={dir} --skip-test-db --force >/dev/null; } && "
            "printf \"CREATE USER IF NOT EXISTS 'kit'@'%%' IDENTIFIED BY '%s';\\nALTER USER 'kit'@'%%' IDENTIFIED BY "
            "'%s';\\nGRANT ALL PRIVILEGES ON *.* TO 'kit'@'%%';\\nCREATE DATABASE IF NOT EXISTS sbtest;\\n\" "
            "\"$KIT_DB_PASSWORD\" \"$KIT_DB_PASSWORD\" > {dir}/kit-init.sql && exec env -u KIT_DB_PASSWORD mariadbd "
            "--no-defaults --user=root --datadir={dir} --port={port} --bind-address={bind} --socket={dir}/mysqld.sock "
            "--pid-file={dir}/mysqld.pid --init-file={dir}/kit-init.sql --skip-name-resolve "
            "--innodb-use-native-aio=0 --skip-log-bin")
#: The sysbench options file holds the password (``--config-file``, mode 0600): not on its command line.
_SB_MYSQL = ("--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-port={port}", "--config-file={secrets}",
             "--mysql-db=sbtest", "--tables=1", "--table-size={count}")

LOADS: dict[str, Load] = {l.name: l for l in (
    Load("cpu", "sysbench", "inside", ("sysbench", "cpu", "--threads=1", "--time={seconds}", "--events={count}",
                                       "run"),
         what="sysbench cpu (primes up to 10000), one thread: events/s", defaults={"count": 10**8}),
    Load("memory", "sysbench", "inside",
         ("sysbench", "memory", "--threads=1", "--time={seconds}", "--memory-block-size=1M",
          "--memory-total-size={count}M", "run"),
         what="sysbench memory, 1 MiB blocks written, one thread: MiB/s", defaults={"count": 10**6}),
    # /usr/bin/dd, not dd: where a busybox shell runs the command (a VM's exec), a bare name is its applet,
    # whose dd prints no timing line
    Load("syscall", "dd", "inside", ("env", "LC_ALL=C", "/usr/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=1",
                                     "count={count}"),
         what="dd bs=1 from /dev/zero to /dev/null: one read(2) and one write(2) per byte; ns per syscall",
         defaults={"count": 100_000}),
    Load("fileio", "fio", "inside",
         ("fio", "--name=randrw", "--directory={dir}", "--size=32m", "--rw=randrw", "--bs=4k", "--ioengine=psync",
          "--runtime={seconds}", "--time_based", "--output-format=json"),
         what="fio 4 KiB random read/write (psync, page cache) in a 32 MiB file: IOPS, clat p50/p95/p99"),
    Load("network", "iperf3", "host", ("iperf3", "-c", "127.0.0.1", "-p", "{port}", "-t", "{seconds}", "-J"),
         server=("iperf3", "-s", "-p", "{port}", "--forceflush"), inner_port=5201, ready="log:Server listening",
         what="iperf3 TCP from the host through the published port: Gbit/s"),
    Load("latency", "tcp-rtt", "host",
         (sys.executable, "-m", "kit.bench.tools.rtt", "127.0.0.1", "{port}", "--seconds", "{seconds}",
          "--count", "{count}", "--size", "64"),
         server=("socat", "TCP-LISTEN:{port},bind={bind},reuseaddr,fork", "PIPE"), inner_port=7007, ready="echo",
         what="TCP request/response: 64 bytes to an echo server (socat) and back, one at a time on one "
              "connection (kit.bench.tools.rtt): round trips/s, RTT p50/p95/p99",
         defaults={"count": 10**6}),
    Load("redis", "redis-benchmark", "host",
         ("redis-benchmark", "-h", "127.0.0.1", "-p", "{port}", "-n", "{count}", "-c", "8", "-t", "set,get",
          "--csv"),
         image="debian-redis", inner_port=6379, ready="redis",
         server=("redis-server", "--port", "{port}", "--bind", "{bind}", "--protected-mode", "no", "--save", "",
                 "--appendonly", "no"),
         what="redis-benchmark from the host, 8 clients: SET and GET requests/s, p50/p95/p99",
         defaults={"count": 20_000}),
    Load("mariadb", "sysbench", "host",
         ("sysbench", "oltp_read_write", *_SB_MYSQL, "--threads=2", "--time={seconds}", "--events={count}", "run"),
         image="debian-mariadb", inner_port=3306, ready="mysql", server=_MARIADB,
         what="sysbench oltp_read_write from the host (1 table of 1000 rows, 2 threads): transactions/s, p95",
         defaults={"count": 10**6, "rows": 1000}),
)}


def mariadb_server(datadir: str, port: int, bind: str) -> list[str]:
    """The command line of a MariaDB server as the ``mariadb`` load runs it (see ``_MARIADB``): first start
    in ``datadir``, then serve on ``bind:port``. Start it with ``env={SECRET_ENV: password}``; clients log
    in as :data:`DB_USER` with that password."""
    return fill_argv(_MARIADB, dir=datadir, port=port, bind=bind)


def pinning() -> dict:
    """Which CPUs the instance and the load generator use (no pinning on a single-CPU host)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"instance": cpus, "generator": cpus, "how": "none: one CPU"}
    return {"instance": [cpus[-1]], "generator": [cpus[0]],
            "how": "instance: sched_setaffinity of its host threads and cpuset.cpus of its cpuset cgroup; "
                   "generator: taskset"}


def _cgroup_lines(pid: int) -> list[tuple[str, str]]:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        out += [(c, path) for c in (ctrls.split(",") if ctrls else [""])]
    return out


def _group_of(pid: int, controller: str) -> Path | None:
    """The cgroup directory of ``pid`` for ``controller`` (v1), or its unified group (v2); None when
    it is the group this process itself is in (then it would count the whole host)."""
    mine = dict(_cgroup_lines(os.getpid()))
    theirs = dict(_cgroup_lines(pid))
    key = controller if controller in theirs else ("" if "" in theirs and len(theirs) == 1 else None)
    if key is None or theirs[key] in ("/", mine.get(key)):
        return None
    root = Path("/sys/fs/cgroup")
    base = root if key == "" else next((d for d in root.iterdir() if controller in d.name.split(",")), None)
    return base / theirs[key].lstrip("/") if base else None


def _cg_cpu(group: Path) -> float | None:
    try:
        if (group / "cpuacct.usage").exists():
            return int((group / "cpuacct.usage").read_text()) / 1e9
        for line in (group / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    except (OSError, ValueError):
        return None
    return None


def _proc_cpu(pids) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _own_pids(inst: Instance) -> list[int]:
    """The instance's own host processes, its monitor left out (the runtime's record: measurement)."""
    return footprint.host_pids(inst.backend, inst.state)


class CpuMeter:
    """Host CPU seconds an instance spends: its cgroup's accounting, or its host processes' times."""

    def __init__(self, inst: Instance):
        self.inst = inst
        pids = _own_pids(inst)
        self.group = None if not inst.backend.cgroup_accounting else next(
            (g for p in pids if (g := _group_of(p, "cpuacct")) is not None and _cg_cpu(g) is not None), None)
        self.source = f"cgroup {self.group}" if self.group else "host processes (psutil)"

    def read(self) -> float:
        if self.group is not None:
            v = _cg_cpu(self.group)
            if v is not None:
                return v
        return _proc_cpu(_own_pids(self.inst))


def pin(inst: Instance, cpus: list[int]) -> str:
    """Pin the instance's host threads (and its cpuset cgroup, so later processes follow) to ``cpus``."""
    import psutil

    done = []
    for pid in _own_pids(inst):
        group = _group_of(pid, "cpuset")
        if group is not None and group not in done:
            try:
                (group / "cpuset.cpus").write_text(",".join(map(str, cpus)))
                done.append(group)
            except OSError:
                pass
        try:
            for t in psutil.Process(pid).threads():
                try:
                    os.sched_setaffinity(t.id, cpus)
                except OSError:
                    pass
        except psutil.Error:
            pass
    return f"cpus {cpus}" + (f", cpuset {', '.join(str(g) for g in done)}" if done else "")


def fill_argv(argv, **kw) -> list[str]:
    """``argv`` with each ``{key}`` replaced by the value given for it (a load's command templates).

    >>> fill_argv(["redis-benchmark", "-p", "{port}", "-n", "{count}"], port=6379, count=1000)
    ['redis-benchmark', '-p', '6379', '-n', '1000']
    """
    out = []
    for a in argv:
        for k, v in kw.items():
            a = a.replace("{" + k + "}", str(v))
        out.append(a)
    return out


def _answers(kind: str, port: int, inst: Instance, probe: dict) -> bool:
    """Whether the server answers on ``port`` (``probe``: this instance's state between calls)."""
    if kind.startswith("log:"):
        # The server logged that it listens; then one connection proves the path to it, but a server
        # that takes it for a client (iperf3) handles that client's leaving before it listens again,
        # and under TCG that takes long enough to fail the load's first run: ready when it has logged
        # the line once more (or after a probe 10 s old, probe again).
        out = inst.logs()
        seen = (out.stdout_bytes + out.stderr_bytes).count(kind[4:].encode())
        if probe and seen > probe["seen"]:
            return True
        if seen and (not probe or time.monotonic() - probe["at"] > 10) and _connects(port):
            probe.update(seen=seen, at=time.monotonic())
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if kind == "echo":
                s.sendall(b"kit\n")
                return s.recv(16) == b"kit\n"
            if kind == "redis":
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            greeting = s.recv(1024)  # MySQL protocol v10 handshake
            return len(greeting) > 5 and greeting[4] == 10
    except OSError:
        return False


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass
class Target:
    """A load's instance (the :class:`kit.Instance` handle), with what the load keeps beside it."""

    instance: Instance
    load: Load
    port: int | None = None
    """Where the host's generator reaches a host load's server (127.0.0.1)."""
    hostdir: str | None = None
    """A host directory of the load's own: the server's data, or the bare process's scratch space."""
    pinned: str = ""
    #: A server that logs its clients in (MariaDB): the password generated for this instance, and the
    #: private directory (0700) of the client's options file that holds it.
    secret: str | None = None
    secretdir: str | None = None

    @property
    def secrets_file(self) -> str:
        """The client's private options file (sysbench --config-file) of a server that logs clients in; ''
        for any other."""
        return str(Path(self.secretdir) / "sysbench.cfg") if self.secretdir else ""


def start(load: Load, runtime: str, name: str, timeout: float = 300.0, memory="512m",
          volume: str | None = None) -> Target:
    """Start the instance of ``load`` under ``runtime`` (an idle ``sleep`` or the server), ready and pinned.

    Args:
        volume: a host directory mounted at /kit-vol (fileio on a volume), where the runtime can.
    """
    rt = _runtimes.require(runtime)
    kw: dict = {"memory": memory} if memory else {}
    if volume:
        kw["volumes"] = [f"{volume}:/kit-vol"]
    port = hostdir = secret = secretdir = None
    if load.where == "inside":
        cmd, ports = ["sleep", "3600"], ()
    else:
        port = free_port()
        inner = port if rt.host_network else load.inner_port
        hostdir = tempfile.mkdtemp(prefix="kit-load-") if rt.shares_host_files else None
        cmd = fill_argv(load.server, port=inner, bind="127.0.0.1" if rt.host_network else "0.0.0.0",
                        dir=hostdir or f"/var/lib/kit-{load.name}")
        ports = () if rt.host_network else [(port, inner)]
        if any(SECRET_ENV in a for a in load.server):
            secret = secrets.token_urlsafe(18)  # [A-Za-z0-9_-]: nothing to quote in SQL or sh
            kw["env"] = {SECRET_ENV: secret}
            secretdir = tempfile.mkdtemp(prefix="kit-load-secret-")
            _write_private(Path(secretdir) / "sysbench.cfg", f"mysql-user={DB_USER}\nmysql-password={secret}\n")
    try:
        inst = api.start(load.image, cmd, runtime=runtime, name=name, ports=ports, **kw)
    except BaseException:
        _remove_dirs(hostdir, secretdir)
        raise
    target = Target(inst, load, port, hostdir, secret=secret, secretdir=secretdir)
    try:
        _wait_ready(target, timeout)
        cpus = pinning()["instance"]
        target.pinned = pin(inst, cpus) if len(os.sched_getaffinity(0)) > 1 else "none"
        if load.name == "mariadb":
            _mariadb_prepare(target, timeout)
    except BaseException:
        remove(target)
        raise
    return target


def _wait_ready(target: Target, timeout: float) -> None:
    """Wait until the load can run: an inside load's instance runs (a VM's command has started), a host
    load's server answers (:func:`_answers`).

    Raises:
        KitError: the instance exited first (its log's reason, :func:`why_stopped`).
        KitTimeout: not ready within ``timeout``.
    """
    inst, load = target.instance, target.load
    vm = _runtimes.get(inst.runtime).kind == "vm"
    probe: dict = {}

    def ready():
        if inst.status != "running":
            out = inst.logs()
            raise KitError(f"{load.name} in {inst.runtime}: the instance exited before it was ready: "
                           f"{why_stopped(out.stderr or out.stdout)[:200]}")
        if load.where == "inside":
            return not vm or "command" in inst.phases
        return _answers(load.ready, target.port, inst, probe)

    wait_until(ready, timeout, interval=0.05, what=f"{load.name} instance in {inst.runtime} becoming ready")


def why_stopped(log: str) -> str:
    """The line of a server's log that says why it stopped: its first ``[ERROR]`` line (the cause; what
    follows is the crash report, e.g. mariadbd's 'Aborted' under gVisor after io_uring failed), else its last."""
    lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
    first_error = next((ln for ln in lines if "[ERROR]" in ln), None)
    last = lines[-1] if lines else ""
    return f"{first_error} ... {last}" if first_error and first_error != last else last


def remove(target: Target) -> None:
    """Remove the load's instance (forced) and the directories the load kept beside it."""
    try:
        target.instance.rm(force=True)
    except KitError:
        pass
    _remove_dirs(target.hostdir, target.secretdir)


def _remove_dirs(*dirs: str | None) -> None:
    for d in dirs:
        if d:
            shutil.rmtree(d, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file only its owner can read (created so, never chmod'ed after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _mariadb_prepare(target: Target, timeout: float) -> None:
    import pymysql

    # the server's init file has made the user and sbtest; this proves the password works before the load
    conn = pymysql.connect(host="127.0.0.1", port=target.port, user=DB_USER, password=target.secret,
                           connect_timeout=10)
    try:
        with conn.cursor() as c:
            c.execute("CREATE DATABASE IF NOT EXISTS sbtest")
    finally:
        conn.close()
    rows = target.load.defaults.get("rows", 1000)
    argv = ["sysbench", "oltp_read_write",
            *fill_argv(_SB_MYSQL, port=target.port, count=rows, secrets=target.secrets_file), "prepare"]
    run_generator(argv, timeout, target.load, target.instance.runtime)


def run_generator(argv: list[str], deadline: float, load: Load, runtime: str, netns: str | None = None) -> str:
    """Run a load generator on the host, pinned (and inside ``netns`` for the direct path)."""
    if shutil.which(argv[0]) is None:
        raise ToolOutputError(f"{argv[0]}: not installed on the host, needed for load {load.name!r} against "
                              f"{runtime} (apt-get install {'redis-tools' if argv[0].startswith('redis') else argv[0]})")
    gen = pinning()["generator"]
    pre = ["taskset", "-c", ",".join(map(str, gen))] if len(os.sched_getaffinity(0)) > 1 and shutil.which("taskset") \
        else []
    if netns:
        pre += ["nsenter", f"--net={netns}", "--"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])))
    try:
        p = subprocess.run(pre + argv, capture_output=True, text=True, timeout=deadline, env=env)
    except subprocess.TimeoutExpired:
        raise ToolOutputError(f"{argv[0]} against {runtime}: no result within the {deadline:g} s deadline") from None
    if p.returncode != 0:
        tail = ((p.stderr or p.stdout).strip().splitlines() or [""])[-1][:200]
        raise ToolOutputError(f"{argv[0]} against {runtime} exited {p.returncode}: {tail}")
    return p.stdout + p.stderr


def _inside_tool(target: Target, argv: list[str], deadline: float) -> tuple[str, float | None]:
    """Run a tool in the instance: (its output, its own CPU seconds when it ran beside a bare process
    on the host, else None: the instance's meter counts it)."""
    inst = target.instance
    out: dict = {}
    beside = _runtimes.get(inst.runtime).shares_host_files  # "inside" is the host: time the tool by its reap

    def go():  # a thread pinned like the instance: what it starts (runc exec, the tool) inherits that
        try:
            if len(os.sched_getaffinity(0)) > 1:
                os.sched_setaffinity(0, pinning()["instance"])
            out["r"] = _beside(argv, deadline) if beside else inst.exec(argv, timeout=deadline)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            out["e"] = e

    t = threading.Thread(target=go, name=f"kit-load-{inst.name}")
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    r = out["r"]
    text = r.stdout + r.stderr
    if r.exit_code in (126, 127) or "not found" in r.stderr and r.exit_code != 0:
        raise ToolOutputError(f"{argv[0]}: not found in image {target.load.image!r} under {inst.runtime}: "
                              f"build it with python -m kit.images.prebuild")
    if r.exit_code != 0:
        tail = (text.strip().splitlines() or [""])[-1][:200]
        raise ToolOutputError(f"{argv[0]} in {inst.runtime} exited {r.exit_code}: {tail}")
    return text, getattr(r, "cpu_seconds", None)


@dataclass
class _Ran:
    exit_code: int
    stdout: str
    stderr: str
    cpu_seconds: float | None


def _beside(argv: list[str], deadline: float) -> _Ran:
    """A bare process has no inside: run the tool beside it on the host, as its exec does, here as a
    child whose own CPU time comes from its reap (this process's RUSAGE_CHILDREN would count every
    other child reaped meanwhile)."""
    try:
        p = Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  start_new_session=True)
    except OSError as e:
        return _Ran(127, "", f"{argv[0]}: not found ({e.strerror})", None)
    try:
        stdout, stderr = p.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        kill_group(p)
        p.communicate()
        raise KitTimeout(f"{argv[0]} beside the bare process did not finish within {deadline:g} s") from None
    return _Ran(p.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"), p.cpu_seconds)


#: The paths a host load can take to its service (see the module's docstring).
PATHS = ("published", "direct")


def forwarder_cpu(inst: Instance, port: int | None):
    """A function returning the CPU seconds of what forwards ``port`` to ``inst`` (None: nothing
    apart from the instance: a bare process has no forwarder, QEMU's user network is inside QEMU;
    a runtime's own forwarder is its :attr:`~kit.runtimes.base.Runtime.forwarder_process`)."""
    fwd = inst.state.forwarder
    if fwd is not None:
        return fwd.cpu_seconds  # the kit's forwarder: every thread of it, in this process
    process = inst.backend.forwarder_process
    if not process or port is None:
        return None
    import psutil

    procs = [p for p in psutil.process_iter(["name", "cmdline"])
             if p.info["name"] == process and str(port) in (p.info["cmdline"] or [])]
    return (lambda: _forwarder_processes_cpu(procs)) if procs else None


def _forwarder_processes_cpu(procs) -> float:
    """CPU seconds of a runtime's forwarding processes; one that cannot be read fails (never a smaller sum)."""
    import psutil

    try:
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    except psutil.Error as e:
        raise KitError(f"forwarder CPU: {e}") from None


def netns_of(inst: Instance) -> str:
    """The network namespace (a path nsenter opens) where ``inst``'s service listens."""
    fwd = inst.state.forwarder
    if fwd is not None and fwd.netns:
        return fwd.netns
    pids = _own_pids(inst)
    if not pids:
        raise KitError(f"{inst.name} in {inst.runtime}: no host process left to find its network namespace")
    return f"/proc/{pids[0]}/ns/net"


def _direct(target: Target, argv: list[str], deadline: float) -> str:
    """Run a host load's generator where the service is: in its network namespace, or in the guest."""
    load, runtime = target.load, target.instance.runtime
    rt = _runtimes.get(runtime)
    if rt.kind == "vm":
        if argv[0] == sys.executable:
            raise ToolOutputError(f"{load.tool} direct in {runtime}: the client is Python on the host and the "
                                  f"guest image {load.image!r} has no Python; only the published path is measured")
        return _inside_tool(target, argv, deadline)[0]  # a VM: its CPU is QEMU's, which the meter reads
    if rt.host_network:
        return run_generator(argv, deadline, load, runtime)  # already in the host's namespace
    if os.geteuid() != 0:
        raise KitError(f"{load.name} direct in {runtime}: entering the instance's network namespace "
                       f"(nsenter --net) needs root; run as root or measure the published path only")
    return run_generator(argv, deadline, load, runtime, netns=netns_of(target.instance))


def measure(target: Target, seconds: float = 5.0, count: int | None = None, deadline: float | None = None,
            directory: str = "/tmp", path: str = "published") -> tuple[list[dict], str]:
    """Run the load once against a started instance: (rows, raw output).

    Args:
        path: for a host load, ``published`` (through the published port) or ``direct`` (inside the
            instance's network namespace; rows' components prefixed ``direct/``). See :data:`PATHS`.
    """
    load, inst = target.load, target.instance
    if path not in PATHS:
        raise KitError(f"load path {path!r}: one of {', '.join(PATHS)}")
    direct = path == "direct" and load.where == "host"
    rt = _runtimes.get(inst.runtime)
    count = count or load.defaults.get("count", 10**6)
    # a VM under TCG runs a count-bounded tool an order of magnitude slower, and a timed-out exec
    # leaves the guest without exec: a deadline it does not reach on a busy host
    deadline = deadline or max(60.0, seconds * 10) * (3 if rt.kind == "vm" else 1)
    secs = max(1, int(round(seconds)))
    meter = CpuMeter(inst)
    fwd = forwarder_cpu(inst, target.port) if load.where == "host" and not direct else None
    f0 = fwd() if fwd else None
    c0, t0 = meter.read(), time.monotonic()
    beside = None
    if load.where == "inside":
        argv = fill_argv(load.argv, seconds=secs, count=count, dir=directory)
        raw, beside = _inside_tool(target, argv, deadline)
    elif direct:
        port = target.port if rt.host_network else load.inner_port
        argv = fill_argv(load.argv, port=port, seconds=secs, count=count, secrets=target.secrets_file)
        raw = _direct(target, argv, deadline)
    else:
        argv = fill_argv(load.argv, port=target.port, seconds=secs, count=count, secrets=target.secrets_file)
        raw = run_generator(argv, deadline, load, inst.runtime)
    wall = time.monotonic() - t0
    cpu = meter.read() - c0 + (beside or 0.0)  # a tool run beside the bare process: its own CPU time
    f1 = fwd() if fwd else None
    rows = [f.row() for f in parse(load.tool, raw)]
    ops, op_unit = operations(load.tool, raw, argv)
    if ops > 0:
        rows.append({"metric": "cpu_per_op", "component": f"instance/{op_unit}", "value": cpu / ops * 1e6,
                     "unit": "µs"})
        if f0 is not None and f1 is not None:
            rows.append({"metric": "cpu_per_op", "component": f"forwarder/{op_unit}",
                         "value": (f1 - f0) / ops * 1e6, "unit": "µs"})
    rows.append({"metric": "load_time", "component": "", "value": wall, "unit": "s"})
    if direct:
        for r in rows:
            r["component"] = "direct/" + r["component"] if r["component"] else "direct"
    return rows, raw


def sample(load: str, runtime: str, seconds: float = 5.0, count: int | None = None, timeout: float = 300.0,
           volume: bool = False, name: str | None = None, paths=("published",)) -> list[dict]:
    """Start, load once per path (:data:`PATHS`; inside loads have one), remove: the rows of one run
    (for tests and quick looks).

    Raises:
        ToolOutputError: the tool is missing or printed what its parser does not know.
    """
    spec = LOADS[load]
    name = name or f"load-{load}-{runtime}-{secrets.token_hex(3)}"
    vol = tempfile.mkdtemp(prefix="kit-vol-") if volume else None
    try:
        target = start(spec, runtime, name, timeout, volume=vol)
        try:
            out = []
            for path in _paths(spec, paths):
                rows, raw = measure(target, seconds, count, directory="/kit-vol" if vol else _scratch(target),
                                    path=path)
                out += [dict(r, raw=raw, pinning=target.pinned) for r in rows]
        finally:
            remove(target)
    finally:
        if vol:
            shutil.rmtree(vol, ignore_errors=True)
    return out


def _paths(load: Load, paths) -> list[str]:
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise KitError(f"load path {bad[0]!r}: one of {', '.join(PATHS)}")
    return list(paths) if load.where == "host" else ["published"]


def _scratch(target: Target) -> str:
    """Where fio writes: the instance's own writable layer (a host temporary directory for the bare process)."""
    if _runtimes.get(target.instance.runtime).shares_host_files:
        if target.hostdir is None:
            target.hostdir = tempfile.mkdtemp(prefix="kit-load-")
        return target.hostdir
    return "/tmp"


def run(loads, runtimes, repeat: int = 3, warmup: int = 1, seconds: float = 5.0, seed: int = 0,
        timeout: float = 300.0, counts: dict | None = None, volume: bool = False, on_rows=None,
        progress=None, paths=("published",)) -> list[dict]:
    """Every load on every runtime, interleaved: for each load, one instance per runtime, then rounds
    (warmup first) of one run per runtime (and per path of a host load, :data:`PATHS`) in a seeded
    shuffled order.

    ``on_rows(rows)`` receives each run's rows as it completes (a study adds them to its frame).
    A runtime whose instance fails to start or whose tool fails gives a ``failed`` row with the
    one-line reason, and the others go on.
    """
    rng = random.Random(seed)
    uid = secrets.token_hex(3)
    out: list[dict] = []

    def emit(rows):
        out.extend(rows)
        if on_rows:
            on_rows(rows)

    for lname in loads:
        load = LOADS[lname]
        targets: dict[str, Target] = {}
        vols: dict[str, str] = {}
        try:
            for i, rt in enumerate(runtimes):
                kind = _runtimes.get(rt).kind
                ctx = {"part": "load", "runtime": rt, "kind": kind, "workload": lname + ("-volume" if volume else ""),
                       "image": load.image}
                try:
                    if volume:
                        vols[rt] = tempfile.mkdtemp(prefix="kit-vol-")
                    targets[rt] = start(load, rt, f"l{uid}-{lname}-{i}", timeout, volume=vols.get(rt))
                except (KitError, OSError, subprocess.SubprocessError) as e:
                    emit([{**ctx, "metric": "failed", "value": 1, "warmup": False, "round": 0, "order": i,
                           "status": f"error: {_one_line(e)}"}])
            for r in range(warmup + repeat):
                order = list(targets)
                rng.shuffle(order)
                for pos, rt in enumerate(order):
                    target = targets[rt]
                    if progress:
                        progress(f"load {lname} {rt} round {r + 1}/{warmup + repeat}")
                    ctx = {"part": "load", "runtime": rt, "kind": _runtimes.get(rt).kind,
                           "workload": lname + ("-volume" if volume else ""), "image": load.image, "round": r,
                           "order": pos, "warmup": r < warmup, "repeat": r - warmup if r >= warmup else r}
                    for path in _paths(load, paths):
                        try:
                            d = "/kit-vol" if volume and rt in vols else _scratch(target)
                            rows, raw = measure(target, seconds, (counts or {}).get(lname), directory=d, path=path)
                            accel = str(target.instance.info.get("accel", ""))
                            emit([{**ctx, **row, "status": "ok", "raw": raw, "accel": accel} for row in rows])
                        except (KitError, OSError, subprocess.SubprocessError) as e:
                            emit([{**ctx, "metric": "failed", "value": 1, "component": "direct" if path == "direct"
                                   else "", "status": f"error: {_one_line(e)}"}])
        finally:
            for target in targets.values():
                remove(target)
            for v in vols.values():
                shutil.rmtree(v, ignore_errors=True)
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
