"""What a notebook needs to run a service and measure it (notebook 04): waiting until a real client
gets an answer (``kit.wait_until(..., ignoring=...)``, ``Instance.wait_until``, which gives up at
once when the instance has exited), and a figure at rest and at its peak (``kit.usage.steady``,
``kit.usage.peak``), each checked against what the kernel says of the same processes."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

import pymysql
import pytest
import redis

import kit
from kit import usage
from kit.bench import loads
from kit.errors import KitTimeout, StartFailed
from tests.conftest import need, unique

#: A workload that grows by 64 MiB when told to (a file appears), and gives it back when told to.
GROWER = """
import sys, time
from pathlib import Path
signals = Path(sys.argv[1])
def wait(name):
    while not (signals / name).exists():
        time.sleep(0.01)
print("up", flush=True)
wait("grow")
buf = b"x" * (64 << 20)
print("grown", flush=True)
wait("free")
del buf
print("freed", flush=True)
wait("end")
"""


def _kernel_pss(pids) -> int:
    """The PSS of ``pids`` as the kernel reports it in /proc/PID/smaps_rollup, in bytes."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def test_wait_until_takes_ignored_errors_for_not_yet():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port, tries = listener.getsockname()[1], []

    def connects():
        tries.append(1)
        if len(tries) == 3:  # the service comes up while the caller waits
            listener.listen(1)
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True

    try:
        assert kit.wait_until(connects, 10, interval=0.01, ignoring=(ConnectionRefusedError,)) is True
        assert len(tries) == 3
    finally:
        listener.close()
    with pytest.raises(ConnectionRefusedError):  # not ignored: it propagates at once
        kit.wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=2), 10)
    with pytest.raises(KitTimeout, match=r"within 0.2 s \(last: ConnectionRefusedError: "):
        kit.wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=2), 0.2,
                       ignoring=(ConnectionRefusedError,))


@pytest.mark.parametrize("runtime", ["process", "runc"])
def test_a_handle_waits_for_a_real_redis_client(runtime, names):
    """Through a published port the kit's forwarder accepts before Redis listens, and the client's
    ConnectionError means not yet; then a PING gets Redis's PONG and a key goes in and comes back."""
    need(runtime)
    port = kit.free_port()
    inner = port if runtime == "process" else 6379
    cache = kit.start("debian-redis", ["redis-server", "--port", str(inner), "--bind", "127.0.0.1" if runtime ==
                                       "process" else "0.0.0.0", "--protected-mode", "no", "--save", ""],
                      runtime=runtime, name=unique("serve"), ports=[] if runtime == "process" else [f"{port}:{inner}"])
    names.append(cache.name)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)
    assert cache.wait_until(client.ping, 60, what="redis to answer", ignoring=(redis.ConnectionError,)) is True
    client.set("kit:k", "v")
    assert client.get("kit:k") == "v" and client.info("clients")["connected_clients"] >= 1


def test_a_handle_stops_waiting_when_its_instance_exits(names):
    web = kit.start(None, ["sh", "-c", "echo 'bad config: no port' >&2; exit 3"], runtime="process",
                    name=unique("gone"))
    names.append(web.name)
    t0 = time.monotonic()
    with pytest.raises(StartFailed, match=r"exited \(3\) before the service to answer: bad config: no port"):
        web.wait_until(lambda: False, 60, what="the service to answer")
    assert time.monotonic() - t0 < 10  # at once, not at the deadline


def test_mariadb_lets_the_kits_client_in_with_its_generated_password(tmp_path, names):
    """MariaDB as notebook 04 starts it (kit.bench.loads.mariadb_server, grant tables kept): pymysql logs
    in as the kit's user with the password given in the environment, and a wrong one is refused."""
    if not shutil.which("mariadbd"):
        pytest.fail("mariadbd is not installed on this host (make setup installs mariadb-server)")
    port, password = kit.free_port(), "s3cret-" + unique("pw")
    db = kit.start(None, loads.mariadb_server(str(tmp_path / "db"), port, "127.0.0.1"), runtime="process",
                   name=unique("db"), env={loads.SECRET_ENV: password})
    names.append(db.name)

    def login(pw):
        with pymysql.connect(host="127.0.0.1", port=port, user=loads.DB_USER, password=pw, connect_timeout=5) as c:
            with c.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                return cur.fetchone()[0]

    assert db.wait_until(lambda: login(password), 240, what="mariadb to let the kit in",
                         ignoring=(pymysql.MySQLError,)) == f"{loads.DB_USER}@%"
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        login("wrong")


def test_peak_and_steady_memory_match_the_kernels_figures(tmp_path, names):
    grower = kit.start(None, [sys.executable, "-c", GROWER, str(tmp_path)], runtime="process", name=unique("grow"))
    names.append(grower.name)
    grower.wait_until(lambda: "up" in grower.logs().stdout, 30, what="the workload to start")
    pss = lambda: grower.memory()["pss"]  # noqa: E731
    before = usage.steady(pss)
    reads = []

    def counted():
        reads.append(1)
        return pss()

    def grow_and_free():
        (tmp_path / "grow").touch()
        grower.wait_until(lambda: "grown" in grower.logs().stdout, 30, what="the workload to grow")
        held = usage.steady(pss)
        kernel = _kernel_pss(grower.pids())
        seen = len(reads)
        kit.wait_until(lambda: len(reads) >= seen + 2, 30, what="two samples while it holds the memory")
        (tmp_path / "free").touch()
        grower.wait_until(lambda: "freed" in grower.logs().stdout, 30, what="the workload to free")
        return held, kernel

    top, (held, kernel) = usage.peak(counted, grow_and_free, interval=0.05)
    # The workload's own 64 MiB, as the kernel counts it; the figures agree within 2 % (the
    # interpreter's own pages move a little between readings)
    assert kernel - before > 60 << 20
    assert held == pytest.approx(kernel, rel=0.02) and top >= 0.98 * kernel, (before, held, kernel, top)
    after = usage.steady(pss)
    assert after < top - (48 << 20), (after, top)  # the peak was the growth, now given back
    (tmp_path / "end").touch()
