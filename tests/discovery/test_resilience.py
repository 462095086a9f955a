"""Retries, ejection, Retry-After, deadlines and selectors of discovered connections.

Real replicas (``tests/apps/replica.py`` under ``tether serve``) and dead
addresses are written into a real SQLite registry by the test itself, so
each case controls exactly which instances the client sees.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tests.apps.replica import Replica
from tests.fixtures.servers import ServerProcess, free_port
from tether.client.discovery import AsyncDiscoveredTransport, SyncDiscoveredTransport
from tether.client.retry import RetryBudget, RetryPolicy
from tether.errors import StatusCode
from tether.registry import InstanceRecord, open_registry


def register(registry_url: str, instances: dict[str, str]) -> None:
    """Register ``{instance_id: address}`` as instances of ``replica`` (60 s leases)."""

    async def go() -> None:
        async with open_registry(registry_url) as registry:
            for instance_id, address in instances.items():
                record = InstanceRecord(
                    instance_id=instance_id, services=["replica"], address=address
                )
                await registry.register(record, 60)

    asyncio.run(go())


def dead_address() -> str:
    """An address where nothing listens: a call there is refused before it is sent."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def registry_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ServerProcess]]:
    """Two replicas that stay up for the whole module."""
    servers = [ServerProcess("tests.apps.replica:app").start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def calls(conn: tether.Connection) -> dict[str, int]:
    transport = conn.transport
    assert isinstance(transport, SyncDiscoveredTransport)
    return dict(transport.balancer.calls)


def test_a_refused_call_goes_to_another_instance_even_when_not_idempotent(
    replicas: list[ServerProcess], registry_url: str
) -> None:
    register(registry_url, {"dead": dead_address(), "live": replicas[0].url})
    with tether.Client(timeout=10) as client:
        conn = client.service("replica", registry=registry_url)
        replica = conn.proxy(Replica)
        results = [replica.record(f"t{i}") for i in range(6)]
    # Never sent to "dead", so retrying the non-idempotent call was safe.
    assert all(r.endswith(f"@{pid(replicas[0])}") for r in results)
    assert calls(conn) == {"live": 6}


def pid(server: ServerProcess) -> str:
    assert server.process is not None
    return str(server.process.pid)


def both_seen(conn: tether.Connection) -> None:
    """Make a first call (it starts the watch) and wait until both instances are known."""
    conn.call("replica.whoami")
    deadline = time.monotonic() + 5
    while len(conn.transport.cache.records()) < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the second instance never showed up"
        time.sleep(0.02)


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_call_broken_mid_way_is_retried_only_when_idempotent(
    idempotent: bool, replicas: list[ServerProcess], registry_url: str
) -> None:
    doomed = ServerProcess("tests.apps.replica:app").start()
    survivor = pid(replicas[0])
    name = "crash_idempotent" if idempotent else "crash"  # as declared on the interface
    try:
        register(registry_url, {"doomed": doomed.url, "live": replicas[0].url})
        with tether.Client(timeout=10) as client:
            conn = client.service("replica", registry=registry_url)
            both_seen(conn)
            crash = getattr(conn.proxy(Replica), name)
            outcomes: list[object] = []
            for _ in range(2):  # round robin: one of the two goes to "doomed" first
                try:
                    outcomes.append(crash(survivor))
                except tether.Unavailable as exc:
                    outcomes.append(exc)
        assert doomed.process is not None and doomed.process.wait(5) == 1  # it died mid-call
    finally:
        doomed.kill()
    if idempotent:
        assert outcomes == [survivor, survivor]  # the broken call ran again on "live"
    else:
        errors = [o for o in outcomes if isinstance(o, tether.Unavailable)]
        assert len(errors) == 1 and "after the call was sent" in errors[0].message
        assert outcomes.count(survivor) == 1  # and it was not run again elsewhere


def test_retry_after_is_honoured(tmp_path: Path, registry_url: str) -> None:
    busy = tmp_path / "busy"
    busy.touch()
    server = ServerProcess("tests.apps.replica:app", env={"REPLICA_BUSY": str(busy)}).start()
    try:
        register(registry_url, {"busy": server.url})
        with tether.Client(timeout=10) as client:
            conn = client.service("replica", registry=registry_url)
            conn.call("replica.record", tag="warm-up")  # the watch is synced
            started = time.monotonic()
            with pytest.raises(tether.Unavailable, match="busy"):
                conn.call("replica.whoami", idempotent=True)
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    # Three attempts, each 503 with "Retry-After: 1": two waits of at least 1 s.
    assert elapsed >= 2.0


def test_the_deadline_covers_every_attempt(tmp_path: Path, registry_url: str) -> None:
    busy = tmp_path / "busy"
    busy.touch()
    server = ServerProcess("tests.apps.replica:app", env={"REPLICA_BUSY": str(busy)}).start()
    try:
        register(registry_url, {"busy": server.url})
        with tether.Client(timeout=10) as client:
            conn = client.service("replica", registry=registry_url, timeout=0.6)
            conn.call("replica.record", tag="warm-up")
            started = time.monotonic()
            with pytest.raises(tether.TetherError) as caught:
                conn.call("replica.whoami", idempotent=True)  # Retry-After 1 s > 0.6 s left
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert caught.value.code in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)
    assert elapsed < 1.0


