"""Healthcheck ``retries`` on runc (kit.compose.health): a service whose check keeps failing turns
``unhealthy`` after ``retries`` counted failures (none counted during ``start_period``), ``ps`` shows
it, and ``up`` waiting on it for a ``service_healthy`` dependant fails at once, not at its timeout."""

from __future__ import annotations

import time

import pytest

import kit
import kit.compose as compose
from kit.errors import ServiceFailed
from tests.conftest import need, unique

#: A database whose healthcheck always fails, saying why on stderr as a real one would.
SICK = """
services:
  db:
    image: busybox
    command: sh -c "echo db process up; exec sleep 600"
    healthcheck:
      test: ["CMD-SHELL", "echo 'db: connection refused' >&2; exit 1"]
      interval: 0.3s
      timeout: 10s
      retries: 3
      start_period: {start_period}
      start_interval: 0.3s
"""
APP = """
  app:
    image: busybox
    command: sleep 600
    depends_on: {db: {condition: service_healthy}}
"""


def test_up_fails_at_once_when_a_dependency_turns_unhealthy():
    need("runc")
    project = unique("kh")
    began = time.monotonic()
    with pytest.raises(ServiceFailed) as e:
        compose.up(SICK.format(start_period="0s") + APP, runtime="runc", project=project, timeout=300)
    took = time.monotonic() - began
    msg = str(e.value)
    assert e.value.service == "db" and "\n" not in msg
    assert "'db'" in msg and "unhealthy" in msg and "failed 3 times in a row" in msg, msg
    assert "db: connection refused" in msg, msg  # the check's own last output
    # 3 checks 0.3 s apart plus three execs on a busy 2-core machine: far below the 300 s timeout
    # (a margin of 60 s), which is what the wait ended on before retries were honoured.
    assert took < 60, took
    assert not [n for n in kit.ps().name if n.startswith(project)]  # all or nothing still


def test_ps_shows_unhealthy_and_the_start_period_does_not_count():
    need("runc")
    project = unique("kh")
    stack = compose.up(SICK.format(start_period="2s"), runtime="runc", project=project, wait=False)
    try:
        assert list(compose.ps(project).health) == ["starting"]
        kit.wait_until(lambda: list(compose.ps(project).health) == ["unhealthy"], 60,
                       what="db to turn unhealthy in ps")
        h = stack.health["db"]
        started = stack.requested + stack.timings["db"]["started"]
        # Checks ran every 0.3 s during the 2 s start period without counting: more checks than retries,
        # and unhealthy only after the period ended.
        assert h.failures == 3 and h.checks > 3 and h.last == "db: connection refused", h
        assert time.time() - started >= 2.0
        assert list(compose.ps(project).status) == ["running"]  # unhealthy is not stopped (as in Compose)
    finally:
        compose.down(project)
