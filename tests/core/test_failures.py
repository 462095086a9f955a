"""Failures around the call: dead servers, refused connections, readiness."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import tether
from tests.apps.flaky import Slow
from tests.fixtures.servers import ServerProcess, free_port


def test_connection_refused_is_unavailable() -> None:
    with tether.Client(timeout=5) as client:
        conn = client.connect(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(tether.Unavailable) as caught:
            conn.call("slow.wait", seconds=0)
    assert caught.value.code is tether.StatusCode.UNAVAILABLE
    assert caught.value.details == {"sent": False}


def test_server_killed_mid_call_is_unavailable_quickly() -> None:
    server = ServerProcess("tests.apps.flaky:app").start()
    outcome: list[BaseException] = []

    def call() -> None:
        with tether.Client(timeout=20) as client:
            try:
                client.connect(server.url).proxy(Slow).wait(10)
            except BaseException as exc:
                outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    server.kill()
    thread.join(15)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], tether.Unavailable)
    assert outcome[0].details == {"sent": True}  # it may have run: not retried


def test_pooled_connection_survives_a_server_restart() -> None:
    port = free_port()
    server = ServerProcess("tests.apps.flaky:app", port=port).start()
    with tether.Client(timeout=10) as client:
        slow = client.connect(server.url).proxy(Slow)
        assert slow.wait(0) == 0
        server.stop()
        server = ServerProcess("tests.apps.flaky:app", port=port).start()
        assert slow.wait(0) == 0  # the stale pooled connection is noticed, not reused
    server.stop()


def readyz(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_readiness_reports_each_check(tmp_path: Path) -> None:
    down, hang = tmp_path / "down", tmp_path / "hang"
    server = ServerProcess(
        "tests.apps.flaky:app", env={"FLAKY_DOWN": str(down), "FLAKY_HANG": str(hang)}
    ).start()
    try:
        status, body = readyz(server.url)
        assert status == 200 and body["status"] == "ready"
        down.touch()
        status, body = readyz(server.url)
        assert status == 503
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["switch"]["status"] == "failing"
        assert checks["slow_check"]["status"] == "passing"
        assert body["services"] == {"slow": "failing", "steady": "passing"}
        down.unlink()
        hang.touch()
        started = time.monotonic()
        status, body = readyz(server.url)
        assert status == 503 and time.monotonic() - started < 2
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert "timed out" in checks["slow_check"]["error"]
        assert body["services"] == {"slow": "failing", "steady": "failing"}  # covers all
        hang.unlink()
        assert readyz(server.url)[0] == 200
    finally:
        server.stop()
