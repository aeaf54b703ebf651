"""Concurrent use, as a user with a thread pool would: availability probes and a stress test (issue 9).

Runtimes are singletons that threads share, and so is the image store's name index: threads
that start, exec into and remove instances at once must neither see errors that a single thread
would not see, nor leave anything behind, nor lose a name from the index.
"""

from __future__ import annotations

import json
import secrets
import threading
import traceback
from pathlib import Path

import pytest

import kit
from kit import config, lifetime
from kit._proc import wait_until
from kit.images import store
from kit.runtimes.base import Availability
from tests.conftest import EXPECTED_HERE, need, skipped_by_env

THREADS = 8
ROUNDS = 3
#: QEMU runs under TCG (software emulation) on this machine kind's 2 cores, and one boot takes
#: seconds of both of them: more than 2 VMs at once only queue for the CPUs and push every other
#: thread's deadlines (exec, probes) towards their limits. So at most 2 VMs run at a time.
VM_SLOTS = 2
#: One deadline for a whole stress round of one thread (a VM boot under TCG with a busy host
#: included): a hang fails the test instead of stalling the suite.
ROUND_DEADLINE = 240


# -- availability: probed once, and a failure is not believed for good ------------------------
def test_concurrent_first_availability_of_runsc_is_one_probe_and_positive(monkeypatch):
    need("runsc")
    rt = kit.runtimes.get("runsc")
    probes = []
    real_probe = rt.probe

    def counting_probe():
        probes.append(threading.get_ident())
        return real_probe()

    monkeypatch.setattr(rt, "probe", counting_probe)
    monkeypatch.setattr(rt, "_availability", None)  # the first question of a session (restored afterwards)
    verdicts = _at_once(4, lambda i: rt.availability())
    assert [v.available for v in verdicts] == [True] * 4, [v.reason for v in verdicts]
    assert len(probes) == 1, "concurrent callers must wait for one probe, not run their own"


def test_concurrent_probes_of_runsc_do_not_collide():
    """Probes that do run at once (two sessions, or refresh from two threads) use ids of their own."""
    need("runsc")
    rt = kit.runtimes.get("runsc")
    verdicts = _at_once(4, lambda i: rt.probe())
    assert [v.available for v in verdicts] == [True] * 4, [v.reason for v in verdicts]


def test_a_negative_verdict_is_retried(monkeypatch):
    need("runsc")
    rt = kit.runtimes.get("runsc")
    real_probe = rt.probe
    probes = []

    def flaky_probe():  # a probe that failed once on a busy host
        probes.append(1)
        if len(probes) == 1:
            return Availability(rt.name, rt.kind, False, reason="flaky: address already in use")
        return real_probe()

    monkeypatch.setattr(rt, "probe", flaky_probe)
    monkeypatch.setattr(rt, "NEGATIVE_TTL", 0.3)
    monkeypatch.setattr(rt, "_availability", None)
    first = rt.availability()
    assert not first.available and first.reason == "flaky: address already in use"
    assert rt.availability() is first and len(probes) == 1  # believed within its TTL: no probe storm
    verdict = wait_until(lambda: rt.availability().available and rt.availability(), 10, interval=0.05,
                         what="runsc's negative verdict being retried")
    assert verdict.available and len(probes) == 2
    assert rt.availability() is verdict and len(probes) == 2  # a positive verdict is kept


def _at_once(n: int, fn) -> list:
    """``fn(i)`` in ``n`` threads released together; their results in order, or the first exception."""
    barrier = threading.Barrier(n, timeout=30)
    results: list = [None] * n
    errors: list[str] = []

    def body(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=body, args=(i,), name=f"at-once-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, "\n".join(errors)
    return results


# -- the stress test ----------------------------------------------------------------------------
def _runtimes() -> list[str]:
    chosen = [r for r in EXPECTED_HERE if r not in skipped_by_env()]
    for r in chosen:
        need(r)
    return chosen


def _tiny_rootfs(where: Path, content: str) -> Path:
    d = where / secrets.token_hex(4)
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "stress").write_text(content)
    return d


