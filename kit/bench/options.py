"""The study's options as a command line: shared by ``kit bench`` and the ``%bench`` magic.

>>> ns = build_parser().parse_args(["-r", "process,runc", "--repeat", "3", "true"])
>>> study_kwargs(ns)["runtimes"]
['process', 'runc']
"""

from __future__ import annotations

import argparse
import shlex

from ..errors import InvalidSpec


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the Study options to ``p`` (a parser or a subcommand's parser)."""
    p.add_argument("workload", nargs="*", default=[],
                   help="workload: a preset (true, echo, httpd, redis), a load (cpu, memory, syscall, fileio, "
                        "fileio-volume, network, redis, mariadb; several may be named) or a command; default: true")
    p.add_argument("-i", "--image", action="append", default=None, help="image (repeatable); default busybox")
    p.add_argument("-r", "--runtimes", default="all", help="comma-separated runtimes, or all (default)")
    p.add_argument("-n", "--repeat", type=int, default=10, help="measured startup runs per cell (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="warmup runs, kept but flagged (default 1)")
    p.add_argument("--vm-repeat", type=int, default=None, help="measured runs for VMs (default min(repeat, 5))")
    p.add_argument("--parts", default=None,
                   help="comma-separated parts: startup, memory, disk, density, load (default: load for load "
                        "workloads, the other four for anything else)")
    p.add_argument("--starts", default="cold", help="comma-separated start modes of the startup runs: cold, "
                                                   "precreated, snapshot (each where its runtime offers it; default cold)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds each load run lasts (default 5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per run (default 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the interleaving and bootstrap (default 0)")
    p.add_argument("-m", "--memory", default=None, help="memory limit of startup runs, e.g. 64m (default none)")
    p.add_argument("--idle-memory", default="256m", help="memory limit (VM RAM) of idle instances (default 256m)")
    p.add_argument("--density-max", type=int, default=8, help="most idle instances at once (default 8)")
    p.add_argument("--vm-density-max", type=int, default=4, help="most idle VMs at once (default 4)")
    p.add_argument("--density-memory-budget", default="4g", help="memory budget of the density part (default 4g)")
    p.add_argument("--density-time-budget", type=float, default=60.0,
                   help="seconds per runtime for the density part (default 60)")
    p.add_argument("--name", default="study", help="the study's label (default study)")
    p.add_argument("-o", "--out", default=None, help="save results, summary and figures to this directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("many hosts (Dask distributed; see README 'Many machines')",
                             "Dask connections use TLS: a cluster started over SSH gets certificates made for it; "
                             "a running scheduler is tls:// with the --tls-* files, or tcp:// on 127.0.0.1 only. "
                             "Plaintext elsewhere only with --insecure.")
    g.add_argument("--hosts", default=None, help="comma-separated SSH hosts [user@]host[:port]: the whole study "
                                                  "runs on each (distributed.SSHCluster over TLS; scheduler on the "
                                                  "first)")
    g.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tls://HOST:8786, or "
                                                      "tcp://127.0.0.1:PORT) whose workers each run the whole study")
    g.add_argument("--tls-ca-file", default=None, help="CA certificate of the cluster (a tls:// --scheduler, or "
                                                        "your own certificates for --hosts)")
    g.add_argument("--tls-cert", default=None, help="certificate this client (and, with --hosts, the scheduler and "
                                                     "workers) presents")
    g.add_argument("--tls-key", default=None, help="its private key (unless the --tls-cert file holds it)")
    g.add_argument("--insecure", action="store_true",
                   help="plaintext Dask connections (tcp://) off this machine: whoever reaches the scheduler or a "
                        "worker runs code there as its user; say it only on a network you trust")
    g.add_argument("--remote-python", default=None, help="the Python on the hosts (default: this one's path)")
    g.add_argument("--ssh-key", action="append", default=None, help="private key for SSH (repeatable)")
    g.add_argument("--known-hosts", default=None, help="known_hosts file to check the hosts' keys against "
                                                        "(default ~/.ssh/known_hosts)")
    g.add_argument("--per", choices=("worker", "machine"), default="worker",
                   help="run on every worker (those sharing a machine take turns) or once per machine")
    return p


class _HelpShown(Exception):
    """``--help`` has printed the help: the magic returns nothing."""


class _Parser(argparse.ArgumentParser):
    """For the magic: a bad option is a one-line KitError and ``--help`` returns, neither is SystemExit."""

    def error(self, message):
        raise InvalidSpec(f"bench: {message} (see %bench --help)")

    def exit(self, status=0, message=None):
        if message:
            raise InvalidSpec(f"bench: {message.strip()}")
        raise _HelpShown()


def build_parser(prog: str = "%bench") -> argparse.ArgumentParser:
    """A parser of the Study options whose errors raise :class:`~kit.errors.InvalidSpec`."""
    return add_arguments(_Parser(prog=prog, description="Benchmark startup, memory, disk and density "
                                                        "of a workload across runtimes."))


def study_kwargs(ns: argparse.Namespace) -> dict:
    """The keyword arguments of :class:`~kit.bench.Study` from parsed options."""
    from .loadpart import NAMES
    from .workloads import PRESETS

    if ns.workload and all(w in NAMES or w in PRESETS for w in ns.workload):
        workload = list(ns.workload)  # names: `kit bench cpu redis` is two workloads
    else:
        workload = " ".join(shlex.quote(w) for w in ns.workload) if ns.workload else "true"
    runtimes = ns.runtimes if ns.runtimes == "all" else [r.strip() for r in ns.runtimes.split(",") if r.strip()]
    return {"image": ns.image or "busybox", "runtimes": runtimes, "workload": workload, "repeat": ns.repeat,
            "warmup": ns.warmup, "vm_repeat": ns.vm_repeat, "parts": ns.parts, "seconds": ns.seconds,
            "timeout": ns.timeout,
            "seed": ns.seed, "memory": ns.memory, "idle_memory": ns.idle_memory, "density_max": ns.density_max,
            "vm_density_max": ns.vm_density_max, "density_memory_budget": ns.density_memory_budget,
            "density_time_budget": ns.density_time_budget, "name": ns.name, "progress": not ns.no_progress,
            "starts": [m.strip() for m in ns.starts.split(",") if m.strip()]}


def run_study(study, ns: argparse.Namespace) -> None:
    """Run ``study`` here, or once on every host when ``--hosts`` or ``--scheduler`` was given
    (:func:`kit.bench.fleet.cluster`: an SSHCluster, or a running Dask scheduler; TLS unless
    ``--insecure``)."""
    if not (ns.hosts or ns.scheduler):
        if ns.insecure or ns.tls_ca_file or ns.tls_cert or ns.tls_key:
            raise InvalidSpec("--insecure and --tls-* are for a fleet: give --hosts or --scheduler")
        study.run()
        return
    from . import fleet, fleettls

    opts = {**({"client_keys": ns.ssh_key} if ns.ssh_key else {}),
            **({"known_hosts": ns.known_hosts} if ns.known_hosts else {})}
    security = fleettls.from_files(ns.tls_ca_file, ns.tls_cert, ns.tls_key)
    with fleet.cluster(scheduler=ns.scheduler, hosts=ns.hosts, connect_options=opts, remote_python=ns.remote_python,
                       security=security, insecure=ns.insecure) as client:
        study.run(client=client, per=ns.per)


def magic(line: str):
    """What ``%bench LINE`` does: build the Study, run it, save it if ``-o`` was given; return the Study.

    ``%bench --help`` prints the options and returns None.

    Raises:
        InvalidSpec: bad options or unbalanced quotes (one line, no traceback needed).
    """
    from .study import Study

    try:
        ns = build_parser().parse_args(shlex.split(line))
    except _HelpShown:
        return None
    except ValueError as e:  # shlex: unbalanced quotes
        raise InvalidSpec(f"bench: cannot parse {line!r}: {e} (check your quotes)") from None
    study = Study(**study_kwargs(ns))
    run_study(study, ns)
    if ns.out:
        study.save(ns.out)
    return study
