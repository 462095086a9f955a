"""``tether services``, ``tether health``, ``tether call NAME`` and ``serve --registry``."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import queue
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import IO, Any

from tests.discovery.conftest import Start
from tests.fixtures.nats import free_port
from tests.fixtures.servers import ROOT, ServerProcess
from tether import Client
from tether.registry import open_registry
from tether.settings import Settings


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


class Lines:
    """Lines of a child's output, read by a thread, so that a test waits for one
    with a deadline instead of blocking on ``readline()``."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)

    def next_json(self, timeout: float = 20.0) -> Any:
        try:
            return json.loads(self._lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None


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
        assert watcher.stdout is not None
        lines = Lines(watcher.stdout)
        server = start_instance()
        event = lines.next_json()
        assert event["event"] == "added" and event["address"] == server.url
        server.stop()  # graceful: deregisters at once
        event = lines.next_json()
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


def in_terminal(*args: str, columns: int = 160) -> str:
    """Run the CLI with its output on a pseudo-terminal ``columns`` wide (so
    tables, not JSON) and return what it printed, without colour codes."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    for name in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tether.cli", *args],
        cwd=ROOT,
        stdout=terminal,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())


def test_services_prints_a_table_in_a_terminal(start_instance: Start, registry_url: str) -> None:
    server = start_instance()
    instance_id = json.loads(tether("services", "--registry", registry_url).stdout)[0][
        "instance_id"
    ]
    text = in_terminal("services", "--registry", registry_url)
    header = next(line for line in text.splitlines() if "service" in line and "health" in line)
    for column in ("service", "instance", "address", "health", "last heartbeat (UTC)"):
        assert column in header
    [row] = [line for line in text.splitlines() if instance_id in line]
    assert "inventory v1" in row and server.url in row and "passing" in row
    assert re.search(r"\b\d\d:\d\d:\d\d\b", row)  # the heartbeat's time of day
    assert not text.lstrip().startswith("[")  # a table, not JSON


def test_health_timeout_bounds_a_service_name_check() -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nobody there: NATS itself would try for 5 s
    result = tether("health", "inventory", "--registry", url, "--timeout", "1")
    assert result.returncode == 1
    assert "no answer within 1 s" in result.stderr


def test_health_wait_waits_for_enough_healthy_instances(
    start_instance: Start, registry_url: str
) -> None:
    waiting = subprocess.Popen(
        [
            *(sys.executable, "-m", "tether.cli", "health", "inventory"),
            *("--registry", registry_url, "--wait", "--min-healthy", "2", "--timeout", "60"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        start_instance()
        time.sleep(0.5)
        assert waiting.poll() is None  # one is not enough
        start_instance()
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert len(json.loads(out)["instances"]) == 2


def _listed(url: str) -> list[str]:
    async def go() -> list[str]:
        async with open_registry(url) as registry:
            return [r.address for r in await registry.list()]

    return asyncio.run(go())


def test_the_registry_comes_from_tether_registry_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    env = {"TETHER_REGISTRY_URL": url, "TETHER_STATE_DIR": str(tmp_path / "state")}
    server = ServerProcess("examples.inventory.app:app", env=env).start()  # no --registry
    try:
        deadline = time.monotonic() + 20
        while (listed := json.loads(tether("services", env=env).stdout)) == []:
            assert time.monotonic() < deadline, "never registered in TETHER_REGISTRY_URL"
            time.sleep(0.2)
        assert [row["address"] for row in listed] == [server.url]
        assert _listed(url) == [server.url]
        assert not (tmp_path / "state" / "registry.db").exists()
        called = tether("call", "inventory", "inventory.get", "name=r1", env=env)
        assert called.returncode == 0, called.stderr
    finally:
        server.stop()


def test_advertise_alone_registers_in_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"TETHER_STATE_DIR": str(state)}
    port = free_port()
    server = ServerProcess(
        "examples.inventory.app:app",
        port=port,
        args=["--advertise", f"http://localhost:{port}"],  # and no --registry
        env=env,
    ).start()
    try:
        default = f"sqlite:///{state / 'registry.db'}"
        deadline = time.monotonic() + 20
        while _listed(default) != [f"http://localhost:{port}"]:
            assert time.monotonic() < deadline, "never registered in the state directory"
            time.sleep(0.2)
        rows = json.loads(tether("services", env=env).stdout)  # no --registry either
        assert [row["address"] for row in rows] == [f"http://localhost:{port}"]
        # A client finds it without registry=: the same default.
        with Client(timeout=10, settings=Settings(state_dir=state)) as client:
            assert client.service("inventory").call("inventory.get", name="r1")["name"] == "r1"
    finally:
        server.stop()
