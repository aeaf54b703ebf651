"""Kit's overhead over the plain command line a user would otherwise run, for `echo hello` (issue 9).

The baseline is the tool itself on a *plain* set-up: the image's rootfs directory as it is
(no overlay), a minimal config (`runc spec`'s, or the two LXC lines this machine needs), no
kit-owned cgroup:

- process: ``/bin/echo hello``;
- runc / crun / runsc: ``<binary> --root TMP run --bundle B ID`` (``runsc --platform=ptrace
  --network=none``), B from ``runc spec`` with the image's rootfs dir, read-only;
- lxc: ``lxc-execute -f CONF`` with ``lxc.rootfs.path = dir:ROOTFS`` and ``lxc.net.0.type = empty``;
- docker: ``docker run --rm --network none IMAGE echo hello``.

Kit is timed as the user sees it: the wall time of ``kit.run(...)``, default options (a
writable overlay over the image), with ``read_only=True``, and read-only with ``harden=False``
(no seccomp filter or extra masked paths: what ``runc spec`` gives; for LXC, the image's rootfs
itself without CAP_SYS_ADMIN, see kit.runtimes.lxc.shares_image), and writable with
``harden=False``. Teardown after a foreground
run happens off the caller's path; it is timed apart (``wait_for_teardown`` after the call)
and never overlaps the next run. Like hyperfine: warmup rounds, then every variant once per
round in a shuffled order (drift and the neighbours' load hit all alike), medians and IQR.

Where kit's milliseconds go, from each run's phases (``requested``/``launched``/``exited``)
and the runtime's own step timers (``info["prepare_ms"]``):

- ``api``: ``kit.run`` up to ``requested`` (spec, image and command checks, state dir);
- ``cgroup``, ``overlay``, ``bundle``/``config``, ``forwarder``...: the runtime's preparation steps;
- ``prepare_rest``: the rest of ``requested`` -> ``launched``;
- ``runtime``: ``launched`` -> ``exited``, the runtime's own process (compare with the plain CLI);
- ``collect``: ``exited`` -> return (output, result);
- ``teardown``: off the path, shown for information.

Target: kit's median within max(5 %, 3 ms) of the plain median, with the plain CLI's own
settings (``kit_ro_soft``). ``paired_ms`` is the median of the per-round differences (kit minus
plain in the same round), which the neighbours' drift moves less than a difference of medians.

The defaults' own cost, each as its own row (``defaults`` table): what kit.run's defaults add to
the like-for-like run, as the median per-round difference from ``kit_ro_soft``: the writable
overlay (``kit_soft``), the hardening (seccomp filter, masked paths, Docker's capabilities:
``kit_ro``) and both (``kit``), with the phases the milliseconds land in (the kit's preparation
steps, the runtime's own process, the teardown off the path).

    .venv/bin/python benchmarks/bench_overhead.py [--runs 20] [--runtimes runc,lxc]

Writes benchmarks/results/overhead.csv (every run) and overhead.md (the tables).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import kit
from kit.bench import storage

HERE = Path(__file__).resolve().parent
CMD = ["echo", "hello"]
#: kit_ro_soft: read-only and without the default hardening (seccomp filter, masked paths), which a
#: plain ``runc spec`` container does not have either: like for like with the plain baseline.
#: kit_soft: the writable overlay alone, so each default's cost is a row of its own (DEFAULTS).
VARIANTS = {"plain": None, "kit": {}, "kit_ro": {"read_only": True},
            "kit_ro_soft": {"read_only": True, "harden": False}, "kit_soft": {"harden": False}}
#: What each of kit.run's defaults adds: (name, the variant with it) against kit_ro_soft.
DEFAULTS = (("writable overlay", "kit_soft"), ("hardening (seccomp, masked paths, capabilities)", "kit_ro"),
            ("both (kit.run's defaults)", "kit"))
LIKE_FOR_LIKE = "kit_ro_soft"
#: The runtimes' preparation step timers (``info["prepare_ms"]``), in the order they run.
STEPS = ("cgroup", "rootfs", "netns", "config", "forwarder")


def _plain_bundle(tmp: Path, rootfs: Path, label: str) -> Path:
    """``runc spec``'s config, unchanged but for the command and the image's rootfs dir."""
    bundle = tmp / f"bundle-{label}"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = CMD
    cfg["root"] = {"path": str(rootfs), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def raw_commands(tmp: Path) -> dict[str, callable]:
    """runtime -> a function returning the argv of one plain run (fresh ids each time)."""
    img = kit.images.get("busybox")
    counter = iter(range(10**9))
    out = {"process": lambda: ["/bin/echo", "hello"]}
    for binary in ("runc", "crun"):
        if kit.runtimes.get(binary).availability().available:
            b = _plain_bundle(tmp, img.rootfs, binary)
            root = tmp / f"{binary}-root"
            out[binary] = (lambda b=b, root=root, binary=binary:
                           [binary, "--root", str(root), "run", "--bundle", str(b), f"raw{next(counter)}"])
    if kit.runtimes.get("runsc").availability().available:
        b = _plain_bundle(tmp, img.rootfs, "runsc")
        root = tmp / "runsc-root"
        out["runsc"] = lambda: ["runsc", "--root", str(root), "--platform=ptrace", "--network=none",
                                "run", "--bundle", str(b), f"raw{next(counter)}"]
    if kit.runtimes.get("lxc").availability().available:
        lxcpath = tmp / "lxc"
        lxcpath.mkdir()
        conf = tmp / "lxc.conf"
        conf.write_text(f"lxc.rootfs.path = dir:{img.rootfs}\nlxc.net.0.type = empty\n")
        out["lxc"] = lambda: ["lxc-execute", "-n", f"raw{next(counter)}", "-P", str(lxcpath), "-f", str(conf),
                              "--", *CMD]
    if kit.runtimes.get("docker").availability().available:
        # Make sure the daemon has the kit's busybox image, and use the same image by hand.
        from kit.images.engine import engine_ref

        kit.run("busybox", ["true"], runtime="docker")
        tag = engine_ref(img)
        out["docker"] = lambda: ["docker", "run", "--rm", "--network", "none", tag, *CMD]
    return out


def cleanup(tmp: Path) -> None:
    """Delete what the raw commands left (runc/crun/runsc state under ``tmp``), then ``tmp``."""
    for binary in ("runc", "crun", "runsc"):
        root = tmp / f"{binary}-root"
        if root.exists():
            for cid in subprocess.run([binary, "--root", str(root), "list", "-q"], capture_output=True,
                                      text=True).stdout.split():
                subprocess.run([binary, "--root", str(root), "delete", "--force", cid], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _cpu_ms() -> float:
    """CPU time of this process and of its waited-for children (the runtime's CLI and the
    container's processes it reaped), in ms: unlike wall time, hardly moved by the neighbours' load."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) * 1e3


def plain_once(argv: list[str]) -> dict:
    c0, t0 = _cpu_ms(), time.perf_counter()
    p = subprocess.run(argv, capture_output=True)
    return {"ms": (time.perf_counter() - t0) * 1e3, "cpu_ms": _cpu_ms() - c0,
            "ok": p.returncode == 0 and p.stdout == b"hello\n"}


def kit_once(rt: str, options: dict) -> dict:
    """One kit.run, its wall time and where it went (milliseconds)."""
    t_call = time.time()
    c0, t0 = _cpu_ms(), time.perf_counter()
    r = kit.run("busybox", CMD, runtime=rt, **options)
    wall = (time.perf_counter() - t0) * 1e3
    cpu = _cpu_ms() - c0
    t_back = t_call + wall / 1e3
    t1 = time.perf_counter()
    kit.api.wait_for_teardown()  # off the caller's path; waited for here so runs never overlap
    row = {"ms": wall, "cpu_ms": cpu, "ok": r.exit_code == 0 and r.stdout == "hello\n",
           "teardown": (time.perf_counter() - t1) * 1e3}
    ph = r.phases
    req, launched, exited = ph.get("requested", t_call), ph.get("launched", t_call), ph.get("exited", t_back)
    steps = {f"step_{k}": v for k, v in (r.info.get("prepare_ms") or {}).items()}
    row.update(steps)
    row["api"] = (req - t_call) * 1e3
    row["prepare_rest"] = (launched - req) * 1e3 - sum(steps.values())
    row["runtime_process"] = (exited - launched) * 1e3
    row["collect"] = (t_back - exited) * 1e3
    return row


def measure(raws: dict, runtimes: list[str], runs: int, warmup: int, seed: int) -> pd.DataFrame:
    rows = []
    rng = random.Random(seed)
    jobs = [(rt, v) for rt in runtimes for v in VARIANTS]
    for rnd in range(warmup + runs):
        rng.shuffle(jobs)
        for rt, variant in jobs:
            opts = VARIANTS[variant]
            row = plain_once(raws[rt]()) if opts is None else kit_once(rt, opts)
            rows.append({"runtime": rt, "variant": variant, "round": rnd, "warmup": rnd < warmup, **row})
        print(f"round {rnd + 1}/{warmup + runs}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return pd.DataFrame(rows)


def _q(s: pd.Series, q: float) -> float:
    return float(s.quantile(q))


def paired(g: pd.DataFrame, variant: str, against: str, col: str = "ms") -> pd.Series:
    """Per round, ``variant``'s ``col`` minus ``against``'s (the runs of one round share the
    machine's state of that moment, so the difference drifts less than either figure)."""
    wide = g.pivot_table(index="round", columns="variant", values=col, aggfunc="first")
    if variant not in wide or against not in wide:
        return pd.Series(dtype=float)
    return (wide[variant] - wide[against]).dropna()


def _prepare(k: pd.DataFrame) -> pd.Series:
    """The kit's preparation per run: its step timers and the rest of requested -> launched."""
    steps = [c for c in k.columns if c.startswith("step_")]
    return k[steps].fillna(0).sum(axis=1) + k.prepare_rest


def defaults_cost(df: pd.DataFrame) -> pd.DataFrame:
    """What each of kit.run's defaults adds to the like-for-like run (:data:`DEFAULTS`), per runtime:
    the median per-round difference in wall and CPU time, and the phases it lands in (medians'
    differences: the kit's preparation, the runtime's own process, the teardown off the path)."""
    m = df[~df.warmup]
    rows = []
    for rt, g in m.groupby("runtime", sort=True):
        if rt == "process":  # a bare process has neither an overlay nor a filter
            continue
        base = g[g.variant == LIKE_FOR_LIKE]
        for name, variant in DEFAULTS:
            k = g[g.variant == variant]
            d = paired(g, variant, LIKE_FOR_LIKE)
            if k.empty or d.empty:
                continue
            rows.append({
                "runtime": rt, "default": name, "kit": variant, "against": LIKE_FOR_LIKE,
                "extra_ms": round(d.median(), 2), "extra_iqr": round(_q(d, .75) - _q(d, .25), 2),
                "extra_cpu_ms": round(paired(g, variant, LIKE_FOR_LIKE, "cpu_ms").median(), 2),
                "in_prepare": round(_prepare(k).median() - _prepare(base).median(), 2),
                "in_runtime_process": round(k.runtime_process.median() - base.runtime_process.median(), 2),
                "in_teardown_off_path": round(k.teardown.median() - base.teardown.median(), 2),
                "rounds": len(d),
            })
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(overhead table per runtime and kit variant, breakdown of kit's medians in ms)."""
    m = df[~df.warmup]
    over, parts = [], []
    for rt, g in m.groupby("runtime", sort=True):
        plain = g[g.variant == "plain"].ms
        base = plain.median()
        for variant in (v for v in VARIANTS if VARIANTS[v] is not None):
            k = g[g.variant == variant]
            med = k.ms.median()
            over.append({
                "runtime": rt, "kit": variant,
                "plain_ms": round(base, 2), "plain_iqr": round(_q(plain, .75) - _q(plain, .25), 2),
                "kit_ms": round(med, 2), "kit_iqr": round(_q(k.ms, .75) - _q(k.ms, .25), 2),
                "overhead_ms": round(med - base, 2), "overhead_pct": round((med / base - 1) * 100, 1),
                "paired_ms": round(paired(g, variant, "plain").median(), 2),
                "target_ms": round(max(0.05 * base, 3.0), 2), "within_target": bool(med - base <= max(0.05 * base, 3.0)),
                "plain_cpu_ms": round(g[g.variant == "plain"].cpu_ms.median(), 2),
                "kit_cpu_ms": round(k.cpu_ms.median(), 2),
                "failed_runs": int((~g[g.variant.isin(["plain", variant])].ok).sum()),
            })
            part = {"runtime": rt, "kit": variant, "api": k.api.median()}
            part.update({s: k[f"step_{s}"].median() if f"step_{s}" in k else None for s in STEPS})
            part.update({"prepare_rest": k.prepare_rest.median(), "runtime_process": k.runtime_process.median(),
                         "collect": k.collect.median(), "sum": None, "kit_ms": med, "plain_ms": base,
                         "teardown_off_path": k.teardown.median()})
            part["sum"] = sum(v for key, v in part.items()
                              if key not in ("runtime", "kit", "sum", "kit_ms", "plain_ms", "teardown_off_path")
                              and v is not None and v == v)
            parts.append(part)
    return pd.DataFrame(over), pd.DataFrame(parts).round(2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runtimes", default="", help="comma-separated subset (default: every available one)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"), help="directory for overhead.csv and overhead.md")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kit-overhead-"))
    try:
        raws = raw_commands(tmp)
        wanted = [r for r in (args.runtimes.split(",") if args.runtimes else raws) if r in raws]
        df = measure(raws, wanted, args.runs, args.warmup, args.seed)
    finally:
        cleanup(tmp)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "overhead.csv", index=False)
    over, parts = summarize(df)
    text = (f"# kit.run against the plain command line: `echo hello`, {args.runs} interleaved runs "
            f"(+{args.warmup} warmup), medians in ms\n\n"
            "Plain: the runtime's own CLI on the image's rootfs directory with a minimal config. "
            "kit: `kit.run(...)` wall time with default options; kit_ro: with `read_only=True`; kit_ro_soft: "
            "read-only and `harden=False` (no seccomp filter, as in `runc spec`; for LXC the image's rootfs "
            "itself, without CAP_SYS_ADMIN); kit_soft: writable and `harden=False`. "
            "Target: overhead <= max(5 %, 3 ms); paired_ms: the median of the per-round differences "
            "kit - plain. plain_cpu_ms/kit_cpu_ms: CPU time of the caller and "
            "its reaped children (less moved by other load than wall time; docker's work is in the "
            "daemon and not counted).\n\n"
            + over.to_markdown(index=False) + "\n\n"
            "## Where kit's milliseconds go (medians; `sum` adds the parts, so it is close to, "
            "not equal to, the median wall time)\n\n"
            "api: kit.run before the runtime starts; cgroup/overlay/bundle/...: the runtime's "
            "preparation steps; prepare_rest: the rest of requested->launched; runtime_process: "
            "launched->exited (the runtime's own process, compare with plain_ms); collect: exit to "
            "return; teardown_off_path: after the result, not in kit_ms.\n\n"
            + parts.to_markdown(index=False, missingval="-") + "\n\n"
            "## What kit.run's defaults cost, each apart\n\n"
            f"Against {LIKE_FOR_LIKE} (the plain CLI's own settings), per round: extra_ms / extra_cpu_ms, "
            "the median per-round difference in wall / CPU time; in_prepare, in_runtime_process, "
            "in_teardown_off_path: the difference of the medians of those phases (the kit's preparation "
            "steps; launched->exited; the removal after the result).\n\n"
            + defaults_cost(df).to_markdown(index=False) + "\n")
    (out / "overhead.md").write_text(text)
    storage.record(out, __file__, ["overhead.csv", "overhead.md"])  # the commit and definitions measured under
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
