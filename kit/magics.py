"""IPython magics: a thin layer over :mod:`kit.api`.

``%container run [options] IMAGE [CMD [ARG...]]``, as ``docker run``: everything
after IMAGE belongs to the command, untouched. Also ``ps``, ``logs``, ``exec``,
``stop``, ``rm``, ``images``, ``runtimes``, ``prune``. ``%%container [options]
IMAGE`` runs the cell as a /bin/sh script inside. ``%vm run`` is ``%container
run -r qemu``; ``%process run CMD...`` runs the bare-process baseline.

Every subcommand takes ``--help``; ``%container?`` shows them all.
Defaults are traitlets: ``%config ContainerMagics.runtime = "runc"``.
"""

from __future__ import annotations

import argparse
import codecs
import shlex
import sys

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Float, Int, Unicode

from . import api, images, runtimes
from .errors import KitError

#: subcommand -> (its arguments, what it does)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("[options] IMAGE [CMD [ARG...]]", "run a command in a new isolated instance"),
    "ps": ("[--live]", "list this session's instances (--live: a live table with logs, stop, rm)"),
    "logs": ("NAME", "what a detached instance wrote so far"),
    "exec": ("NAME CMD [ARG...]", "run a command inside a running instance"),
    "stop": ("[-t SECONDS] NAME", "stop an instance: SIGTERM, then SIGKILL"),
    "rm": ("[-f] NAME [NAME...]", "remove instances (-f: stop them first)"),
    "images": ("", "the images stored here"),
    "templates": ("", "the stored VM templates (--start snapshot), with their size on disk"),
    "pull": ("[--name NAME] [--via skopeo|docker] REF", "bring an image from a registry into the kit's store"),
    "build": ("[-f DOCKERFILE] [--build-arg K=V] -t TAG CONTEXT",
              "build a Dockerfile with the local Docker daemon, into the kit's store"),
    "runtimes": ("", "every runtime, whether it works here, and why not"),
    "prune": ("[--templates]", "remove every instance of this session (and what dead sessions left)"),
    "network": ("create|ls|inspect|rm [-f] [NAME]", "kit networks: members reach each other by name (loopback only)"),
    "volume": ("create|ls|inspect|rm [NAME]", "named volumes: data that outlives instances, in any runtime"),
}


