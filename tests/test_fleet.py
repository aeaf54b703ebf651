"""The same study on many hosts through Dask: a LocalCluster of two worker processes on 127.0.0.1
(one machine: the two must take turns), hosts that fail, raise or die halfway, and an SSHCluster
through an sshd this test starts on a free loopback port; every one of them over TLS, and what is
refused without it. Only 127.0.0.1 is contacted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kit
from kit.bench import Study, StudyParams, fleet, running
from kit.bench.metrics import COLUMNS
from kit.bench.storage import Results
from kit.errors import InvalidSpec

from tests.conftest import need

RUNTIMES = ["process", "runc"]
TINY = dict(runtimes=RUNTIMES, workload="true", repeat=2, warmup=1, parts="startup", progress=False, seed=2)
#: cells a host measures: (warmup + repeat) rounds x runtimes
CELLS = 3 * len(RUNTIMES)


@pytest.fixture(scope="module")
def client():
    for rt in RUNTIMES:
        need(rt)
    with fleet.cluster(n_local=2) as c:
        yield c


@pytest.fixture(scope="module")
def addrs(client):
    """The two workers' addresses, in label order."""
    found = fleet.workers(client)
    assert len(found) == 2
    return sorted(found, key=lambda a: found[a]["label"])


# -- helpers run inside a worker process (Client.run) ------------------------------
def _break_after(n: int) -> None:
    """Adding a run's rows raises after ``n`` cells: an error that escapes the study halfway."""
    from kit.bench.storage import Results

    real = Results.__dict__["add"]
    calls = []

    def add(self, rows):
        if len(calls) == n:
            raise RuntimeError("disk on fire")
        calls.append(1)
        return real(self, rows)

    Results._real_add = real
    Results.add = add


def _die_after(n: int) -> None:
    """The worker process is SIGKILLed when it starts its (n+1)-th run: a host dying halfway."""
    from kit.bench import startup

    real, calls = startup.measure, []

    def measure(*a, **kw):
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(1)
        return real(*a, **kw)

    startup.measure = measure


def _hide(runtime: str) -> None:
    from kit.runtimes.base import Availability

    rt = kit.runtimes.get(runtime)
    rt.availability = lambda refresh=False: Availability(runtime, rt.kind, False,
                                                         reason="not installed on this host (test)")


def _restore(*_) -> None:
    from kit.bench.storage import Results

    if "_real_add" in Results.__dict__:
        Results.add = Results._real_add
        del Results._real_add
    kit.runtimes.get("runc").__dict__.pop("availability", None)


#: The kit's modules of a worker while _no_kit hides them.
_HIDDEN: dict = {}


def _no_kit(*_) -> None:
    """The worker as a host without the kit: none of its modules imported, and none importable."""
    _HIDDEN.update({m: sys.modules.pop(m) for m in list(sys.modules) if m == "kit" or m.startswith("kit.")})
    sys.modules["kit"] = None


def _kit_back(*_) -> None:
    sys.modules.update(_HIDDEN)
    _HIDDEN.clear()


# -- tests ---------------------------------------------------------------------------
def test_two_workers_on_one_machine_take_turns(client, tmp_path):
    # the kit's own cluster speaks TLS, even on 127.0.0.1 (every local user reaches loopback)
    addresses = [client.scheduler.address, *client.scheduler_info()["workers"]]
    assert all(a.startswith("tls://127.0.0.1:") for a in addresses), addresses
    s = Study(**TINY)
    df = s.run(client=client)
    assert list(df.columns) == COLUMNS + ["host"]
    st = s.status().set_index("host")
    labels = s.hosts()
    assert len(labels) == 2 and len(set(labels)) == 2, labels  # one machine, two labels
    assert (st["state"] == "ok").all(), st[["state", "reason"]]
    assert (st["cells"] == CELLS).all() and (st["planned"] == CELLS).all()
    assert st["machine"].nunique() == 1  # the probe saw one machine
    for h in labels:
        mine = df[(df["host"] == h) & (df["metric"] == "launch_to_exit")]
        assert sorted(mine["runtime"].value_counts().tolist()) == [3, 3]
        assert (mine["status"] == "ok").all()
        # every row was measured inside its host's window
        assert (df[df["host"] == h]["timestamp"].between(st.loc[h, "started"], st.loc[h, "finished"])).all()
    # the timestamps prove they did not measure at the same time: one window ends before the other starts
    a, b = sorted(labels, key=lambda h: st.loc[h, "started"])
    assert st.loc[a, "finished"] <= st.loc[b, "started"]
    assert df[df["host"] == a]["timestamp"].max() < df[df["host"] == b]["timestamp"].min()
    # each host's environment came back with it
    for h in labels:
        env = s.meta["hosts"][h]["environment"]
        assert env["kit_version"] == kit.__version__ and env["kernel"] and env["runtimes"]
    # summary and relative are per host; relative compares with each host's own baseline
    summ = s.summary("startup")
    assert set(summ["host"]) == set(labels)
    rel = s.relative()
    assert rel.groupby("host")["runtime"].apply(set).to_dict() == {h: set(RUNTIMES) for h in labels}
    assert (rel[rel["runtime"] == "process"]["ratio"] == 1.0).all()
    # saved and loaded with its host column, status table and per-host figures
    d = s.save(tmp_path / "fleet")
    back = Study.read(d)
    pd.testing.assert_frame_equal(back.df, s.df)
    pd.testing.assert_frame_equal(back.status(), s.status())
    assert "## Hosts" in (d / "README.md").read_text()
    assert (d / "hosts.png").exists()
    assert len(list(d.glob("startup-*.png"))) == 2
    one = back.host(labels[0])
    assert "host" not in one.df.columns and one.meta["environment"]["kernel"]


