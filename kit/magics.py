"""IPython magics: a thin layer over :mod:`kit.api`.

``%container run [options] IMAGE [CMD [ARG...]]``, as ``docker run``: everything
after IMAGE belongs to the command, untouched. Also ``ps``, ``logs``, ``exec``,
``stop``, ``rm``, ``images``, ``runtimes``, ``prune``. ``%%container [options]
IMAGE`` runs the cell as a /bin/sh script inside. ``%vm run`` is ``%container
run -r qemu``; ``%process run CMD...`` runs the bare-process baseline.
``%compose up|down|ps|logs|config`` drives compose files (:mod:`kit.compose`).

Every subcommand takes ``--help``; ``%container?`` shows them all. The options
are IPython's :mod:`~IPython.core.magic_arguments`: a bad one is a one-line
:class:`~IPython.core.error.UsageError`, shown without a traceback.
Defaults are traitlets: ``%config ContainerMagics.runtime = "runc"``.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import shlex
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import MagicArgumentParser, argument, kwds, magic_arguments
from traitlets import Bool, Float, Int, Unicode

from . import api, compose, images, networks, runtimes, volumes
from .errors import KitError

#: How the help reads: argparse's own ``usage: %container stop ...`` (IPython's default formatter
#: writes reStructuredText for docstrings, ``::`` and all).
_FORMAT = argparse.HelpFormatter


class Subcommand(NamedTuple):
    """One ``%container`` subcommand: its arguments as the overview shows them, and what it does."""

    args: str
    what: str


#: subcommand -> its arguments and what it does, in the order ``%container`` lists them
#: (``run``'s options depend on the magic; every other entry is added by :func:`_subcommand`).
SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand("[options] IMAGE [CMD [ARG...]]", "run a command in a new isolated instance"),
}


def _subcommand(sub: str, args: str, what: str) -> Callable:
    """Declare the method below as ``%container SUB``: its parser is IPython's magic_arguments, from
    the ``@argument`` decorators under this one, plus ``-h/--help``."""

    def declare(method):
        method = argument("-h", "--help", action="store_true", help="show this help")(method)
        method = kwds(usage=f"%(prog)s {args}".rstrip(), description=what[0].upper() + what[1:] + ".",
                      formatter_class=_FORMAT)(method)
        SUBCOMMANDS[sub] = Subcommand(args, what)
        return magic_arguments(name=f"%container {sub}")(method)

    return declare


def _usage_error(parser: argparse.ArgumentParser, message: str) -> UsageError:
    """One line: the (sub)command, what is wrong, its usage, where to read more."""
    return UsageError(f"{parser.prog}: {message}; {parser.format_usage().strip()} (see {parser.prog} --help)")


def _parse(parser: argparse.ArgumentParser, tokens: list[str]) -> argparse.Namespace | None:
    """``tokens`` parsed by ``parser``; None once ``--help`` has printed the help (the magic returns
    nothing). A bad token is :func:`_usage_error`'s one line; ``--help`` wins over a line that is
    incomplete without it (``%container stop --help``)."""
    try:
        opts = parser.parse_args(tokens)
    except UsageError as e:
        if not ({"-h", "--help"} & set(tokens)):
            raise _usage_error(parser, str(e)) from None
        opts = None
    if opts is None or opts.help:
        print(parser.format_help())
        return None
    return opts


@functools.lru_cache(maxsize=None)
def run_parser(prog: str, kind: str = "container") -> MagicArgumentParser:
    """The options of ``run``; ``kind`` is container, vm, process or cell (``%%container``).

    The magic's options come first; the first word that is not one of them is IMAGE (for a
    process, the command), and everything after it belongs to the command, its own options
    included (argparse's REMAINDER, as ``docker run`` splits its line).
    """
    image = kind != "process"
    args = {"process": "CMD [ARG...]", "cell": "IMAGE  (the cell is the /bin/sh script)"}.get(
        kind, "IMAGE [CMD [ARG...]]")
    what = {"vm": "in a new virtual machine (QEMU)", "process": "as a bare process on the host (the baseline)"}
    p = MagicArgumentParser(prog=prog, usage=f"%(prog)s [options] {args}", formatter_class=_FORMAT,
                            description="Run a command " + what.get(kind, "in a new isolated instance") + ".")
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    if kind in ("container", "cell"):
        p.add_argument("-r", "--runtime", help="process, runc, crun, runsc, lxc, docker, podman or qemu")
    p.add_argument("-d", "--detach", action="store_true", help="start in the background (a service)")
    p.add_argument("--name", help="instance name (default: kit-<random>)")
    p.add_argument("-m", "--memory", help="memory limit, e.g. 64m" + (" (a VM: its RAM, at least 96m)"
                                                                      if kind == "vm" else ""))
    p.add_argument("--cpus", help="CPU share, e.g. 1.5")
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE, repeatable")
    p.add_argument("-w", "--workdir", help="working directory inside")
    p.add_argument("--timeout", type=float, help="kill a foreground run after this many seconds")
    p.add_argument("--check", action="store_true", help="raise if the command exits non-zero")
    if image:
        _image_options(p, kind)
        p.add_argument("image", metavar="IMAGE", nargs="?", help="the image, e.g. busybox")
    p.add_argument("command", metavar="CMD", nargs=argparse.REMAINDER,
                   help="the command and its arguments (default: the image's own)" if kind != "process"
                   else "the command and its arguments")
    return p


def _image_options(p: argparse.ArgumentParser, kind: str) -> None:
    """The options of a run in an image (a container or a VM; not a bare process)."""
    p.add_argument("--start", default="cold", metavar="MODE",
                   help="cold (default), precreated (created ahead, started on demand) or snapshot "
                        "(restored from a template); a runtime refuses a mode it does not offer")
    p.add_argument("-p", "--publish", action="append", default=[], help="HOSTPORT:PORT on 127.0.0.1, repeatable")
    p.add_argument("--hostname", help="hostname inside (default: the name)")
    p.add_argument("--read-only", action="store_true", help="read-only root filesystem")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DEST[:ro]",
                   help="mount a host directory (absolute) or a named volume at DEST, repeatable")
    p.add_argument("--network", help="join the kit network NAME (made if it does not exist): members reach "
                                     "each other by name")
    p.add_argument("--expose", action="append", default=[], metavar="PORT",
                   help="VM only: a port the VM serves to its network's members, repeatable")
    if kind in ("container", "cell"):
        p.add_argument("--no-harden", action="store_true",
                       help="without the baseline hardening (seccomp filter, dropped capabilities, masked /proc "
                            "paths) that runc, crun and LXC apply by default, as Docker does")
    p.add_argument("--kernel", help="VM only: guest kernel: kit (the kit's own, the default once built), distro, "
                                    "or the path of a bzImage")
    p.add_argument("--machine", help="VM only: microvm or q35")


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as e:
        raise UsageError(f"cannot parse {line!r}: {e} (check your quotes)") from None


def _overview(magic: str = "container") -> str:
    """One line per subcommand: what ``%container`` (or ``%vm``) with no arguments prints."""
    lines = [f"%{magic} SUBCOMMAND ...: " + ("the same command in a virtual machine (QEMU); other subcommands "
                                             "as %container" if magic == "vm" else "run and manage isolated instances"), ""]
    rows = [(f"%{magic} {sub} {s.args}".rstrip(), s.what) for sub, s in SUBCOMMANDS.items()]
    rows.append(("%%container [options] IMAGE", "run the cell as a /bin/sh script inside"))
    rows.append((f"%{magic} SUBCOMMAND --help", "the options of one subcommand"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {left:<{width}}  {what}" for left, what in rows]
    return "\n".join(lines)


def _sub_parser(sub: str, magic: str = "container") -> argparse.ArgumentParser:
    """The parser of one subcommand (``run`` included)."""
    if sub == "run":
        return run_parser(f"%{magic} run", "vm" if magic == "vm" else "container")
    return getattr(ContainerMagics, f"_{sub}").parser


def _full_help(magic: str) -> str:
    """What ``%container?`` (``%vm?``, ``%process?``) shows: every subcommand with its options."""
    if magic == "process":
        return run_parser("%process run", "process").format_help()
    subs = ("run",) if magic == "vm" else tuple(SUBCOMMANDS)
    return "\n\n".join([_overview(magic)] + [_sub_parser(s, magic).format_help().strip() for s in subs])


def _bench_help() -> str:
    from .bench.options import build_parser

    return build_parser().format_help()


class Pruned(list):
    """The names ``%container prune`` removed; shown as one line saying so."""

    def __repr__(self) -> str:
        return f"removed {len(self)} instance(s)" + (": " + ", ".join(self) if self else "")

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))


class _Echo:
    """Writes streamed output into the cell as it comes, decoding UTF-8 across chunks."""

    def __init__(self, limit: int):
        self.limit = limit
        self.shown = 0
        self.decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in ("stdout", "stderr")}

    def __call__(self, label: str, chunk: bytes) -> None:
        if self.shown >= self.limit:
            return
        chunk = chunk[: self.limit - self.shown]
        self.shown += len(chunk)
        out = sys.stdout if label == "stdout" else sys.stderr
        out.write(self.decoders[label].decode(chunk))
        if self.shown >= self.limit:
            out.write(f"\n[kit: live output stopped after {self.limit} bytes; the result object has all of it]\n")
        out.flush()


def _guard(fn, *args, **kw):
    """Call ``fn``; a :class:`~kit.errors.KitError` is the user's to fix: one line, no traceback."""
    try:
        return fn(*args, **kw)
    except KitError as e:
        raise UsageError(f"{type(e).__name__}: {e}") from None


@magics_class
class ContainerMagics(Magics):
    """``%container``, ``%%container``, ``%vm``, ``%process``, ``%compose`` and ``%bench``."""

    runtime = Unicode("auto", help="default runtime for %container run ('auto': first available)").tag(config=True)
    timeout = Float(0.0, help="default timeout in seconds for foreground runs (0: none)").tag(config=True)
    stream = Bool(True, help="echo output into the cell as it arrives").tag(config=True)
    max_display_bytes = Int(1_000_000, help="stop echoing live output after this many bytes").tag(config=True)
    raise_on_error = Bool(False, help="raise when a command exits non-zero").tag(config=True)

    # -- entry points ----------------------------------------------------
    @no_var_expand
    @line_cell_magic
    def container(self, line, cell=None):
        """Run and manage isolated instances; ``%container`` alone lists the subcommands."""
        tokens = _tokens(line)
        if cell is not None:
            return _guard(self._run, tokens, "%%container", "cell", cell=cell)
        if not tokens or tokens[0] in ("-h", "--help", "help"):
            print(_overview())
            return None
        sub, rest = tokens[0], tokens[1:]
        if sub not in SUBCOMMANDS:
            raise UsageError(f"%container: unknown subcommand {sub!r}: use one of {', '.join(SUBCOMMANDS)}")
        if sub == "run":
            return _guard(self._run, rest, "%container run", "container")
        method = getattr(self, f"_{sub}")
        opts = _parse(method.parser, rest)
        return None if opts is None else _guard(method, opts)

    @no_var_expand
    @line_magic
    def vm(self, line):
        """``%vm run [options] IMAGE CMD...``: the same command in a VM (QEMU); other subcommands as %container."""
        tokens = _tokens(line)
        if not tokens or tokens[0] in ("-h", "--help", "help"):
            print(_overview("vm"))
            return None
        if tokens[0] != "run":
            return self.container(line)
        return _guard(self._run, tokens[1:], "%vm run", "vm")

    @no_var_expand
    @line_magic
    def process(self, line):
        """``%process run [options] CMD...``: the bare-process baseline on the host."""
        tokens = _tokens(line)
        if tokens and tokens[0] in ("-h", "--help", "help"):
            print(_full_help("process"))
            return None
        if not tokens or tokens[0] != "run":
            what = f"unknown subcommand {tokens[0]!r}" if tokens else "no subcommand"
            raise UsageError(f"%process: {what}; usage: %process run [options] CMD [ARG...] (see %process --help)")
        return _guard(self._run, tokens[1:], "%process run", "process")

    @no_var_expand
    @line_magic
    def bench(self, line):
        """``%bench [options] [WORKLOAD...]``: run a benchmark study (same options as ``kit bench``);
        load workloads too: ``%bench -r process,runc --seconds 2 cpu redis``."""
        from . import bench

        return _guard(bench.magic, line)

    @no_var_expand
    @magic_arguments(name="%compose")
    @kwds(usage="%(prog)s up|down|ps|logs|config [SERVICE] [-f FILE]... [-r RUNTIME] [-p PROJECT] "
                "[--profile NAME]... [--image PATTERN=KIT_IMAGE]... [--strict] [-v]",
          description="A compose file's services as kit instances (kit.compose).", formatter_class=_FORMAT)
    @argument("-h", "--help", action="store_true", help="show this help")
    @argument("action", metavar="ACTION", choices=["up", "down", "ps", "logs", "config"],
              help="up, down, ps, logs, or config (print the resolved model, as docker compose config)")
    @argument("service", metavar="SERVICE", nargs="?", help="logs: only this service")
    @argument("-f", "--file", action="append", help="the compose file; several are merged in order, as "
              "docker compose -f a -f b (default: compose.yaml, compose.yml, docker-compose.yaml or .yml)")
    @argument("-r", "--runtime", help="runtime of services without x-kit-runtime")
    @argument("-p", "--project", help="project name (default: the file's name:, else its directory)")
    @argument("--profile", action="append", dest="profiles", metavar="NAME", help="an active profile")
    @argument("--image", action="append", default=[], metavar="PATTERN=KIT_IMAGE",
              help="up: a kit image run instead of registry images matching PATTERN ('mariadb:*=debian-mariadb')")
    @argument("--strict", action="store_true", help="refuse keys that only tune operations too")
    @argument("-v", "--volumes", action="store_true", help="down: remove the named volumes too")
    @line_magic
    def compose(self, line):
        opts = _parse(self.compose.parser, _tokens(line))
        return None if opts is None else _guard(_compose, opts)

    # -- run: %container run, %%container, %vm run, %process run ---------
    def _run(self, tokens, prog, kind, cell=None):
        opts = _parse(run_parser(prog, kind), tokens)
        if opts is None:
            return None
        image, command = self._what_runs(opts, prog, kind, cell)
        fixed = runtimes.of_kind(kind) if kind in ("vm", "process") else None  # %vm, %process: their kind's
        rt = fixed or getattr(opts, "runtime", None) or (None if self.runtime == "auto" else self.runtime)
        options = {k: v for k, v in (("kernel", getattr(opts, "kernel", None)),
                                     ("machine", getattr(opts, "machine", None)),
                                     ("expose", getattr(opts, "expose", None))) if v}
        if kind != "process":
            options.update(ports=opts.publish, hostname=opts.hostname, read_only=opts.read_only,
                           network=opts.network, volumes=opts.volume, start=opts.start)
        echo = _Echo(self.max_display_bytes) if self.stream and not opts.detach else None
        result = api.run(
            image, command, runtime=rt, detach=opts.detach, name=opts.name, memory=opts.memory, cpus=opts.cpus,
            env=opts.env, workdir=opts.workdir, timeout=opts.timeout or (self.timeout or None),
            harden=not getattr(opts, "no_harden", False), stream=echo, check=opts.check or self.raise_on_error,
            **options)
        if opts.detach:  # the kit.Instance handle, shown as such (its repr and HTML table)
            return result
        result.streamed = echo is not None and echo.shown > 0
        return result

    @staticmethod
    def _what_runs(opts, prog: str, kind: str, cell: str | None) -> tuple[str | None, list[str]]:
        """The image and command of a run, refused with a one-line example when one is missing."""
        if kind == "process":  # no image: everything left is the command
            if not opts.command:
                raise UsageError(f"{prog}: no command given: {prog} [options] CMD [ARG...], e.g. {prog} echo hello")
            return None, opts.command
        if not opts.image:
            example = "busybox" if cell is not None else "busybox echo hello"
            raise UsageError(f"{prog}: no image given: e.g. {prog} {example}")
        if cell is not None:
            if opts.command:
                raise UsageError("%%container takes no command: the cell body is the /bin/sh script")
            return opts.image, ["/bin/sh", "-c", cell]
        # With an image and no command, the image's Entrypoint and Cmd run, as with docker run.
        return opts.image, opts.command

    # -- the other subcommands, in the order %container lists them -------
    @_subcommand("ps", "[--live]", "list this session's instances (--live: a live table with logs, stop, rm)")
    @argument("--live", action="store_true",
              help="a live table, refreshed every 1.5 s, with logs, stop and rm buttons per row")
    def _ps(self, opts):
        if opts.live:
            from . import widgets  # ipywidgets: loaded when a live table is asked for

            return widgets.instances()
        return api.ps()

    @_subcommand("logs", "NAME", "what a detached instance wrote so far")
    @argument("name", metavar="NAME")
    def _logs(self, opts):
        return api.logs(opts.name)

    @_subcommand("exec", "NAME CMD [ARG...]", "run a command inside a running instance")
    @argument("name", metavar="NAME", nargs="?", help="the instance")
    @argument("command", metavar="CMD", nargs=argparse.REMAINDER, help="the command and its arguments")
    def _exec(self, opts):
        if not opts.name or not opts.command:
            raise _usage_error(self._exec.parser, "give the instance's NAME and the command to run")
        echo = _Echo(self.max_display_bytes) if self.stream else None
        result = api.exec_(opts.name, opts.command, stream=echo)
        result.streamed = echo is not None and echo.shown > 0
        return result

    @_subcommand("stop", "[-t SECONDS] NAME", "stop an instance: SIGTERM, then SIGKILL")
    @argument("-t", "--time", type=float, default=10.0, metavar="SECONDS",
              help="seconds to wait after SIGTERM before SIGKILL (default 10, as docker stop)")
    @argument("name", metavar="NAME")
    def _stop(self, opts):
        if not 0 <= opts.time <= 3600:
            raise UsageError("%container stop: -t takes 0 to 3600 seconds")
        return api.stop(opts.name, timeout=opts.time)

    @_subcommand("rm", "[-f] NAME [NAME...]", "remove instances (-f: stop them first)")
    @argument("-f", "--force", action="store_true", help="stop running instances first")
    @argument("names", metavar="NAME", nargs="+")
    def _rm(self, opts):
        for n in opts.names:
            api.rm(n, force=opts.force)
        print("removed " + ", ".join(opts.names))

    @_subcommand("images", "", "the images stored here")
    def _images(self, opts):
        return images.table()

    @_subcommand("templates", "", "the stored VM templates (--start snapshot), with their size on disk")
    def _templates(self, opts):
        from .vm import templates  # kit.vm: loaded when a VM's templates are asked for

        return templates.table()

    @_subcommand("pull", "[--name NAME] [--via skopeo|docker] REF",
                 "bring an image from a registry into the kit's store")
    @argument("--name", help="the name in the kit's store (default: REF)")
    @argument("--via", choices=("skopeo", "docker"), help="default: skopeo if installed, else the daemon")
    @argument("ref", metavar="REF")
    def _pull(self, opts):
        return images.pull(opts.ref, name=opts.name, via=opts.via)

    @_subcommand("build", "[-f DOCKERFILE] [--build-arg K=V] -t TAG CONTEXT",
                 "build a Dockerfile with the local Docker daemon, into the kit's store")
    @argument("-t", "--tag", required=True, help="the image's name, e.g. myapp:1")
    @argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    @argument("--build-arg", action="append", default=[], metavar="K=V", help="an ARG value, repeatable")
    @argument("context", metavar="CONTEXT")
    def _build(self, opts):
        args = dict(a.partition("=")[::2] for a in opts.build_arg)
        return images.build(opts.context, tag=opts.tag, dockerfile=opts.file, buildargs=args)

    @_subcommand("runtimes", "", "every runtime, whether it works here, and why not")
    def _runtimes(self, opts):
        return runtimes.available()

    @_subcommand("prune", "[--templates]", "remove every instance of this session (and what dead sessions left)")
    @argument("--templates", action="store_true",
              help="also the stored VM templates no run is restoring from (shared by every session)")
    def _prune(self, opts):
        return Pruned(api.prune(templates=opts.templates))

    @_subcommand("network", "create|ls|inspect|rm [-f] [NAME]",
                 "kit networks: members reach each other by name (loopback only)")
    @argument("action", metavar="ACTION", choices=("create", "ls", "inspect", "rm"),
              help="create, ls, inspect or rm")
    @argument("name", metavar="NAME", nargs="?")
    @argument("-f", "--force", action="store_true", help="rm: remove its members first")
    def _network(self, opts):
        return _named(networks, "network", opts, force=opts.force)

    @_subcommand("volume", "create|ls|inspect|rm [NAME]",
                 "named volumes: data that outlives instances, in any runtime")
    @argument("action", metavar="ACTION", choices=("create", "ls", "inspect", "rm"),
              help="create, ls, inspect or rm")
    @argument("name", metavar="NAME", nargs="?")
    def _volume(self, opts):
        return _named(volumes, "volume", opts)


def _named(module, kind: str, opts, **rm_options):
    """``%container network|volume create|ls|inspect|rm NAME``: a named thing's lifecycle, through
    ``module``'s create/ls/inspect/rm (``rm_options``: what rm takes besides the name)."""
    if opts.action == "ls":
        return module.ls()
    if not opts.name:
        raise UsageError(f"%container {kind} {opts.action}: give the {kind}'s NAME")
    if opts.action == "rm":
        module.rm(opts.name, **{k: v for k, v in rm_options.items() if v})
        print(f"removed {kind} {opts.name}")
        return None
    return getattr(module, opts.action)(opts.name)


def _compose(opts):
    """``%compose ACTION``: :mod:`kit.compose` on the files and project the options name."""
    names = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")  # Compose's own order
    files = opts.file or [next((n for n in names if Path(n).is_file()), "docker-compose.yml")]
    bad = [item for item in opts.image if "=" not in item.strip("=")]
    if bad:
        raise UsageError(f"%compose: --image {bad[0]!r}: give PATTERN=KIT_IMAGE, e.g. --image 'mariadb:*=debian-mariadb'")
    if opts.action == "config":
        # Read here, so --strict refuses in config as it would at up (config() itself reads leniently).
        print(compose.config_text(compose.read(files, opts.project, profiles=opts.profiles, strict=opts.strict)),
              end="")
        return None
    if opts.action == "up":
        images = dict(item.split("=", 1) for item in opts.image)
        return compose.ps(compose.up(files, runtime=opts.runtime, project=opts.project, images=images,
                                     profiles=opts.profiles, strict=opts.strict))
    project = opts.project or compose.read(files).name
    if opts.action == "down":
        return Pruned(compose.down(project, volumes=opts.volumes))
    if opts.action == "ps":
        return compose.ps(project)
    print(compose.logs(project, opts.service))
    return None


# ``%container?`` and friends show the real usage, built from the parsers when asked
# (IPython's ``?`` calls an object's ``getdoc()``; building the %bench parser imports kit.bench).
ContainerMagics.container.getdoc = lambda: _full_help("container")
ContainerMagics.vm.getdoc = lambda: _full_help("vm")
ContainerMagics.process.getdoc = lambda: _full_help("process")
ContainerMagics.bench.getdoc = _bench_help


def load_ipython_extension(ipython):
    ipython.register_magics(ContainerMagics)