@pytest.mark.slow
def test_threads_start_exec_and_remove_everywhere_at_once(tmp_path):
    runtimes = _runtimes()
    tag = f"st{secrets.token_hex(3)}"
    procs_before = {p.pid for p in lifetime.session_processes(config.SESSION_ID)}
    store.get("busybox")  # built (once) before the threads use it
    vm_slots = threading.BoundedSemaphore(VM_SLOTS)
    errors: list[str] = []
    outputs: list[tuple[str, str, str]] = []  # (runtime, expected, got)
    started: list[str] = []
    index_reads: list[int] = []
    stop_reader = threading.Event()

    def instance(runtime: str, name: str) -> None:
        kit.start("busybox", ["sleep", "300"], runtime=runtime, name=name)
        started.append(name)
        try:
            token = f"{name}-{secrets.token_hex(4)}"
            r = kit.exec_(name, ["echo", token], timeout=120)
            outputs.append((runtime, f"{token}\n", r.stdout))
        finally:
            kit.rm(name, force=True)

    def images(i: int, rnd: int) -> None:
        # Each thread adds two names: one for content of its own, one for content every thread shares
        # (the same image id behind many names, so a remove must not delete what another name holds).
        own = store.add(f"{tag}-img-{i}-{rnd}", _tiny_rootfs(tmp_path, f"{i}-{rnd}"), "test:stress")
        shared = store.add(f"{tag}-shared-{i}-{rnd}", _tiny_rootfs(tmp_path, tag), "test:stress")
        for img, content in ((own, f"{i}-{rnd}"), (shared, tag)):
            got = store.get(img.name)
            assert got.id == img.id and (got.rootfs / "etc" / "stress").read_text() == content, (img, got)
        store.remove(own.name)
        store.remove(shared.name)

    def worker(i: int, barrier: threading.Barrier) -> None:
        for rnd in range(ROUNDS):
            # Thread i uses runtimes i + rnd and i + rnd + half: every runtime is busy in every round
            # (several threads share each), and over three rounds every thread has used every runtime.
            pair = [runtimes[(i + rnd + k * (len(runtimes) // 2)) % len(runtimes)] for k in (0, 1)]
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                errors.append(f"thread {i}, round {rnd}: the other threads never came (one hung)")
                return
            for k, runtime in enumerate(pair):
                try:
                    if runtime == "qemu":
                        with vm_slots:
                            instance(runtime, f"{tag}-{i}-{rnd}-{k}")
                    else:
                        instance(runtime, f"{tag}-{i}-{rnd}-{k}")
                    images(i, rnd * 2 + k)
                except BaseException:
                    errors.append(f"thread {i}, round {rnd}, {runtime}:\n{traceback.format_exc()}")

    def index_reader() -> None:
        # The index is replaced atomically: a reader sees a whole file, never a torn one, and
        # busybox (which nobody removes) never drops out of it.
        while not stop_reader.is_set():
            try:
                names = json.loads((store.root() / "names.json").read_text())
                assert "busybox" in names, "busybox dropped out of the name index"
                index_reads.append(len(names))
            except BaseException:
                errors.append(f"index reader:\n{traceback.format_exc()}")
                return
            stop_reader.wait(0.01)

    barrier = threading.Barrier(THREADS, timeout=ROUND_DEADLINE)
    threads = [threading.Thread(target=worker, args=(i, barrier), name=f"stress-{i}") for i in range(THREADS)]
    reader = threading.Thread(target=index_reader, name="stress-index-reader")
    reader.start()
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(ROUND_DEADLINE * ROUNDS)
        hung = [t.name for t in threads if t.is_alive()]
    finally:
        stop_reader.set()
        reader.join(10)
        _remove_all(tag, started)

    assert not hung, f"threads still running after {ROUND_DEADLINE * ROUNDS} s: {hung}"
    assert not errors, f"{len(errors)} error(s) under concurrent use:\n" + "\n".join(errors)
    assert len(outputs) == THREADS * ROUNDS * 2
    assert set(rt for rt, _, _ in outputs) == set(runtimes)
    wrong = [(rt, want, got) for rt, want, got in outputs if got != want]
    assert not wrong, f"exec returned something else: {wrong}"
    assert index_reads, "the index reader never read the index"

    # Nothing left behind: not in ps, not as runtime state, mount, cgroup, container or process.
    kit.api.wait_for_teardown()

    def leftovers() -> list[str]:
        found = [f"in ps: {n}" for n in kit.ps().name if n.startswith(tag)]
        found += [x for x in lifetime.leftovers(config.SESSION_ID) if tag in x]
        found += [f"process {p.pid} {p.name()}" for p in lifetime.session_processes(config.SESSION_ID)
                  if p.pid not in procs_before and _alive(p)]
        return found

    try:
        wait_until(lambda: not leftovers(), 15, interval=0.2, what="the instances' teardown")
    except kit.KitError:
        pytest.fail(f"left behind: {leftovers()}")
    names_after = json.loads((store.root() / "names.json").read_text())
    assert not [n for n in names_after if tag in n], "a removed image name is still in the index"
    assert "busybox" in names_after


def _alive(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _remove_all(tag: str, started: list[str]) -> None:
    """Whatever a failed round left: its instances and image names (the test's own only)."""
    for name in started:
        try:
            kit.rm(name, force=True)
        except kit.KitError:
            pass
    for n in list(json.loads((store.root() / "names.json").read_text())):
        if tag in n:
            try:
                store.remove(n)
            except kit.KitError:
                pass
