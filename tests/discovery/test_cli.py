"""``tether services``, ``tether health``, ``tether call NAME`` and ``serve --registry``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.discovery.conftest import Start
from tests.fixtures.servers import ROOT, ServerProcess


def tether(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its output piped (so JSON, not tables)."""
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_services_health_and_call_by_name(
    start_instance: Start, registry_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "down"
    flaky = start_instance("tests.apps.flaky:app", env={"FLAKY_DOWN": str(marker)})
    inventory = start_instance()

    listed = tether("services", "--registry", registry_url)
    assert listed.returncode == 0, listed.stderr
    rows = {r["address"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {flaky.url, inventory.url}
    assert rows[inventory.url]["services"] == ["inventory@1"]
    assert rows[flaky.url]["health"] == "passing"

    only = json.loads(tether("services", "inventory", "--registry", registry_url).stdout)
    assert [r["address"] for r in only] == [inventory.url]

    called = tether("call", "inventory", "inventory.get", "name=r1", "--registry", registry_url)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["name"] == "r1"

    assert tether("health", "slow", "--registry", registry_url).returncode == 0
    assert tether("health", flaky.url).returncode == 0
    marker.touch()
    report = tether("health", flaky.url)
    assert report.returncode == 1
    assert json.loads(report.stdout)["checks"]["switch"]["status"] == "failing"
    deadline = time.monotonic() + 10  # the next heartbeat carries it to the registry
    while tether("health", "slow", "--registry", registry_url).returncode != 1:
        assert time.monotonic() < deadline, "the registry never saw the failing check"
        time.sleep(0.3)
    unhealthy = tether("health", "slow", "--registry", registry_url)
    assert "no healthy instance of 'slow'" in unhealthy.stderr
    assert tether("health", "steady", "--registry", registry_url).returncode == 0


def test_services_watch_prints_changes(start_instance: Start, registry_url: str) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "tether.cli", "services", "--watch", "--registry", registry_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        server = start_instance()
        assert watcher.stdout is not None
        event = json.loads(watcher.stdout.readline())
        assert event["event"] == "added" and event["address"] == server.url
        server.stop()  # graceful: deregisters at once
        event = json.loads(watcher.stdout.readline())
        assert event["event"] == "removed" and event["address"] == server.url
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(10)


def test_an_unusable_advertised_address_is_refused(registry_url: str) -> None:
    wildcard = tether(
        "serve", "examples.inventory.app:app", "--host", "0.0.0.0", "--registry", registry_url
    )
    assert wildcard.returncode == 2
    assert "--advertise" in wildcard.stderr


def test_call_by_name_with_nothing_registered(registry_url: str) -> None:
    result = tether(
        "call",
        "inventory",
        "inventory.get",
        "name=r1",
        "--registry",
        registry_url,
        "--timeout",
        "2",
    )
    assert result.returncode == 1
    assert "unavailable" in result.stderr and "no healthy instance" in result.stderr


def test_a_relay_only_instance_is_discovered(
    nats_url: str, tmp_path: Path, registry_url: str
) -> None:
    """``serve --relay --no-http --registry``: advertised as nats://host:port#ID."""
    server = ServerProcess(
        "examples.inventory.app:app",
        args=["--relay", nats_url, "--no-http", "--registry", registry_url, "--lease", "2"],
        env={"TETHER_STATE_DIR": str(tmp_path)},
    )
    server.process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "serve",
            server.target,
            "--log-level",
            "warning",
            *server.args,
        ],
        cwd=ROOT,
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            rows = json.loads(tether("services", "--registry", registry_url).stdout or "[]")
            if rows:
                break
            assert server.process.poll() is None, server.process.stdout.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the relay instance never registered"
            time.sleep(0.2)
        address = rows[0]["address"]
        assert address == f"{nats_url}#{rows[0]['instance_id']}"
        called = tether("call", "inventory", "inventory.get", "name=r1", "--registry", registry_url)
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout)["name"] == "r1"
    finally:
        server.stop()
