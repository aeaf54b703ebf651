"""Kit's overhead over each runtime's own command line, for `echo hello` (issue 2).

For every runtime available here, in one run, interleaved in a shuffled order
each round: the hand-written command a user would type (`runc run`,
`lxc-execute`, `runsc run`, `docker run --rm`, a bare exec) against `kit.run`
of the same image and command. Both sides include their own set-up and
teardown. Target: kit's median within 5 % or 3 ms (whichever is larger) of the
raw median.

    .venv/bin/python benchmarks/bench_overhead.py [--runs 20] [--runtimes runc,lxc]

Writes benchmarks/results/overhead.csv (every run) and overhead.md (the table).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import kit

HERE = Path(__file__).resolve().parent
CMD = ["echo", "hello"]


def _runc_bundle(tmp: Path, rootfs: Path, binary: str, label: str) -> Path:
    bundle = tmp / f"bundle-{label}"
    bundle.mkdir()
    subprocess.run([binary, "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = CMD
    cfg["root"] = {"path": str(rootfs), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def raw_commands(tmp: Path) -> dict[str, callable]:
    """runtime -> a function returning the argv of one raw run (fresh ids each time)."""
    img = kit.images.get("busybox")
    counter = iter(range(10**9))
    out = {"process": lambda: ["/bin/echo", "hello"]}
    for binary in ("runc", "crun"):
        if kit.runtimes.get(binary).availability().available:
            b = _runc_bundle(tmp, img.rootfs, binary, binary)
            root = tmp / f"{binary}-root"
            out[binary] = (lambda b=b, root=root, binary=binary:
                           [binary, "--root", str(root), "run", "--bundle", str(b), f"raw{next(counter)}"])
    if kit.runtimes.get("runsc").availability().available:
        b = _runc_bundle(tmp, img.rootfs, "runc", "runsc")
        root = tmp / "runsc-root"
        out["runsc"] = lambda: ["runsc", "--root", str(root), "--platform=ptrace", "--network=none",
                                "run", "--bundle", str(b), f"raw{next(counter)}"]
    if kit.runtimes.get("lxc").availability().available:
        lxcpath = tmp / "lxc"
        lxcpath.mkdir()
        # The same root filesystem semantics as kit's: the image stays untouched under
        # LXC's own overlay, with a writable upper directory.
        upper = tmp / "lxc-upper"
        upper.mkdir()
        conf = tmp / "lxc.conf"
        conf.write_text(f"lxc.rootfs.path = overlay:{img.rootfs}:{upper}\nlxc.net.0.type = empty\n")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runtimes", default="", help="comma-separated subset (default: every available one)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kit-overhead-"))
    rows = []
    try:
        raws = raw_commands(tmp)
        wanted = [r for r in (args.runtimes.split(",") if args.runtimes else raws) if r in raws]
        rng = random.Random(args.seed)
        pairs = [(rt, mode) for rt in wanted for mode in ("raw", "kit")]
        for rnd in range(args.warmup + args.runs):
            rng.shuffle(pairs)
            for rt, mode in pairs:
                t0 = time.perf_counter()
                if mode == "raw":
                    p = subprocess.run(raws[rt](), capture_output=True)
                    ok = p.returncode == 0 and p.stdout == b"hello\n"
                else:
                    r = kit.run("busybox", CMD, runtime=rt)
                    ok = r.exit_code == 0 and r.stdout == "hello\n"
                dt = time.perf_counter() - t0
                rows.append({"runtime": rt, "mode": mode, "round": rnd, "warmup": rnd < args.warmup,
                             "seconds": dt, "ok": ok})
            print(f"round {rnd + 1}/{args.warmup + args.runs}", file=sys.stderr, end="\r")
    finally:
        cleanup(tmp)
    df = pd.DataFrame(rows)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    df.to_csv(out / "overhead.csv", index=False)
    measured = df[~df.warmup]
    med = measured.groupby(["runtime", "mode"]).seconds.median().unstack() * 1000
    table = pd.DataFrame({
        "raw_ms": med["raw"].round(2), "kit_ms": med["kit"].round(2),
        "overhead_ms": (med["kit"] - med["raw"]).round(2),
        "overhead_pct": ((med["kit"] / med["raw"] - 1) * 100).round(1),
    })
    table["within_target"] = table.overhead_ms <= (table.raw_ms * 0.05).clip(lower=3.0)
    table["failed_runs"] = measured.groupby("runtime").ok.apply(lambda s: int((~s).sum()))
    text = (f"# kit overhead over the raw command line: `echo hello`, {args.runs} interleaved runs "
            f"(+{args.warmup} warmup), medians\n\n" + table.to_markdown() + "\n")
    (out / "overhead.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
