"""IPython magics: a thin layer over :mod:`kit.api`.

``%container run [options] IMAGE [CMD [ARG...]]``, as ``docker run``: everything
after IMAGE belongs to the command, untouched. Also ``ps``, ``logs``, ``exec``,
``stop``, ``rm``, ``images``, ``runtimes``, ``prune``. ``%%container [options]
IMAGE`` runs the cell as a /bin/sh script inside. ``%vm run`` is ``%container
run -r qemu``; ``%process run CMD...`` runs the bare-process baseline.

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

SUBCOMMANDS = ("run", "ps", "logs", "exec", "stop", "rm", "images", "runtimes", "prune")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become IPython UsageErrors (shown without a traceback)."""

    def error(self, message):
        raise UsageError(f"%{self.prog}: {message} (see %{self.prog.split()[0]} --help)")

    def exit(self, status=0, message=None):
        if message:
            raise UsageError(message)
        raise UsageError(self.format_help())


def _run_parser(prog: str, vm: bool = False) -> _Parser:
    p = _Parser(prog=prog, add_help=True, description="Run a command in a new isolated instance.")
    if not vm:
        p.add_argument("-r", "--runtime", help="process, runc, crun, runsc, lxc, docker, podman or qemu")
    p.add_argument("-d", "--detach", action="store_true", help="start in the background (a service)")
    p.add_argument("--name", help="instance name (default: kit-<random>)")
    p.add_argument("-m", "--memory", help="memory limit, e.g. 64m")
    p.add_argument("--cpus", help="CPU share, e.g. 1.5")
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE, repeatable")
    p.add_argument("-p", "--publish", action="append", default=[], help="HOSTPORT:PORT on 127.0.0.1, repeatable")
    p.add_argument("-w", "--workdir", help="working directory inside")
    p.add_argument("--hostname", help="hostname inside (default: the name)")
    p.add_argument("--timeout", type=float, help="kill a foreground run after this many seconds")
    p.add_argument("--read-only", action="store_true", help="read-only root filesystem")
    p.add_argument("--check", action="store_true", help="raise if the command exits non-zero")
    p.add_argument("--kernel", help="VM only: guest kernel image")
    p.add_argument("--machine", help="VM only: microvm or q35")
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
    """``%container``, ``%%container``, ``%vm`` and ``%process``."""

    runtime = Unicode("auto", help="default runtime for %container run ('auto': first available)").tag(config=True)
    timeout = Float(0.0, help="default timeout in seconds for foreground runs (0: none)").tag(config=True)
    stream = Bool(True, help="echo output into the cell as it arrives").tag(config=True)
    max_display_bytes = Int(1_000_000, help="stop echoing live output after this many bytes").tag(config=True)
    raise_on_error = Bool(False, help="raise when a command exits non-zero").tag(config=True)

    # -- entry points ----------------------------------------------------
    @no_var_expand
    @line_cell_magic
    def container(self, line, cell=None):
        """Run and manage isolated instances; ``%container --help`` lists the subcommands."""
        if cell is not None:
            return self._guard(self._run, _tokens(line), prog="%container", cell=cell)
        tokens = _tokens(line)
        if not tokens or tokens[0] in ("-h", "--help", "help"):
            return self._help()
        sub, rest = tokens[0], tokens[1:]
        if sub not in SUBCOMMANDS:
            raise UsageError(f"%container: unknown subcommand {sub!r}: use one of {', '.join(SUBCOMMANDS)}")
        if sub == "run":
            return self._guard(self._run, rest, prog="container run")
        return self._guard(getattr(self, f"_{sub}"), rest)

    @no_var_expand
    @line_magic
    def vm(self, line):
        """``%vm run [options] IMAGE CMD...``: the same command in a VM (QEMU); other subcommands as %container."""
        tokens = _tokens(line)
        if not tokens or tokens[0] in ("-h", "--help", "help"):
            return self._help("vm")
        if tokens[0] != "run":
            return self.container(line)
        return self._guard(self._run, tokens[1:], prog="vm run", runtime="qemu")

    @no_var_expand
    @line_magic
    def process(self, line):
        """``%process run [options] CMD...``: the bare-process baseline on the host."""
        tokens = _tokens(line)
        if not tokens or tokens[0] != "run":
            raise UsageError("usage: %process run [options] CMD [ARG...]")
        return self._guard(self._run, tokens[1:], prog="process run", runtime="process")

    @no_var_expand
    @line_magic
    def bench(self, line):
        """``%bench [options]``: run a benchmark study (same options as ``kit bench``)."""
        from . import bench

        return self._guard(bench.magic, line)

    # -- subcommands -----------------------------------------------------
    def _run(self, tokens, prog, cell=None, runtime=None):
        parser = _run_parser(prog, vm=runtime == "qemu")
        opts_tokens, rest = _split_run_args(parser, tokens)
        if "-h" in opts_tokens or "--help" in opts_tokens:
            raise UsageError(parser.format_help())
        opts = parser.parse_args(opts_tokens)
        rt = runtime or getattr(opts, "runtime", None) or (None if self.runtime == "auto" else self.runtime)
        if runtime == "process":  # %process run CMD: no image; %container run -r process IMAGE CMD ignores it
            image, command = None, rest
        else:
            if not rest:
                raise UsageError(f"%{prog}: no image given: e.g. %{prog} busybox echo hello")
            image, command = rest[0], rest[1:]
        if cell is not None:
            if command:
                raise UsageError("%%container takes no command: the cell body is the /bin/sh script")
            command = ["/bin/sh", "-c", cell]
        if not command:
            raise UsageError(f"%{prog}: no command given: put it after the image, e.g. %{prog} busybox echo hello")
        extra = {k: v for k, v in (("kernel", opts.kernel), ("machine", opts.machine)) if v}
        echo = _Echo(self.max_display_bytes) if self.stream and not opts.detach else None
        result = api.run(
            image, command, runtime=rt, detach=opts.detach, name=opts.name, memory=opts.memory, cpus=opts.cpus,
            env=opts.env, ports=opts.publish, workdir=opts.workdir, hostname=opts.hostname,
            timeout=opts.timeout or (self.timeout or None), read_only=opts.read_only, stream=echo,
            check=opts.check or self.raise_on_error, **extra,
        )
        result.streamed = echo is not None and echo.shown > 0
        return result

    def _ps(self, tokens):
        return api.ps()

    def _one_name(self, tokens, sub):
        if len(tokens) != 1:
            raise UsageError(f"usage: %container {sub} NAME")
        return tokens[0]

    def _logs(self, tokens):
        return api.logs(self._one_name(tokens, "logs"))

    def _exec(self, tokens):
        if len(tokens) < 2:
            raise UsageError("usage: %container exec NAME CMD [ARG...]")
        echo = _Echo(self.max_display_bytes) if self.stream else None
        result = api.exec_(tokens[0], tokens[1:], stream=echo)
        result.streamed = echo is not None and echo.shown > 0
        return result

    def _stop(self, tokens):
        p = _Parser(prog="container stop", description="Stop an instance: SIGTERM, then SIGKILL.")
        p.add_argument("-t", "--time", type=float, default=10.0,
                       help="seconds to wait after SIGTERM before SIGKILL (default 10, as docker stop)")
        p.add_argument("name")
        if not [t for t in tokens if not t.startswith("-")]:
            raise UsageError("usage: %container stop [-t SECONDS] NAME")
        opts = p.parse_args(tokens)
        if not 0 <= opts.time <= 3600:
            raise UsageError("%container stop: -t takes 0 to 3600 seconds")
        return api.stop(opts.name, timeout=opts.time)

    def _rm(self, tokens):
        force = any(t in ("-f", "--force") for t in tokens)
        names = [t for t in tokens if t not in ("-f", "--force")]
        if not names:
            raise UsageError("usage: %container rm [-f] NAME [NAME...]")
        for n in names:
            api.rm(n, force=force)
        print("removed " + ", ".join(names))

    def _images(self, tokens):
        return images.table()

    def _runtimes(self, tokens):
        return runtimes.available()

    def _prune(self, tokens):
        removed = api.prune()
        print(f"removed {len(removed)} instance(s)" + (": " + ", ".join(removed) if removed else ""))
        return removed

    def _help(self, which="container"):
        print(__doc__)
        return None

    def _guard(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except KitError as e:
            # KitErrors are the user's to fix: one line, no traceback.
            raise UsageError(f"{type(e).__name__}: {e}") from None


def load_ipython_extension(ipython):
    ipython.register_magics(ContainerMagics)