class _HelpShown(Exception):
    """argparse has printed a help text: the magic returns nothing."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become IPython UsageErrors (shown without a traceback), and whose
    ``--help`` prints the help and returns instead of exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}; {self.format_usage().strip()} (see {self.prog} --help)")

    def exit(self, status=0, message=None):
        if message:
            raise UsageError(message.strip())
        raise _HelpShown()


def _run_parser(prog: str, kind: str = "container") -> _Parser:
    """The options of ``run``; ``kind`` is container, vm, process or cell (``%%container``)."""
    args = {"process": "CMD [ARG...]", "cell": "IMAGE  (the cell is the /bin/sh script)"}.get(
        kind, SUBCOMMANDS["run"][0].replace("[options] ", ""))
    what = {"vm": "in a new virtual machine (QEMU)", "process": "as a bare process on the host (the baseline)"}
    p = _Parser(prog=prog, usage=f"%(prog)s [options] {args}",
                description="Run a command " + what.get(kind, "in a new isolated instance") + ".")
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
    if kind != "process":
        p.add_argument("--start", default="cold", metavar="MODE",
                       help="cold (default), precreated (created ahead, started on demand) or snapshot "
                            "(restored from a template); a runtime refuses a mode it does not offer")
        p.add_argument("-p", "--publish", action="append", default=[],
                       help="HOSTPORT:PORT on 127.0.0.1, repeatable")
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
    if kind != "process":
        p.add_argument("--kernel", help="VM only: guest kernel image")
        p.add_argument("--machine", help="VM only: microvm or q35")
    return p


def _sub_parser(sub: str, magic: str = "container") -> _Parser:
    """The parser of one subcommand (``run`` included), for its options and its ``--help``."""
    if sub == "run":
        return _run_parser(f"%{magic} run", "vm" if magic == "vm" else "container")
    args, what = SUBCOMMANDS[sub]
    p = _Parser(prog=f"%{magic} {sub}", usage=f"%(prog)s {args}".rstrip(), description=what[0].upper() + what[1:] + ".")
    if sub == "stop":
        p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS",
                       help="seconds to wait after SIGTERM before SIGKILL (default 10, as docker stop)")
    if sub == "rm":
        p.add_argument("-f", "--force", action="store_true", help="stop running instances first")
    if sub == "prune":
        p.add_argument("--templates", action="store_true",
                       help="also the stored VM templates no run is restoring from (shared by every session)")
    if sub == "ps":
        p.add_argument("--live", action="store_true",
                       help="a live table, refreshed every 1.5 s, with logs, stop and rm buttons per row")
    if sub == "network":
        p.add_argument("action", choices=("create", "ls", "inspect", "rm"))
        p.add_argument("name", metavar="NAME", nargs="?")
        p.add_argument("-f", "--force", action="store_true", help="rm: remove its members first")
    if sub == "volume":
        p.add_argument("action", choices=("create", "ls", "inspect", "rm"))
        p.add_argument("name", metavar="NAME", nargs="?")
    if sub == "pull":
        p.add_argument("--name", help="the name in the kit's store (default: REF)")
        p.add_argument("--via", choices=("skopeo", "docker"), help="default: skopeo if installed, else the daemon")
        p.add_argument("ref", metavar="REF")
    if sub == "build":
        p.add_argument("-t", "--tag", required=True, help="the image's name, e.g. myapp:1")
        p.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
        p.add_argument("--build-arg", action="append", default=[], metavar="K=V", help="an ARG value, repeatable")
        p.add_argument("context", metavar="CONTEXT")
    if sub in ("logs", "stop"):
        p.add_argument("name", metavar="NAME")
    if sub == "rm":
        p.add_argument("names", metavar="NAME", nargs="+")
    return p


def _split_run_args(parser: _Parser, tokens: list[str]) -> tuple[list[str], list[str]]:
    """Split ``[options] IMAGE CMD...`` at IMAGE, so the command's own options stay its own."""
    takes_value = {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            return tokens[:i], tokens[i + 1:]
        if not tok.startswith("-") or tok == "-":
            return tokens[:i], tokens[i:]
        if tok in takes_value:
            i += 2
        else:
            i += 1
    return tokens, []


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as e:
        raise UsageError(f"cannot parse {line!r}: {e} (check your quotes)") from None


def _overview(magic: str = "container") -> str:
    """One line per subcommand: what ``%container`` (or ``%vm``) with no arguments prints."""
    lines = [f"%{magic} SUBCOMMAND ...: " + ("the same command in a virtual machine (QEMU); other subcommands "
                                             "as %container" if magic == "vm" else "run and manage isolated instances"), ""]
    rows = [(f"%{magic} {sub} {args}".rstrip(), what) for sub, (args, what) in SUBCOMMANDS.items()]
    rows.append(("%%container [options] IMAGE", "run the cell as a /bin/sh script inside"))
    rows.append((f"%{magic} SUBCOMMAND --help", "the options of one subcommand"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {left:<{width}}  {what}" for left, what in rows]
    return "\n".join(lines)


def _full_help(magic: str) -> str:
    """What ``%container?`` (``%vm?``, ``%process?``) shows: every subcommand with its options."""
    if magic == "process":
        return _run_parser("%process run", "process").format_help()
    subs = ("run",) if magic == "vm" else tuple(SUBCOMMANDS)
    return "\n\n".join([_overview(magic)] + [_sub_parser(s, magic).format_help().strip() for s in subs])


def _bench_help() -> str:
    from .bench.options import build_parser

    return build_parser().format_help()


def _named(module, kind: str, tokens: list[str]):
    """``%container network|volume create|ls|inspect|rm [-f] NAME``: a named thing's lifecycle,
    through ``module``'s create/ls/inspect/rm (``-f``: rm's force, where the subcommand has it)."""
    opts = _sub_parser(kind).parse_args(tokens)
    if opts.action == "ls":
        return module.ls()
    if not opts.name:
        raise UsageError(f"%container {kind} {opts.action}: give the {kind}'s NAME")
    if opts.action == "rm":
        module.rm(opts.name, **({"force": True} if getattr(opts, "force", False) else {}))
        print(f"removed {kind} {opts.name}")
        return None
    return getattr(module, opts.action)(opts.name)


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


@magics_class
class ContainerMagics(Magics):
    """``%container``, ``%%container``, ``%vm``, ``%process`` and ``%bench``."""

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
            return self._guard(self._run, tokens, "%%container", "cell", cell=cell)
        if not tokens or tokens[0] in ("-h", "--help", "help"):
            print(_overview())
            return None
        sub, rest = tokens[0], tokens[1:]
        if sub not in SUBCOMMANDS:
            raise UsageError(f"%container: unknown subcommand {sub!r}: use one of {', '.join(SUBCOMMANDS)}")
        if sub == "run":
            return self._guard(self._run, rest, "%container run", "container")
        return self._guard(getattr(self, f"_{sub}"), rest)

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
        return self._guard(self._run, tokens[1:], "%vm run", "vm")

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
        return self._guard(self._run, tokens[1:], "%process run", "process")

    @no_var_expand
    @line_magic
    def bench(self, line):
        """``%bench [options] [WORKLOAD...]``: run a benchmark study (same options as ``kit bench``);
        load workloads too: ``%bench -r process,runc --seconds 2 cpu redis``."""
        from . import bench

        return self._guard(bench.magic, line)

    @no_var_expand
    @line_magic
    def compose(self, line):
        """``%compose up|down|ps|logs -f FILE [-r RUNTIME] [-p PROJECT] [-v]``: a compose file (kit.compose)."""
        return self._guard(_compose, _tokens(line))

    # -- subcommands -----------------------------------------------------
    def _run(self, tokens, prog, kind, cell=None):
        parser = _run_parser(prog, kind)
        opts_tokens, rest = _split_run_args(parser, tokens)
        opts = parser.parse_args(opts_tokens)
        fixed = runtimes.of_kind(kind) if kind in ("vm", "process") else None  # %vm, %process: their kind's
        rt = fixed or opts.runtime or (None if self.runtime == "auto" else self.runtime)
        if kind == "process":  # no image: everything left is the command
            image, command = None, rest
            if not command:
                raise UsageError(f"{prog}: no command given: {prog} [options] CMD [ARG...], e.g. {prog} echo hello")
        else:
            if not rest:
                example = "busybox" if cell is not None else "busybox echo hello"
                raise UsageError(f"{prog}: no image given: e.g. {prog} {example}")
            image, command = rest[0], rest[1:]
        if cell is not None:
            if command:
                raise UsageError("%%container takes no command: the cell body is the /bin/sh script")
            command = ["/bin/sh", "-c", cell]
        if not command and image is None:
            raise UsageError(f"{prog}: no command given: put it after the image, e.g. {prog} busybox echo hello")
        # With an image and no command, the image's Entrypoint and Cmd run, as with docker run.
        extra = {k: v for k, v in (("kernel", getattr(opts, "kernel", None)),
                                   ("machine", getattr(opts, "machine", None)),
                                   ("expose", getattr(opts, "expose", None))) if v}
        echo = _Echo(self.max_display_bytes) if self.stream and not opts.detach else None
        result = api.run(
            image, command, runtime=rt, detach=opts.detach, name=opts.name, memory=opts.memory, cpus=opts.cpus,
            env=opts.env, ports=getattr(opts, "publish", []), workdir=opts.workdir,
            hostname=getattr(opts, "hostname", None), timeout=opts.timeout or (self.timeout or None),
            read_only=getattr(opts, "read_only", False), network=getattr(opts, "network", None),
            volumes=getattr(opts, "volume", []), harden=not getattr(opts, "no_harden", False), stream=echo,
            check=opts.check or self.raise_on_error, start=getattr(opts, "start", "cold"), **extra,
        )
        if opts.detach:  # the kit.Instance handle: shown as its record, 'running (detached)'
            result = result.result()
        result.streamed = echo is not None and echo.shown > 0
        return result

    def _ps(self, tokens):
        if _sub_parser("ps").parse_args(tokens).live:
            from . import widgets

            return widgets.instances()
        return api.ps()

    def _logs(self, tokens):
        return api.logs(_sub_parser("logs").parse_args(tokens).name)

    def _exec(self, tokens):
        parser = _sub_parser("exec")
        opts_tokens, rest = _split_run_args(parser, tokens)
        parser.parse_args(opts_tokens)  # --help, or an option exec does not have
        if len(rest) < 2:
            parser.error("give the instance's NAME and the command to run")
        echo = _Echo(self.max_display_bytes) if self.stream else None
        result = api.exec_(rest[0], rest[1:], stream=echo)
        result.streamed = echo is not None and echo.shown > 0
        return result

    def _stop(self, tokens):
        opts = _sub_parser("stop").parse_args(tokens)
        if not 0 <= opts.time <= 3600:
            raise UsageError("%container stop: -t takes 0 to 3600 seconds")
        return api.stop(opts.name, timeout=opts.time)

    def _rm(self, tokens):
        opts = _sub_parser("rm").parse_args(tokens)
        for n in opts.names:
            api.rm(n, force=opts.force)
        print("removed " + ", ".join(opts.names))

    def _images(self, tokens):
        _sub_parser("images").parse_args(tokens)
        return images.table()

    def _templates(self, tokens):
        _sub_parser("templates").parse_args(tokens)
        from .vm import templates

        return templates.table()

    def _pull(self, tokens):
        opts = _sub_parser("pull").parse_args(tokens)
        return images.pull(opts.ref, name=opts.name, via=opts.via)

    def _build(self, tokens):
        opts = _sub_parser("build").parse_args(tokens)
        args = dict(a.partition("=")[::2] for a in opts.build_arg)
        return images.build(opts.context, tag=opts.tag, dockerfile=opts.file, buildargs=args)

    def _runtimes(self, tokens):
        _sub_parser("runtimes").parse_args(tokens)
        return runtimes.available()

    def _network(self, tokens):
        from . import networks

        return _named(networks, "network", tokens)

    def _volume(self, tokens):
        from . import volumes

        return _named(volumes, "volume", tokens)

    def _prune(self, tokens):
        opts = _sub_parser("prune").parse_args(tokens)
        return Pruned(api.prune(templates=opts.templates))

    def _guard(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except _HelpShown:
            return None
        except KitError as e:
            # KitErrors are the user's to fix: one line, no traceback.
            raise UsageError(f"{type(e).__name__}: {e}") from None


def _compose_parser() -> _Parser:
    p = _Parser(prog="%compose", description="a compose file's services as kit instances (kit.compose)")
    p.add_argument("action", choices=["up", "down", "ps", "logs"])
    p.add_argument("service", nargs="?", help="logs: only this service")
    p.add_argument("-f", "--file", default="docker-compose.yml", help="the compose file")
    p.add_argument("-r", "--runtime", help="runtime of services without x-kit-runtime")
    p.add_argument("-p", "--project", help="project name (default: the file's name:, else its directory)")
    p.add_argument("-v", "--volumes", action="store_true", help="down: remove the named volumes too")
    return p


def _compose(tokens):
    from . import compose

    opts = _compose_parser().parse_args(tokens)
    project = opts.project or compose.read(opts.file).name
    if opts.action == "up":
        return compose.ps(compose.up(opts.file, runtime=opts.runtime, project=project))
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
ContainerMagics.compose.getdoc = lambda: _compose_parser().format_help()


def load_ipython_extension(ipython):
    ipython.register_magics(ContainerMagics)
