"""The kit's port forwarder measured before and after (issue 11): the user-space copy it had
(recv/sendall in Python threads) against the splice(2) path it has now, and against no forwarder
at all (the client inside the service's network namespace). Writes benchmarks/results/load/forwarder.md.

The services (iperf3 -s, redis-server, a socat echo server) are the host's own binaries started in
a fresh loopback-only network namespace (kit.portfwd.new_loopback_netns), pinned to the
"instance" CPU; the clients run on the host pinned to the "generator" CPU (kit.bench.loads.pinning),
exactly as the load benchmarks run them. Rounds interleave the paths.

    python benchmarks/bench_forwarder.py [--repeat 5] [--seconds 2] [--requests 10000] [--render]

``--render`` rewrites forwarder.md from the kept forwarder.csv (and forwarder_env.json, the
environment record) without measuring. Operations are the tools' own counts
(:func:`kit.bench.tools.operations`); every sentence of the report is computed from the table or
the environment record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from kit.bench import envinfo, loads, storage
from kit.bench.tools import operations, parse
from kit.portfwd import Forwarder, new_loopback_netns, setns
from kit._proc import wait_until
from kit.net import free_port

OUT = Path(__file__).parent / "results" / "load" / "forwarder.md"
CSV = OUT.with_suffix(".csv")
ENV = OUT.with_name("forwarder_env.json")
PATHS = ("direct", "user", "splice", "native")
#: A forwarder written in C, for comparison: systemd's socket proxy (splice, one event loop), given
#: the host-side listening socket by socket activation and started inside the namespace.
PROXYD = "/lib/systemd/systemd-socket-proxyd"
SERVERS = {  # load name -> (inner port, server argv)
    "network": (5201, ["iperf3", "-s", "-p", "5201"]),
    "redis": (6379, ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]),
    "latency": (7007, ["socat", "TCP-LISTEN:7007,bind=127.0.0.1,reuseaddr,fork", "PIPE"]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--render", action="store_true")
    a = ap.parse_args()
    if a.render:
        df = pd.read_csv(CSV, keep_default_na=False, na_values=[""])
        write(df, a, json.loads(ENV.read_text()) if ENV.exists() else {})
        return
    for tool in ("iperf3", "redis-server", "redis-benchmark", "socat", "nsenter"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_forwarder: {tool} is not installed (make system-packages)")
    fd = new_loopback_netns()
    ns = f"/proc/{os.getpid()}/fd/{fd}"
    pin = loads.pinning()
    procs, fwds = [], {}
    try:
        for port, argv in SERVERS.values():
            procs.append(subprocess.Popen(["taskset", "-c", ",".join(map(str, pin["instance"])), "nsenter",
                                           f"--net={ns}", "--", *argv], pass_fds=(fd,),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for mode in ("user", "splice"):
            fwds[mode] = {name: (p := free_port(), Forwarder(ns, [(p, inner)], copy=mode).start())
                          for name, (inner, _) in SERVERS.items()}
        if os.access(PROXYD, os.X_OK):
            fwds["native"] = {name: NativeProxy(fd, inner).start() for name, (inner, _) in SERVERS.items()}
        else:
            print(f"bench_forwarder: no {PROXYD} (Debian's systemd package): the native column stays empty")
        for name, (inner, _) in SERVERS.items():
            wait_until(lambda: listens_in(fd, inner), 30, interval=0.05, what=f"{name} server in the namespace")
        rows = []
        for rnd in range(a.repeat + 1):  # round 0: warmup
            for name in SERVERS:
                for path in [p for p in (PATHS if rnd % 2 else PATHS[::-1]) if p == "direct" or p in fwds]:
                    rows += [dict(r, round=rnd, path=path, load=name)
                             for r in one(name, path, ns, fwds, a.seconds, a.requests)]
    finally:
        for mode in fwds.values():
            for _, f in mode.values():
                f.stop()
        for p in procs:
            p.terminate()
            p.wait(10)
        os.close(fd)
    df = pd.DataFrame(rows)
    df["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    df.to_csv(CSV, index=False)
    env = {**envinfo.collect(), "pinning": loads.pinning(), "seconds": a.seconds, "requests": a.requests}
    ENV.write_text(json.dumps(env, indent=1, default=str) + "\n")
    write(df, a, env)
    storage.record(OUT.parent, __file__, [CSV.name, ENV.name, OUT.name])  # the commit and definitions measured under


class NativeProxy:
    """systemd-socket-proxyd in the namespace ``nsfd``, accepting on a 127.0.0.1 socket of the host's."""

    def __init__(self, nsfd: int, inner: int):
        self.nsfd, self.inner = nsfd, inner
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]

    def start(self) -> tuple[int, "NativeProxy"]:
        # socket activation: the listener as fd 3, LISTEN_PID the proxy's own pid (the wrapper execs into it)
        lfd = self.listener.fileno()
        wrap = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); os.execvp(sys.argv[2], sys.argv[2:])")
        self.proc = subprocess.Popen([sys.executable, "-c", wrap, str(lfd), "nsenter",
                                      f"--net=/proc/{os.getpid()}/fd/{self.nsfd}", PROXYD, f"127.0.0.1:{self.inner}"],
                                     pass_fds=(lfd,))
        return self.port, self

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.listener.close()


