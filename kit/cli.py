"""The ``kit`` command: one subcommand per module, dispatched from :data:`COMMANDS`.

    kit bench [options] [WORKLOAD...]     run a study (same options as kit.bench.Study)
    kit bench --hosts user@a,user@b ...   the same study on every host, over SSH (kit.bench.fleet; TLS)
    kit bench --scheduler tls://lab1:8786 --tls-ca-file ca.pem --tls-cert me.pem ...   a running cluster
    kit bench -r process,runc cpu redis   the same under load: throughput and latency against native
    kit report NOTEBOOK [-p NAME VALUE]   execute a notebook into a dated report (HTML, figures, data)
    kit compose config -f a.yml -f b.yml  the resolved model (as docker compose config); up runs in the foreground

To add a subcommand (e.g. ``report``), write ``_setup_NAME(parser)`` and
``_run_NAME(args) -> int`` and register them in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import KitError


def _setup_bench(p: argparse.ArgumentParser) -> None:
    from .bench.options import add_arguments

    add_arguments(p)
    p.add_argument("--no-figures", action="store_true", help="with --out: save no PNG figures")


def _run_bench(args: argparse.Namespace) -> int:
    import pandas as pd

    from .bench import Study
    from .bench.options import run_study, study_kwargs

    study = Study(**study_kwargs(args))
    run_study(study, args)
    host = ["host"] if "host" in study.df.columns else []
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        if host:
            print(study.status()[["host", "state", "cells", "planned", "reason"]].to_string(index=False))
            print()
        summ = study.summary("startup")
        if len(summ):
            main = summ[summ["metric"].isin(["launch_to_exit", "launch_to_ready", "teardown"])]
            print(main[host + ["runtime", "kind", "workload", "metric", "runs", "median", "iqr", "ci_low",
                               "ci_high", "outliers"]].to_string(index=False))
            rel = study.relative()
            if len(rel):
                print()
                print(rel[host + ["runtime", "workload", "median", "ratio", "ratio_low",
                                  "ratio_high"]].to_string(index=False))
        if "load" in study.parts and not host:  # under load: throughput against native, p99; the findings
            from .bench import loadpart

            print("\n" + loadpart.table(study.df, study.seed).to_string(index=False))
            print("\n" + study.findings()[["verdict", "finding"]].to_string(index=False))
    if study.meta.get("skipped"):
        print("\nnot measured: " + "; ".join(f"{k}: {v}" for k, v in study.meta["skipped"].items()))
    print(f"\n{len(study.df)} rows in {study.meta['elapsed_s']} s")
    if args.out:
        d = study.save(args.out, figures=not args.no_figures)
        print(f"saved to {d}")
    return 0


def _setup_report(p: argparse.ArgumentParser) -> None:
    from .report import add_arguments

    add_arguments(p)


def _run_report(args: argparse.Namespace) -> int:
    from .report import run_args

    return run_args(args)


def _setup_compose(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "ps", "logs", "config"),
                   help="up runs in the foreground (Ctrl-C downs the project, as docker compose up does); "
                        "config prints the resolved model")
    p.add_argument("files", nargs="*", metavar="FILE", help="compose files, as -f")
    p.add_argument("-f", "--file", action="append", help="compose file (several: merged in order); "
                   "default compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml")
    p.add_argument("-p", "--project-name", dest="project", help="project name")
    p.add_argument("-r", "--runtime", help="runtime of services without x-kit-runtime")
    p.add_argument("--profile", action="append", dest="profiles", help="an active profile")
    p.add_argument("--image", action="append", default=[], metavar="PATTERN=KIT_IMAGE",
                   help="a kit image run instead of registry images matching PATTERN")
    p.add_argument("--strict", action="store_true", help="refuse keys that only tune operations too")
    p.add_argument("-v", "--volumes", action="store_true", help="down: remove named volumes too")


def _run_compose(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from . import compose

    warnings.showwarning = lambda message, category, *_a, **_k: print(f"kit compose: warning: {message}",
                                                                      file=sys.stderr)

    names = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")  # Compose's own order
    files = (args.file or []) + args.files or [next((n for n in names if Path(n).is_file()), "docker-compose.yml")]
    if args.action == "config":
        print(compose.config_text(files, args.project, profiles=args.profiles), end="")
        return 0
    if args.action != "up":
        # A project's instances belong to the session of the process that started them (kit.Session).
        raise KitError(f"kit compose {args.action}: a project lives as long as its 'kit compose up' (Ctrl-C there "
                       f"downs it, -v removes its volumes); in Python or Jupyter use kit.compose.{args.action}")
    images = dict(item.split("=", 1) for item in args.image if "=" in item)
    stack = compose.up(files, runtime=args.runtime, project=args.project, images=images, profiles=args.profiles,
                       strict=args.strict)
    print(compose.ps(stack).to_string(index=False), flush=True)
    seen = 0
    try:
        while True:  # follow the logs, as docker compose up does
            text = compose.logs(stack)
            lines = text.splitlines()
            for line in lines[seen:]:
                print(line, flush=True)
            seen = len(lines)
            stack.stopping.wait(1.0)
    finally:
        compose.down(stack, volumes=args.volumes)


#: name -> (help, set up its parser, run it)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "bench": ("benchmark startup, memory, disk and density across runtimes", _setup_bench, _run_bench),
    "report": ("execute a notebook into a dated study report", _setup_report, _run_report),
    "compose": ("a compose file's services as kit instances: up, down, ps, logs, config", _setup_compose,
                _run_compose),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kit", description="Isolation Kit: containers and VMs, measured.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, setup, _run) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kit`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except KitError as e:
        print(f"kit {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
