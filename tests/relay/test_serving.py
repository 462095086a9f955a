"""Serving through the relay with ``tether serve --relay`` and calling with ``tether call nats://``."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.apps.relayed import WhoAmI, WhoAmIImpl
from tests.fixtures.relay import RelayProcess, tether_cli, wait_for
from tests.fixtures.servers import ServerProcess
from tests.relay.conftest import RunAsync
from tether.server.relay import serve_relay


def test_serve_http_and_relay_together(nats_url: str, client: tether.Client) -> None:
    """``tether serve --relay URL``: one process answers over HTTP and through NATS."""
    server = ServerProcess("tests.apps.relayed:app", args=["--relay", nats_url]).start()
    try:
        over_http = client.connect(server.url).proxy(WhoAmI).instance()
        # Idempotent: retried until the relay, started by the App's lifespan, subscribed.
        assert client.relay(nats_url, over_http).proxy(WhoAmI).instance() == over_http
    finally:
        server.stop()
    with pytest.raises(tether.Unavailable):
        client.relay(nats_url, over_http).call("whoami.instance")


def test_cli_call_through_the_relay(pair: list[RelayProcess]) -> None:
    url = pair[0].nats_url
    result = tether_cli("call", url, "whoami.echo", "n:=5")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 5
    result = tether_cli("call", f"{url}#{pair[1].instance_id}", "whoami.instance")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == pair[1].instance_id
    result = tether_cli("call", url, "whoami.echo", "n=five", "--codec", "msgpack")
    assert result.returncode == 1 and "invalid_argument" in result.stderr
    result = tether_cli("call", "nats://127.0.0.1:9", "whoami.echo", "n:=1")
    assert result.returncode == 1 and "unavailable" in result.stderr
    result = tether_cli("serve", "tests.apps.relayed:app", "--no-http")
    assert result.returncode == 2 and "--relay" in result.stderr


def test_readme_walkthrough_inventory_with_no_open_port(
    nats_url: str, client: tether.Client
) -> None:
    from examples.inventory.service import Inventory

    with RelayProcess("examples.inventory.app:app", nats_url) as relay:
        assert client.relay(nats_url).proxy(Inventory).get("r1").host == "10.0.0.1"
        result = tether_cli("call", f"{nats_url}#{relay.instance_id}", "inventory.get", "name=r1")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["host"] == "10.0.0.1"
        assert relay.process is not None
        assert listening_sockets(relay.process.pid) == []


def listening_sockets(pid: int) -> list[str]:
    """The TCP sockets (``/proc/net/tcp*`` lines) in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.append(line)
    return listening


def test_serve_relay_stops_gracefully_on_sigterm(
    nats_url: str, client: tether.Client, tmp_path: Path
) -> None:
    """SIGTERM: no new calls are taken, the call in progress still gets its answer."""
    relay = RelayProcess("tests.apps.relayed:app", nats_url).start()
    conn = client.relay(nats_url, relay.instance_id)
    assert conn.call("whoami.echo", n=1) == 1  # the client's NATS connection is open
    started = tmp_path / "started"
    answers: list[object] = []

    def call() -> None:
        try:
            answers.append(conn.call("whoami.pause", seconds=0.5, started=str(started)))
        except tether.TetherError as exc:
            answers.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(started.exists, 20, "the call starting on the server")  # SIGTERM only then
    assert relay.stop() == 0
    caller.join(20)
    assert answers == [0.5]
    assert "stopped" in relay.output
    with pytest.raises(tether.Unavailable):
        conn.call("whoami.echo", n=1)


def test_an_unreachable_nats_is_reported_once_without_a_reconnect_warning() -> None:
    """A relay that never connected says so, and not that it lost a connection."""
    result = tether_cli(
        "serve", "tests.apps.relayed:app", "--relay", "nats://127.0.0.1:9", "--no-http"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "cannot connect to NATS at nats://127.0.0.1:9" in output
    assert "lost the connection" not in output and "reconnecting" not in output


def test_a_failed_start_up_closes_what_the_earlier_hooks_opened(
    nats_url: str, run_async: RunAsync[Any]
) -> None:
    """A start-up hook fails after the relay's: the relay's NATS connection is closed
    again (nobody answers on its subjects), the error propagates, and the App is
    not left started: a second start-up runs every hook again."""
    app = tether.App(WhoAmIImpl(), instance_id="half-started")
    serve_relay(app, nats_url)
    attempts: list[int] = []

    async def fails_once() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("the next hook failed")

    app.on_startup(fails_once)
    with pytest.raises(RuntimeError, match="the next hook failed"):
        run_async(app.startup())
    with tether.Client(timeout=5) as client:
        direct = client.relay(nats_url, "half-started")
        with pytest.raises(tether.Unavailable) as caught:
            direct.call("whoami.echo", n=1)
        assert caught.value.details == {"sent": False}  # no responders: unsubscribed
        run_async(app.startup())
        try:
            assert attempts == [1, 2]
            assert direct.call("whoami.echo", n=2) == 2
        finally:
            run_async(app.shutdown())