def _tampered_run(client, addrs, tamper, undo, *args):
    """A tiny study with ``tamper(*args)`` done in the first worker (and undone after): the study,
    its status table by host, and the (tampered, other) host labels."""
    client.run(tamper, *args, workers=[addrs[0]])
    try:
        s = Study(**TINY)
        s.run(client=client)
    finally:
        client.run(undo, *args, workers=[addrs[0]])
    labels = fleet.workers(client)
    return s, s.status().set_index("host"), labels[addrs[0]]["label"], labels[addrs[1]]["label"]


def test_a_host_that_raises_halfway_keeps_its_runs(client, addrs):
    s, st, bad, good = _tampered_run(client, addrs, _break_after, _restore, 2)
    df = s.df
    assert st.loc[bad, "state"] == "failed" and "RuntimeError: disk on fire" in st.loc[bad, "reason"]
    assert st.loc[bad, "cells"] == 2 and st.loc[good, "state"] == "ok" and st.loc[good, "cells"] == CELLS
    runs = df[df["metric"] == "launch_to_exit"].groupby("host").size().to_dict()
    assert runs == {bad: 2, good: CELLS}  # the two runs completed before the error were streamed back
    assert s.meta["partial"]


def test_a_host_without_a_runtime_or_without_the_kit(client, addrs, monkeypatch):
    s, st, bad, good = _tampered_run(client, addrs, _hide, _restore, "runc")
    df = s.df
    assert st.loc[bad, "state"] == "failures" and "runc: unavailable: not installed" in st.loc[bad, "reason"]
    assert st.loc[good, "state"] == "ok"
    mine = df[df["host"] == bad]
    assert set(mine[mine["status"] == "ok"]["runtime"]) == {"process"}
    assert mine[mine["runtime"] == "runc"]["status"].tolist() == ["unavailable: not installed on this host (test)"]
    assert set(df[(df["host"] == good) & (df["status"] == "ok")]["runtime"]) == set(RUNTIMES)

    s, st, bad, good = _tampered_run(client, addrs, _no_kit, _kit_back)
    df = s.df
    assert st.loc[bad, "state"] == "failed" and "kit not importable there" in st.loc[bad, "reason"]
    assert df[df["host"] == bad]["status"].str.startswith("host: kit not importable").all()
    assert st.loc[good, "state"] == "ok" and st.loc[good, "cells"] == CELLS

    monkeypatch.setattr(kit.version, "__version__", "0.0.0-other")
    s = Study(**TINY)
    df = s.run(client=client)
    assert (s.status()["state"] == "failed").all()
    assert s.status()["reason"].str.contains("kit 0.1.0 there, 0.0.0-other here").all()
    assert (df["metric"] == "failed").all() and len(df) == 2


def test_a_host_killed_halfway_keeps_its_completed_runs(client, addrs):
    """Last of the LocalCluster tests: the killed worker comes back (its nanny restarts it) at another address."""
    client.run(_die_after, 2, workers=[addrs[0]])
    s = Study(**TINY)
    df = s.run(client=client)
    st = s.status().set_index("host")
    found = {h: st.loc[h] for h in st.index}
    dead = next(h for h, r in found.items() if r["state"] == "lost")
    alive = next(h for h in found if h != dead)
    assert f"worker {addrs[0]} died after 2 of {CELLS} cells" == st.loc[dead, "reason"]
    assert st.loc[alive, "state"] == "ok" and st.loc[alive, "cells"] == CELLS
    runs = df[df["metric"] == "launch_to_exit"].groupby("host").size().to_dict()
    assert runs == {dead: 2, alive: CELLS}
    assert s.meta["hosts"][dead]["environment"]["kernel"]  # sent with its first rows


