"""The study's options on a command line, built from :class:`~kit.bench.params.StudyParams`' fields:
``kit bench`` (a plain argparse subcommand) and ``%bench`` (IPython's ``MagicArgumentParser``)
read the same ones, with the same help, and make the same study.

>>> ns = build_parser().parse_args(["-r", "process,runc", "--repeat", "3", "true"])
>>> StudyParams(**study_kwargs(ns)).runtimes
('process', 'runc')
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ..errors import InvalidSpec
from . import fleet, fleettls
from .params import StudyParams
from .study import Study


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the Study options to ``p`` (a parser or a subcommand's parser): one per field of
    :class:`StudyParams`, then where to save (``-o``) and where to run (a fleet's hosts)."""
    for f in fields(StudyParams):
        cli = {k: v for k, v in f.metadata["cli"].items() if k not in ("convert", "positional")}
        if "action" not in cli and "type" not in cli and type(f.default) in (int, float):
            cli["type"] = type(f.default)
        if f.metadata["cli"].get("positional"):
            p.add_argument(f.name, default=None, help=_help(f), **cli)
        else:
            flags = f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",)
            p.add_argument(*flags, dest=f.name, default=None, help=_help(f), **cli)
    p.add_argument("-o", "--out", default=None, help="save results, summary and figures to this directory")
    _fleet_arguments(p)
    return p


def _help(f) -> str:
    """A field's help text, with its default unless the text says it."""
    text = f.metadata["help"]
    if not (f.default is None or f.default is MISSING or "default" in text or isinstance(f.default, bool)):
        text += f" (default {','.join(f.default) if isinstance(f.default, tuple) else f.default})"
    return text.replace("%", "%%")  # argparse formats help with %


def _fleet_arguments(p: argparse.ArgumentParser) -> None:
    """Where a study runs: on every host of a Dask cluster (not a parameter of the study)."""
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


def build_parser(prog: str = "%bench"):
    """The ``%bench`` parser: IPython's ``MagicArgumentParser`` (a bad option raises instead of exiting)
    with the Study options and ``-h/--help``."""
    from IPython.core.magic_arguments import MagicArgumentParser

    p = MagicArgumentParser(prog=prog, formatter_class=argparse.HelpFormatter,
                            description="Benchmark startup, memory, disk and density of a workload across "
                                        "runtimes, or its performance under load.")
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    return add_arguments(p)


def study_kwargs(ns: argparse.Namespace) -> dict:
    """The keyword arguments of :class:`~kit.bench.Study` (:class:`StudyParams`) from parsed options:
    every field, as given or its default."""
    out = {}
    for f in fields(StudyParams):
        value, convert = getattr(ns, f.name, None), f.metadata["cli"].get("convert")
        if value is not None and convert is not None:
            value = convert(value)
        out[f.name] = f.default if value is None else value
    return out


def run_study(study, ns: argparse.Namespace) -> None:
    """Run ``study`` here, or once on every host when ``--hosts`` or ``--scheduler`` was given
    (:func:`kit.bench.fleet.cluster`: an SSHCluster, or a running Dask scheduler; TLS unless
    ``--insecure``)."""
    if not (ns.hosts or ns.scheduler):
        if ns.insecure or ns.tls_ca_file or ns.tls_cert or ns.tls_key:
            raise InvalidSpec("--insecure and --tls-* are for a fleet: give --hosts or --scheduler")
        study.run()
        return
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
    from IPython.core.error import UsageError

    parser = build_parser()
    try:
        ns = parser.parse_argstring(line)
    except UsageError as e:
        if "-h" in line.split() or "--help" in line.split():  # the help, even where the line is incomplete
            print(parser.format_help())
            return None
        raise InvalidSpec(f"bench: {e} (see %bench --help)") from None
    except ValueError as e:  # unbalanced quotes
        raise InvalidSpec(f"bench: cannot parse {line!r}: {e} (check your quotes)") from None
    if ns.help:
        print(parser.format_help())
        return None
    study = Study(**study_kwargs(ns))
    run_study(study, ns)
    if ns.out:
        study.save(ns.out)
    return study