def listens_in(nsfd: int, port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` inside the namespace ``nsfd``."""
    got = []

    def probe():
        setns(nsfd)
        with socket.socket() as s:
            got.append(s.connect_ex(("127.0.0.1", port)) == 0)

    t = threading.Thread(target=probe)
    t.start()
    t.join(5)
    return bool(got and got[0])


def one(name: str, path: str, ns: str, fwds: dict, seconds: int, requests: int) -> list[dict]:
    load = loads.LOADS[name]
    inner = SERVERS[name][0]
    port = inner if path == "direct" else fwds[path][name][0]
    argv = loads.fill_argv(load.argv, port=port, seconds=seconds, count=requests if name == "redis" else 10**6)
    fwd = None if path == "direct" else fwds[path][name][1]
    c0, t0 = fwd.cpu_seconds() if fwd else 0.0, time.monotonic()
    raw = loads.run_generator(argv, 120, load, f"forwarder {path}", netns=ns if path == "direct" else None)
    wall = time.monotonic() - t0
    cpu = (fwd.cpu_seconds() - c0) if fwd else 0.0
    figs = parse(load.tool, raw)
    ops, unit = operations(load.tool, raw, argv)
    out = [f.row() for f in figs if f.metric in ("throughput", "p50", "p99")]
    if fwd and ops:
        out.append({"metric": "forwarder_cpu_per_op", "component": unit, "value": cpu / ops * 1e6, "unit": "µs"})
        out.append({"metric": "forwarder_cpu_share", "component": "", "value": cpu / wall * 100, "unit": "% of a CPU"})
    return out


def reading(med: pd.DataFrame) -> list[str]:
    """What the table says, computed from it."""
    m = med.set_index(["load", "metric", "component"])

    def v(load, metric, comp, path):
        try:
            return float(m.loc[(load, metric, comp), path])
        except KeyError:
            return float("nan")

    out = []
    for load, comp, unit in (("redis", "SET", "requests/s"), ("redis", "GET", "requests/s"),
                             ("network", "tcp", "Gbit/s"), ("latency", "rtt", "round trips/s")):
        d, u, s, n = (v(load, "throughput", comp, p) for p in PATHS)
        out.append(f"- {load} {comp}: splice gives {s / u:.2f}x the {unit} of the user-space copy, "
                   f"{s / n:.2f}x that of systemd's C proxy and {s / d:.2f} of the direct path.")
    for load, op in (("redis", "request"), ("network", "MiB"), ("latency", "round trip")):
        u, s, n = (v(load, "forwarder_cpu_per_op", op, p) for p in ("user", "splice", "native"))
        out.append(f"- forwarder CPU per {op} ({load}): {u:.1f} µs copying through Python, {s:.1f} µs with "
                   f"splice ({s / u:.2f}x), {n:.1f} µs in systemd's C proxy.")
    tails = ", ".join(f"{p} {v('latency', 'p99', 'rtt', p) / v('latency', 'p50', 'rtt', p):.2f}" for p in PATHS)
    out.append(f"- round trip tail, p99 / p50: {tails}.")
    return out


def write(df: pd.DataFrame, a, env: dict) -> None:
    """forwarder.md from the runs and the environment record (``env``: {} for a result kept from before
    it was recorded, then the host's figures are said to be unrecorded)."""
    ok = df[df["round"] > 0].assign(component=lambda d: d.component.fillna(""))
    repeat, load1 = ok["round"].max(), df["load_average"].iloc[-1]
    pin = env.get("pinning") or {}
    host = (f"{env['cpu_count']} CPUs ({env.get('cpu_model', '')}), kernel {env.get('kernel', '')}"
            + (f", virtualised: {env['virtualised']}" if env.get("virtualised") else "")) if env.get("cpu_count") \
        else "not recorded"
    med = ok.groupby(["load", "metric", "component", "unit", "path"]).value.agg(
        lambda v: statistics.median(v)).unstack("path").reindex(columns=list(PATHS))
    med = med.reset_index()
    med = med[~med.metric.isin(["p50"]) | (med.load == "latency")]
    med["splice/user"] = med["splice"] / med["user"]
    med["splice/native"] = med["splice"] / med["native"]
    lines = ["# The kit's port forwarder, before (user-space copy) and after (splice), against a C proxy", "",
             "Generated by `python benchmarks/bench_forwarder.py` (part of `make bench`).", "",
             f"Services: the host's iperf3, redis-server and a socat echo server in a loopback-only network "
             f"namespace pinned to CPU {pin.get('instance', '(not recorded)')}; clients on CPU "
             f"{pin.get('generator', '(not recorded)')}. "
             f"`direct`: the client inside that namespace (no forwarder); `user`: kit.portfwd.Forwarder(copy='user'), "
             f"recv/sendall in Python threads (the forwarder before); `splice`: the default, splice(2) through a pipe; "
             f"`native`: systemd-socket-proxyd (C, splice, one event loop) in the namespace, handed the host-side "
             f"listening socket by socket activation: what a forwarder outside Python gets here. "
             f"Median of {repeat} interleaved rounds after one warmup; iperf3 and the RTT client "
             f"{env.get('seconds', a.seconds)} s each, redis-benchmark {env.get('requests', a.requests)} requests per "
             f"test (SET, then GET) with 8 clients. Forwarder CPU: the CPU time of every thread of it "
             f"(Forwarder.cpu_seconds; the proxy process's for `native`) per operation, operations as the tools "
             f"count them (kit.bench.tools.operations). Host: {host}. Load average at the end: {load1}.", "",
             med.round(3).to_markdown(index=False), "", "## Reading", ""] + reading(med) + [
             "", "The RTT client's throughput is 1/mean round trip, so the tail counts in it; p50 is the "
             "round trip itself.", ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