def test_bad_fleet_options():
    with pytest.raises(InvalidSpec, match="per="):
        fleet.run(StudyParams(**TINY), None, running.measure, Results(), per="rack")
    with pytest.raises(InvalidSpec, match="only with client"):
        Study(**TINY).run(per="machine")
    with pytest.raises(InvalidSpec, match=r"\[user@\]host"):
        fleet.parse_host("alice@:22")
    assert fleet.parse_host("alice@lab1:2222") == ("lab1", {"username": "alice", "port": 2222})


# -- TLS -----------------------------------------------------------------------------
def test_tls_unless_plaintext_is_asked_for_by_name(capsys):
    from kit.bench.fleettls import choose, is_loopback

    assert choose() is True and choose(hosts=["lab1", "lab2"]) is True  # clusters the kit starts
    assert choose(hosts=["127.0.0.1"]) is True  # loopback too: every local user reaches it
    assert choose(insecure=True) is False and choose(hosts=["lab1"], insecure=True) is False
    assert choose(scheduler="tls://lab1:8786") is True and choose(scheduler="wss://lab1:8786") is True
    for local in ("tcp://127.0.0.1:8786", "tcp://localhost:8786", "tcp://[::1]:8786", "tcp://127.0.0.2:1",
                  "127.0.0.1:8786"):
        assert choose(scheduler=local) is False, local  # someone's own loopback scheduler: accepted
    for remote in ("tcp://lab1:8786", "lab1:8786", "tcp://192.0.2.7:8786", "ws://lab1:8786", "tcp://0.0.0.0:8786"):
        with pytest.raises(InvalidSpec, match="is plaintext and not on this machine.*insecure=True") as e:
            choose(scheduler=remote)
        assert "\n" not in str(e.value) and remote in str(e.value)
        assert choose(scheduler=remote, insecure=True) is False
    with pytest.raises(InvalidSpec, match="contradict"):
        choose(security=object(), insecure=True)
    with pytest.raises(InvalidSpec, match="security= is for a TLS scheduler"):
        choose(scheduler="tcp://127.0.0.1:8786", security=object())
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "lab1", "10.0.0.1", "0.0.0.0")] == \
        [True, True, True, True, False, False, False]
    assert capsys.readouterr().err == ""  # the choice itself says nothing


