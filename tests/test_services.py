"""kit.bench.services: Redis and MariaDB started for real, timed until a real client answers, their
memory at rest and under load, and whether a saved key survives ``rm`` (notebook 04's measurements)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import need

import kit
from kit.bench import services

DATA = Path(__file__).parent / "data" / "load"


def test_load_result_reads_each_generator_s_own_output():
    got = services.load_result("redis", (DATA / "redis.csv").read_text(), 0)
    assert got == "SET 18,692/s, GET 15,873/s"
    slap = "Benchmark\n\tAverage number of seconds to run all queries: 0.412 seconds\n"
    assert services.load_result("mariadb", slap, 50) == "50 queries in 0.41 s"
    assert services.load_result("mariadb", "mariadb-slap: Error when connecting", 50).endswith("connecting")


def test_only_a_bare_process_needs_the_server_on_the_host(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed, /usr/sbin:/sbin apart
    assert services.missing_on_host("redis", "process") == ["redis-server", "redis-benchmark"]
    assert services.missing_on_host("redis", "runc") == []


def test_the_client_s_password_file_is_its_owner_s_only(tmp_path):
    bench = services.ServiceBench(tmp_path)
    assert bench.client_file.stat().st_mode & 0o077 == 0
    assert bench.password in bench.client_file.read_text()
    assert bench.password not in " ".join(bench.load_argv("mariadb", 3306))  # never on a command line


def test_redis_is_measured_until_it_answers_and_under_load(tmp_path):
    need("runc")
    bench = services.ServiceBench(tmp_path, redis_requests=300, timeout=120)
    t0 = time.perf_counter()
    results, failures = bench.measure_all(["redis"], ["process", "runc"], strict=True)
    wall = time.perf_counter() - t0
    assert not failures and list(results.columns) == list(services.COLUMNS)
    assert list(results.runtime) == ["process", "runc"] and list(results.kind) == ["process", "container"]
    # a part is never longer than its whole: each start-to-answer within the call's own wall clock
    assert (results.ready_s > 0).all() and results.ready_s.sum() < wall
    # a redis-server's PSS is megabytes, and its peak under load is at least its figure at rest
    assert results.idle_pss_mib.between(0.5, 200).all()
    assert (results.load_peak_pss_mib >= results.idle_pss_mib * 0.98).all()
    assert results.load_result.str.match(r"SET [\d,]+/s, GET [\d,]+/s").all(), results.load_result
    assert not [n for n in kit.ps().name if str(n).startswith("nb04-")]  # every instance removed


def test_mariadb_answers_the_kit_s_user_in_a_container(tmp_path):
    need("runc")
    row = services.ServiceBench(tmp_path, mariadb_queries=20, timeout=240).measure("mariadb", "runc")
    assert row["ready_s"] > 0 and row["load_result"].startswith("20 queries in "), row
    assert row["load_peak_pss_mib"] >= row["idle_pss_mib"] * 0.98


def test_a_saved_key_survives_rm_on_the_host_s_disk_not_in_a_container_s_layer(tmp_path):
    need("runc")
    keep, failures = services.ServiceBench(tmp_path, timeout=120).keeps_all(["process", "runc"], strict=True)
    assert not failures
    rows = keep.set_index("runtime")
    assert rows.loc["process", "kept"] and rows.loc["process", "saved"]
    assert not rows.loc["runc", "kept"] and rows.loc["runc", "after_rm_and_restart"] == "(nil)"
    assert (tmp_path / "redis-keep" / "dump.rdb").exists()  # the bare process's SAVE, on the host's disk


def test_a_failure_is_reported_in_one_line_or_raised_when_strict(tmp_path, monkeypatch):
    bench = services.ServiceBench(tmp_path, timeout=5)

    def refuse(*a, **kw):
        raise kit.KitError("no such image\nsecond line")

    monkeypatch.setattr(bench, "start", refuse)
    results, failures = bench.measure_all(["redis"], ["runc"])
    assert results.empty and failures == ["redis in runc: KitError: no such image"]
    with pytest.raises(kit.KitError):
        bench.measure_all(["redis"], ["runc"], strict=True)
