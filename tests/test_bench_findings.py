"""The reference findings (kit.bench.findings), from small known frames: each verdict by the one rule
kit.bench.compare uses (bootstrap interval and rank test), "not enough runs" below it, and every
sentence of ``why`` made from the frame and the environment record."""

import numpy as np
import pandas as pd
import pytest

from kit.bench import findings
from kit.bench.compare import difference

KINDS = {"process": "process", "runc": "container", "lxc": "container", "docker": "container", "runsc": "sandbox",
         "qemu": "vm"}
#: Runs per sample: enough for the rank test to reach p < 0.05 (4 against 4 is the least).
RUNS = 6


def frame(values: dict) -> pd.DataFrame:
    """{(workload, component, metric, runtime): [values]} as load rows."""
    rows = [{"part": "load", "image": "debian-bench", "workload": w, "component": c, "metric": m, "runtime": rt,
             "kind": KINDS[rt], "value": v, "warmup": False, "status": "ok", "unit": "", "n": 0}
            for (w, c, m, rt), vs in values.items() for v in vs]
    return pd.DataFrame(rows)


def around(centre: float, runs: int = RUNS, spread: float = 0.01) -> list[float]:
    """``runs`` distinct values within ±spread of ``centre`` (seeded)."""
    rng = np.random.default_rng(int(centre * 1000) % 2**32)
    return list(centre * (1 + rng.uniform(-spread, spread, runs)))


def known(runs: int = RUNS, values: dict | None = None) -> pd.DataFrame:
    v = {("cpu", "cpu", "throughput", rt): around(1000, runs) for rt in ("process", "runc", "lxc", "docker")}
    v |= {("memory", "memory", "throughput", rt): around(5000, runs) for rt in ("process", "runc", "lxc")}
    v |= {("redis", "GET", "p99", "process"): around(1.0, runs), ("redis", "GET", "p99", "runc"): around(1.0, runs),
          ("redis", "GET", "p99", "docker"): around(3.0, runs), ("redis", "GET", "p99", "qemu"): around(20, runs)}
    v[("redis", "forwarder/request", "cpu_per_op", "runc")] = [29.0, 30.0, 31.0] * (runs // 3)
    v[("redis", "forwarder/request", "cpu_per_op", "docker")] = [44.0, 45.0, 46.0] * (runs // 3)
    v |= {("fileio", "read", "throughput", "runc"): around(900, runs),
          ("fileio-volume", "read", "throughput", "runc"): around(901, runs)}
    v |= {("syscall", "syscall", "op_time", "runc"): around(400, runs),
          ("syscall", "syscall", "op_time", "runsc"): around(9000, runs)}
    v.update(values or {})
    return frame(v)


def verdicts(df, env=None, skipped=None) -> dict:
    f = findings.compute(df, env or {"vm_accel": "tcg", "vm_accel_reason": "no usable /dev/kvm"}, skipped)
    return {r.key: (r.verdict, r.why) for r in f.itertuples()}


def test_findings_from_a_known_frame():
    v = verdicts(known())
    assert v["cpu_memory"][0] == "reproduced" and "runc 1.00×" in v["cpu_memory"][1]
    assert v["vm_latency"][0] == "reproduced" and "accelerator tcg (no usable /dev/kvm)" in v["vm_latency"][1]
    assert "I/O not measured" in v["vm_latency"][1]
    # Docker's published port went through a forwarding process (its CPU was measured): no NAT to judge
    assert v["docker_nat"][0] == "not measured" and "NAT was not on the measured path" in v["docker_nat"][1]
    assert "Docker latency ÷ native: redis/GET p99 docker 2.99×" in v["docker_nat"][1]
    assert "redis, CPU per request of the forwarder of each runtime's published port: docker 45.0 µs, runc 30.0 µs" \
        in v["docker_nat"][1]
    no_forwarder = known()
    no_forwarder = no_forwarder[~((no_forwarder.runtime == "docker") & (no_forwarder.metric == "cpu_per_op"))]
    assert verdicts(no_forwarder)["docker_nat"][0] == "reproduced"  # then the rule decides
    assert v["volume"][0] == "not reproduced" and "runc fileio-volume/read 1.0" in v["volume"][1]
    assert "MySQL: not measured (no mariadb-volume load in this run)" in v["volume"][1]
    assert v["syscall"][0] == "reproduced" and "22.48×" in v["syscall"][1]


def test_findings_that_do_not_hold_or_were_not_measured():
    slow = {("cpu", "cpu", "throughput", "lxc"): around(500),
            ("syscall", "syscall", "op_time", "runsc"): around(600),
            ("fileio-volume", "read", "throughput", "runc"): around(2000)}
    v = verdicts(known(values=slow))
    assert v["cpu_memory"][0] == "not reproduced" and "lxc cpu not within" in v["cpu_memory"][1]
    assert v["syscall"][0] == "not reproduced" and v["volume"][0] == "reproduced"
    no_vm_docker = known()
    no_vm_docker = no_vm_docker[~no_vm_docker["runtime"].isin(["qemu", "docker"])]
    v = verdicts(no_vm_docker, {"vm_accel": "tcg"}, skipped={"qemu": "no guest kernel"})
    assert v["vm_latency"][0] == "not measured" and "qemu: no guest kernel" in v["vm_latency"][1]
    assert v["docker_nat"][0] == "not measured" and "runc 30.0 µs" in v["docker_nat"][1]
    assert set(verdicts(pd.DataFrame({"part": ["startup"]})).values()) == {("not measured",
                                                                          "no load workload was run")}


def test_three_rounds_are_not_enough_runs_whatever_the_bootstrap_says():
    """3 against 3 (a load's default rounds): even a 22× difference cannot be told from the noise by the rank
    test (its smallest p is 0.1), so no finding that rests on a comparison is reproduced or refuted."""
    few = known(runs=3)
    v = verdicts(few[~((few.runtime == "docker") & (few.metric == "cpu_per_op"))])
    for key in ("cpu_memory", "vm_latency", "docker_nat", "volume", "syscall"):
        assert v[key][0] == "not enough runs", (key, v[key])
        assert "at least 4 against 4" in v[key][1] and "3 against 3" in v[key][1]
    # the same samples through kit.bench.compare: the same rule, the same words
    d = difference(around(9000, 3), around(400, 3))
    assert d["verdict"] == "not enough runs" and d["ratio"] == pytest.approx(22.5, rel=0.05)
    # a counterexample measured often enough to be beyond the noise still refutes, whatever else lacks runs
    mixed = known(runs=3, values={("cpu", "cpu", "throughput", rt): around(1000 if rt == "process" else 500, RUNS)
                                  for rt in ("process", "lxc")})
    assert verdicts(mixed)["cpu_memory"][0] == "not reproduced"


def test_no_hand_written_explanation_remains():
    """The sentences that were typed in, not computed (the forwarder "copies bytes in user space": it splices
    now; TCG "inflates every VM figure"; the layer "costs little"), are gone from every verdict."""
    text = " ".join(w for _, w in verdicts(known()).values()) + " ".join(w for _, w in verdicts(known(runs=3)).values())
    for gone in ("user space", "inflates", "costs little", "no AUFS", "page cache", "no NAT"):
        assert gone not in text
    f = findings.compute(known(), {"vm_accel": "kvm"})
    assert f["source"].str.startswith(("Felter et al.", "gVisor's performance guide")).all()
    assert "a reference: 1.9 µs against 38.2 µs" in f.set_index("key").loc["syscall", "finding"]