def test_a_plaintext_remote_scheduler_is_refused_before_any_connection(capsys):
    """``kit bench --scheduler tcp://HOST`` off this machine: a one-line error saying what to do, and no
    connection attempt (the address is in TEST-NET-1: nothing answers there); --insecure warns in one line."""
    from kit.bench import fleettls
    from kit.bench.options import magic
    from kit.cli import main

    argv = ["bench", "--scheduler", "tcp://192.0.2.7:8786", "-r", "process", "-n", "2", "--no-progress", "true"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kit bench: scheduler tcp://192.0.2.7:8786 is plaintext"), err
    assert "--insecure" in err and "tls://" in err
    with pytest.raises(InvalidSpec, match="give --hosts or --scheduler"):
        magic("--insecure -r process true")

    class Fake:  # what check_client reads of a Client: the scheduler's and the workers' addresses
        def __init__(self, scheduler, workers):
            self.scheduler = type("S", (), {"address": scheduler})()
            self._workers = workers

        def scheduler_info(self, n_workers=-1):
            return {"workers": {w: {} for w in self._workers}}

    fleettls.check_client(Fake("tls://192.0.2.7:1", ["tls://192.0.2.8:2"]))
    fleettls.check_client(Fake("tcp://127.0.0.1:1", ["tcp://127.0.0.1:2"]))
    assert capsys.readouterr().err == ""
    with pytest.raises(InvalidSpec, match="worker tcp://192.0.2.8:2 is plaintext"):
        fleettls.check_client(Fake("tcp://127.0.0.1:1", ["tcp://192.0.2.8:2"]))  # a loopback scheduler, a remote worker
    fleettls.check_client(Fake("tcp://127.0.0.1:1", ["tcp://192.0.2.8:2"]), insecure=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kit fleet: warning: plaintext Dask connections (tcp://192.0.2.8:2")


def test_the_kits_cluster_refuses_plaintext_and_other_credentials(client):
    """The LocalCluster is TLS for real: a plaintext client, and one with another cluster's
    certificates, are turned away; only its own credentials get in."""
    from distributed import Client
    from distributed.security import Security

    addr = client.scheduler.address
    with pytest.raises(OSError):  # the listener resets a plaintext hello
        Client(addr.replace("tls://", "tcp://"), timeout=5)
    with pytest.raises(OSError):  # a certificate this cluster's CA did not sign
        Client(addr, security=Security.temporary(), timeout=5)
    with Client(addr, security=client.security, timeout=10) as other:
        assert set(other.scheduler_info()["workers"]) == set(client.scheduler_info()["workers"])


# -- SSH -----------------------------------------------------------------------------
@pytest.fixture
def sshd(tmp_path):
    """An sshd of our own on a free 127.0.0.1 port: throwaway host and user keys, root by key only."""
    if not Path("/usr/sbin/sshd").exists() or not shutil.which("ssh-keygen"):
        pytest.fail("openssh-server is missing: make system-packages installs it")
    if os.geteuid() != 0:
        pytest.skip("the test sshd logs in as root (run the tests as root)")
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run(keygen + ["-f", str(tmp_path / "host_key")], check=True)
    subprocess.run(keygen + ["-f", str(tmp_path / "user_key")], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "user_key.pub").read_text())
    port = kit.free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {tmp_path / 'host_key'}
AuthorizedKeysFile {tmp_path / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {tmp_path / 'sshd.pid'}
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sshd.log", "wb"))
    try:
        kit.wait_for_port(port, timeout=20)
        yield {"port": port, "key": str(tmp_path / "user_key")}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(240)
def test_a_study_through_ssh_matches_a_local_one(sshd):
    for rt in RUNTIMES:
        need(rt)
    opts = {"port": sshd["port"], "client_keys": [sshd["key"]], "known_hosts": None}
    before = set(Path("/tmp").glob("kit-fleet-*"))
    with fleet.cluster(hosts=["root@127.0.0.1"], connect_options=opts, remote_python=sys.executable,
                       bind="127.0.0.1") as client:
        assert all(a.startswith("tls://127.0.0.1:") for a in client.scheduler_info()["workers"])
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        # the hosts' certificate and key: files in a directory of their own, closed to others ...
        (creds,) = set(Path("/tmp").glob("kit-fleet-*")) - before
        assert creds.stat().st_mode & 0o777 == 0o700
        assert {p.name: p.stat().st_mode & 0o777 for p in creds.iterdir()} == {
            n: 0o600 for n in ("ca.pem", "scheduler.pem", "scheduler.key", "worker.pem", "worker.key")}
        # ... never on a command line or in an environment another process could read
        assert not _processes_showing("PRIVATE KEY")
        s = Study(**TINY)
        df = s.run(client=client)
    assert not creds.exists()  # removed with the cluster
    assert (s.status()["state"] == "ok").all(), s.status()[["state", "reason"]]
    local = Study(**TINY)
    ldf = local.run()
    assert len(s.hosts()) == 1 and list(df.columns) == list(ldf.columns) + ["host"]
    shape = ["part", "runtime", "metric", "warmup"]
    assert df[shape].value_counts().to_dict() == ldf[shape].value_counts().to_dict()
    assert (df["status"] == "ok").all()


def _processes_showing(text: str) -> list[int]:
    """The processes whose command line or environment holds ``text``."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        for f in ("cmdline", "environ"):
            try:
                if text.encode() in (d / f).read_bytes():
                    found.append(int(d.name))
            except OSError:  # gone meanwhile
                pass
    return found


@pytest.mark.timeout(240)
def test_kit_bench_hosts_from_the_shell(sshd, tmp_path, capsys):
    """``kit bench --hosts`` with the host key checked against a known_hosts file."""
    from kit.cli import main

    need("process")
    host_key = (Path(sshd["key"]).parent / "host_key.pub").read_text().split()
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd['port']} {host_key[0]} {host_key[1]}\n")
    argv = ["bench", "--hosts", f"root@127.0.0.1:{sshd['port']}", "--ssh-key", sshd["key"],
            "--known-hosts", str(tmp_path / "known_hosts"), "--remote-python", sys.executable,
            "-r", "process", "-n", "2", "--parts", "startup", "--no-progress", "--no-figures",
            "-o", str(tmp_path / "out"), "true"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert " ok " in out and "launch_to_exit" in out
    back = Study.read(tmp_path / "out")
    assert back.status()["state"].tolist() == ["ok"] and len(back.hosts()) == 1


def test_bench_magic_runs_on_every_worker_of_a_scheduler(client, tmp_path):
    """``%bench --scheduler tls://ADDR --tls-*`` (the same options as ``kit bench``, --hosts included):
    a running TLS scheduler and its workers, reached with the cluster's certificates as files."""
    from kit.bench.options import build_parser, magic

    assert "--hosts" in build_parser().format_help() and "--insecure" in build_parser().format_help()
    sec = client.security  # the cluster's own (made for it, in memory): written out as a user would have them
    for name, pem in (("ca.pem", sec.tls_ca_file), ("me.pem", sec.tls_client_cert), ("me.key", sec.tls_client_key)):
        (tmp_path / name).write_text(pem)
    addr = client.scheduler.address
    assert addr.startswith("tls://")
    with pytest.raises(InvalidSpec, match=f"scheduler {addr} speaks TLS: give its CA"):
        magic(f"--scheduler {addr} -r process -n 2 --parts startup --no-progress true")
    tls = f"--tls-ca-file {tmp_path / 'ca.pem'} --tls-cert {tmp_path / 'me.pem'} --tls-key {tmp_path / 'me.key'}"
    study = magic(f"--scheduler {addr} {tls} -r process -n 2 --parts startup --no-progress true")
    status = study.status()
    assert sorted(status["state"]) == ["ok", "ok"] and len(study.hosts()) == 2, status.to_string()
    assert set(study.summary("startup")["host"]) == set(study.hosts())


# -- compare ---------------------------------------------------------------------------
def _frame(values: dict, host: str | None = None) -> pd.DataFrame:
    """A results frame: runtime -> list of launch_to_exit values (s)."""
    from kit.bench import storage

    rows = [{"study": "s", "part": "startup", "image": "busybox", "runtime": rt, "kind": "container",
             "workload": "true", "metric": "launch_to_exit", "unit": "s", "value": v, "status": "ok",
             "warmup": False, **({"host": host} if host else {})} for rt, vs in values.items() for v in vs]
    return storage.normalise(pd.DataFrame(rows))


def test_compare_says_whether_a_difference_beats_the_noise():
    from kit.bench import compare
    from kit.bench.compare import markdown, rank_permutation_p

    rng = np.random.default_rng(1)
    base = {"runc": 0.040 + rng.normal(0, 0.002, 12), "lxc": 0.015 + rng.normal(0, 0.001, 12), "qemu": [3.0]}
    later = {"runc": 0.060 + rng.normal(0, 0.002, 12), "lxc": 0.015 + rng.normal(0, 0.001, 12), "qemu": [2.9]}
    v = compare([_frame(base), _frame(later)], labels=["monday", "friday"], metrics=["launch_to_exit"])
    got = v.set_index("runtime")
    assert got.loc["runc", "verdict"] == "slower" and got.loc["runc", "ratio_low"] > 1
    assert got.loc["runc", "p_value"] < 0.01 and got.loc["runc", "change_pct"] == pytest.approx(50, abs=10)
    assert got.loc["lxc", "verdict"] == "within noise" and got.loc["lxc", "ratio_low"] < 1 < got.loc["lxc", "ratio_high"]
    assert got.loc["qemu", "verdict"] == "not enough runs"
    assert set(v["baseline"]) == {"monday"} and set(v["other"]) == {"friday"}
    assert "slower" in markdown(v)
    # two runs against two (or three against three) can never be told apart at 95 %, however far apart
    # they are: the rank test's smallest p is 1/3 (0.1); below it the verdict is "not enough runs"
    tiny = compare([_frame({"runc": [0.01, 0.011, 0.012]}), _frame({"runc": [0.05, 0.051, 0.052]})])
    assert tiny["verdict"].tolist() == ["not enough runs"] and tiny["ratio"].iloc[0] == pytest.approx(0.051 / 0.011)
    # the rank test: 4 against 4, all apart: 2 of the 70 splits are as extreme
    assert rank_permutation_p([5, 6, 7, 8], [1, 2, 3, 4]) == pytest.approx(2 / 70)
    # a fleet frame: one entry per host
    fleet_df = pd.concat([_frame(base, "a"), _frame(later, "b")], ignore_index=True)
    assert set(compare(fleet_df)["other"]) == {"b"}
    with pytest.raises(InvalidSpec, match="at least two"):
        compare([_frame(base)])