def test_no_retry_once_the_budget_is_spent() -> None:
    policy = RetryPolicy(max_attempts=5, budget=RetryBudget(max_tokens=4, token_ratio=0.5))
    refused = tether.Unavailable("refused", {"sent": False})
    assert policy.should_retry(refused, 1, idempotent=False, remaining=1.0)
    for _ in range(2):
        policy.budget.on_failure()
    assert not policy.should_retry(refused, 1, idempotent=True, remaining=1.0)  # 2 <= 4/2
    for _ in range(2):
        policy.budget.on_success()
    assert policy.should_retry(refused, 1, idempotent=True, remaining=1.0)  # 3 > 2


def test_which_failures_are_retried() -> None:
    policy = RetryPolicy(max_attempts=3)
    sent = tether.Unavailable("broke", {"sent": True})
    refused = tether.Unavailable("refused", {"sent": False})
    assert policy.should_retry(sent, 1, idempotent=True, remaining=1.0)
    assert not policy.should_retry(sent, 1, idempotent=False, remaining=1.0)
    assert policy.should_retry(refused, 2, idempotent=False, remaining=1.0)
    assert not policy.should_retry(refused, 3, idempotent=True, remaining=1.0)  # max_attempts
    assert not policy.should_retry(refused, 1, idempotent=True, remaining=0.0)  # deadline
    invalid = tether.TetherError("bad", code=StatusCode.INVALID_ARGUMENT)
    assert not policy.should_retry(invalid, 1, idempotent=True, remaining=1.0)


def test_backoff_grows_with_full_jitter_and_yields_to_retry_after() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, rng=random.Random(7))
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)):
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # the whole range is used
    assert policy.backoff(1, retry_after=2.0) == 2.0


@pytest.mark.parametrize("selector", ["first", "random", "least_outstanding"])
def test_selectors(selector: str, replicas: list[ServerProcess], registry_url: str) -> None:
    register(registry_url, {"a": replicas[0].url, "b": replicas[1].url})
    with tether.Client(timeout=10) as client:
        conn = client.service("replica", registry=registry_url, selector=selector)
        both_seen(conn)
        pids = {conn.call("replica.whoami") for _ in range(40)}
    both = {pid(s) for s in replicas}
    if selector == "first":
        assert len(pids) == 1 and pids <= both
    else:
        assert pids == both  # random: (1/2)^39 to miss one; least_outstanding ties at random


def test_an_unknown_selector_is_refused_at_once(registry_url: str) -> None:
    with tether.Client() as client, pytest.raises(ValueError, match="selector"):
        client.service("replica", registry=registry_url, selector="fastest")


def test_the_async_client_balances_and_retries(
    replicas: list[ServerProcess], registry_url: str
) -> None:
    register(registry_url, {"a": replicas[0].url, "dead": dead_address(), "b": replicas[1].url})

    async def go() -> tuple[set[str], dict[str, int]]:
        async with tether.AsyncClient(timeout=10) as client:
            conn = client.service("replica", registry=registry_url)
            replica = conn.proxy(Replica)
            pids = {await replica.whoami() for _ in range(12)}
            transport = conn.transport
            assert isinstance(transport, AsyncDiscoveredTransport)
            return pids, dict(transport.balancer.calls)

    pids, counted = asyncio.run(go())
    assert pids == {pid(s) for s in replicas}
    assert "dead" not in counted and sum(counted.values()) == 12


def test_the_python_codec_is_refused_for_discovered_connections(registry_url: str) -> None:
    with tether.Client() as client, pytest.raises(ValueError, match="integrated"):
        client.service("replica", registry=registry_url, codec="python")


def test_a_bad_registry_url_is_refused_at_once() -> None:
    with tether.Client() as client, pytest.raises(ValueError, match="unknown registry URL"):
        client.service("replica", registry="mysql://db.example.org/registry")


def test_connections_to_instances_that_went_away_are_closed(
    replicas: list[ServerProcess], registry_url: str
) -> None:
    register(registry_url, {"a": replicas[0].url})
    with tether.Client(timeout=10) as client:
        conn = client.service("replica", registry=registry_url)
        assert conn.call("replica.whoami") == pid(replicas[0])
        transport = conn.transport
        assert isinstance(transport, SyncDiscoveredTransport)

        async def swap() -> None:
            async with open_registry(registry_url) as registry:
                await registry.deregister("a")

        asyncio.run(swap())
        register(registry_url, {"b": replicas[1].url})
        deadline = time.monotonic() + 5
        while [r.instance_id for r in transport.cache.records()] != ["b"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert conn.call("replica.whoami") == pid(replicas[1])
        assert list(transport._transports) == [("b", replicas[1].url)]
