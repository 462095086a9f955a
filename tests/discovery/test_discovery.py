"""Discovery with real instances: balancing, kill -9, restarts, readiness, leases.

Three instances of the inventory example register in a real registry (an
SQLite file, and NATS JetStream KV); a client resolves ``inventory`` by name.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from examples.inventory.service import Inventory

import tether
from tests.apps.flaky import Slow
from tests.apps.replica import Replica
from tests.discovery.conftest import Start
from tether.client.discovery import SyncDiscoveredTransport
from tether.registry import OutlierEjector, open_registry


def calls_by_instance(conn: tether.Connection) -> dict[str, int]:
    transport = conn.transport
    assert isinstance(transport, SyncDiscoveredTransport)
    return dict(transport.balancer.calls)


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout} s")


def test_round_robin_spreads_calls_over_three_instances(
    start_instance: Start, registry_url: str
) -> None:
    for _ in range(3):
        start_instance()
    with tether.Client(timeout=10) as client:
        conn = client.service("inventory", registry=registry_url)
        inventory = conn.proxy(Inventory)
        wait_until(
            lambda: (
                len(conn.transport.cache.records()) == 3  # type: ignore[attr-defined]
                if inventory.get("r1")
                else False
            )
        )
        before = calls_by_instance(conn)
        for _ in range(30):
            assert inventory.get("r1").name == "r1"
        after = calls_by_instance(conn)
        spread = {k: after[k] - before.get(k, 0) for k in after}
    assert len(spread) == 3
    assert sorted(spread.values()) == [10, 10, 10]


def test_kill_9_during_a_stream_of_idempotent_calls_loses_none(
    start_instance: Start, registry_url: str
) -> None:
    servers = [start_instance() for _ in range(3)]
    errors: list[BaseException] = []
    done = 0
    stop = threading.Event()

    def stream() -> None:
        nonlocal done
        with tether.Client(timeout=10) as client:
            inventory = client.service("inventory", registry=registry_url).proxy(Inventory)
            while not stop.is_set():
                try:
                    assert inventory.get("sw1").platform == "nxos"
                    done += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    thread = threading.Thread(target=stream)
    thread.start()
    wait_until(lambda: done > 20)
    killed = _instance_id(servers[1].url)
    servers[1].kill()
    at_kill = done
    # The stream goes on until the dead instance's lease ended and it left the registry.
    wait_until(lambda: killed not in listed(registry_url), timeout=30)
    wait_until(lambda: done > at_kill + 20, timeout=30)
    stop.set()
    thread.join(15)
    assert errors == []
    assert done > at_kill + 20  # the stream went on


def test_a_restarted_instance_is_used_again(start_instance: Start, registry_url: str) -> None:
    servers = [start_instance() for _ in range(3)]
    with tether.Client(timeout=10) as client:
        conn = client.service("inventory", registry=registry_url)
        inventory = conn.proxy(Inventory)
        wait_until(lambda: inventory.get("r1") and len(conn.transport.cache.records()) == 3)  # type: ignore[attr-defined]
        port = servers[0].port
        servers[0].kill()
        for _ in range(10):
            inventory.get("r1")
        restarted = start_instance(port=port)  # same address, new instance id
        new_id = _instance_id(restarted.url)

        def used() -> bool:
            inventory.get("r1")
            return calls_by_instance(conn).get(new_id, 0) > 0

        wait_until(used, timeout=15)


def listed(registry_url: str) -> list[str]:
    """Instance ids the registry lists now."""

    async def go() -> list[str]:
        async with open_registry(registry_url) as registry:
            return [r.instance_id for r in await registry.list()]

    return asyncio.run(go())


def _instance_id(url: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        return str(json.loads(r.read())["instance_id"])


def test_a_failing_readiness_check_takes_an_instance_out_of_rotation(
    start_instance: Start, registry_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "down"
    sick = start_instance("tests.apps.flaky:app", env={"FLAKY_DOWN": str(marker)})
    well = start_instance("tests.apps.flaky:app")
    sick_id, well_id = _instance_id(sick.url), _instance_id(well.url)
    with tether.Client(timeout=10) as client:
        conn = client.service("slow", registry=registry_url)
        slow = conn.proxy(Slow)
        wait_until(lambda: slow.wait(0) == 0 and sick_id in calls_by_instance(conn))
        marker.touch()
        records = conn.transport.cache.records  # type: ignore[attr-defined]
        wait_until(
            lambda: any(r.instance_id == sick_id and not r.is_healthy("slow") for r in records())
        )
        sick_record = next(r for r in records() if r.instance_id == sick_id)
        assert sick_record.is_healthy("steady")  # the failing check is not one it depends on
        before = calls_by_instance(conn)
        for _ in range(10):
            slow.wait(0)
        after = calls_by_instance(conn)
        assert after.get(sick_id, 0) == before.get(sick_id, 0)
        assert after[well_id] - before.get(well_id, 0) == 10
        marker.unlink()  # recovers: back in rotation

        def back() -> bool:
            slow.wait(0)
            return calls_by_instance(conn).get(sick_id, 0) > after.get(sick_id, 0)

        wait_until(back)


def test_no_instance_is_unavailable(registry_url: str) -> None:
    with tether.Client(timeout=2) as client:
        with pytest.raises(tether.Unavailable, match="no healthy instance of 'inventory'"):
            client.service("inventory", registry=registry_url).call("inventory.get", name="r1")


def test_graceful_shutdown_deregisters(start_instance: Start, registry_url: str) -> None:
    server = start_instance(lease="30")
    with tether.Client(timeout=10) as client:
        conn = client.service("inventory", registry=registry_url)
        conn.call("inventory.get", name="r1")
        records = conn.transport.cache.records  # type: ignore[attr-defined]
        assert len(records()) == 1
        server.stop()  # SIGTERM: drain, then deregister
        wait_until(lambda: records() == [], timeout=5.0)  # long before the 30 s lease ends


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_call_in_flight_finishes_before_the_instance_deregisters(
    sig: signal.Signals, start_instance: Start, registry_url: str, tmp_path: Path
) -> None:
    server = start_instance("tests.apps.replica:app", lease="30")
    instance_id = _instance_id(server.url)
    wait_until(lambda: instance_id in listed(registry_url))
    marker = tmp_path / "call"
    answers: list[object] = []

    def linger() -> None:
        with tether.Client(timeout=60) as client:
            answers.append(client.connect(server.url).proxy(Replica).linger(str(marker)))

    caller = threading.Thread(target=linger)
    caller.start()
    wait_until(Path(f"{marker}.started").exists)
    assert server.process is not None
    server.process.send_signal(sig)

    def refuses() -> bool:  # the server stopped taking connections: it is draining
        try:
            socket.create_connection(("127.0.0.1", server.port), 0.5).close()
        except OSError:
            return True
        return False

    wait_until(refuses)
    assert instance_id in listed(registry_url)  # still registered while it drains
    Path(f"{marker}.release").touch()
    caller.join(30)
    assert answers == [True]  # answered, and registered until it had
    # uvicorn re-raises the signal once it shut down gracefully.
    assert server.process.wait(20) in (0, -sig)
    assert instance_id not in listed(registry_url)  # deregistered (the lease is 30 s)


def test_a_restart_with_the_same_instance_id_is_used_again_at_once(
    start_instance: Start, registry_url: str
) -> None:
    other = start_instance("tests.apps.replica:app")
    fixed = start_instance("tests.apps.replica:app", env={"REPLICA_ID": "fixed"})
    port = fixed.port
    with tether.Client(timeout=10) as client:
        conn = client.service("replica", registry=registry_url)
        transport = conn.transport
        assert isinstance(transport, SyncDiscoveredTransport)
        # A long ejection: only forgetting it can bring "fixed" back during the test.
        transport.balancer.ejector = OutlierEjector(base_seconds=120, max_seconds=120)
        replica = conn.proxy(Replica)
        wait_until(lambda: replica.whoami() and len(transport.cache.records()) == 2)
        [before] = [r for r in transport.cache.records() if r.instance_id == "fixed"]
        fixed.kill()
        wait_until(lambda: replica.whoami() and transport.balancer.ejector.is_ejected("fixed"))
        restarted = start_instance("tests.apps.replica:app", port=port, env={"REPLICA_ID": "fixed"})
        wait_until(
            lambda: any(
                r.instance_id == "fixed" and r.registered_at > before.registered_at
                for r in transport.cache.records()
            )
        )
        pids = {replica.whoami() for _ in range(4)}
        assert not transport.balancer.ejector.is_ejected("fixed")
    assert restarted.process is not None and other.process is not None
    assert pids == {str(restarted.process.pid), str(other.process.pid)}
