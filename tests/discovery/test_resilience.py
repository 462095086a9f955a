"""Retries, ejection, Retry-After, deadlines and selectors of discovered connections
(and, beside them, how long a direct connection may take to connect).

Real replicas (``tests/apps/replica.py`` under ``tether serve``) and dead
addresses are written into a real SQLite registry by the test itself, so
each case controls exactly which instances the client sees.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tests.apps.replica import Replica
from tests.fixtures.servers import ROOT, ServerProcess, free_port
from tether.client.discovery import AsyncDiscoveredTransport, SyncDiscoveredTransport
from tether.client.retry import RetryBudget, RetryPolicy
from tether.errors import StatusCode
from tether.registry import InstanceRecord, OutlierEjector, open_registry
from tether.transports.http_async import AsyncHTTPTransport
from tether.transports.http_sync import SyncHTTPTransport


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


def test_a_retry_after_longer_than_the_time_left_is_answered_at_once(
    tmp_path: Path, registry_url: str
) -> None:
    busy = tmp_path / "busy"
    busy.touch()
    server = ServerProcess("tests.apps.replica:app", env={"REPLICA_BUSY": str(busy)}).start()
    try:
        register(registry_url, {"busy": server.url})
        with tether.Client(timeout=10) as client:
            conn = client.service("replica", registry=registry_url, timeout=0.6)
            conn.call("replica.record", tag="warm-up")
            with pytest.raises(tether.TetherError) as caught:
                conn.call("replica.whoami", idempotent=True)  # Retry-After 1 s > 0.6 s left
            transport = conn.transport
            assert isinstance(transport, SyncDiscoveredTransport)
            failures = dict(transport.balancer.failures)
    finally:
        server.stop()
    # The server's own 503, not a deadline spent waiting for a retry that
    # could not fit: one attempt, answered as it came.
    assert caught.value.code is StatusCode.UNAVAILABLE
    assert "busy" in caught.value.message
    assert failures == {"busy": 1}


def wait_until_known(transport: SyncDiscoveredTransport, count: int) -> None:
    """Start the registry watch of ``transport`` and wait until it knows ``count`` instances."""
    transport.cache.start(transport._loop())
    deadline = time.monotonic() + 10
    while len(transport.cache.records()) < count:
        assert time.monotonic() < deadline, "the instances never showed up"
        time.sleep(0.02)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_retry_after_longer_than_the_time_left_goes_to_another_instance(
    asynchronous: bool, tmp_path: Path, replicas: list[ServerProcess], registry_url: str
) -> None:
    """One instance answers 503 with "Retry-After: 1", more than the 0.8 s deadline
    leaves: it is ejected for that long and the call goes to the other instance
    at once, instead of the 503 being the answer."""
    busy = tmp_path / "busy"
    busy.touch()
    server = ServerProcess("tests.apps.replica:app", env={"REPLICA_BUSY": str(busy)}).start()
    live = pid(replicas[0])
    try:
        register(registry_url, {"a-busy": server.url, "b-live": replicas[0].url})
        if asynchronous:

            async def go() -> tuple[list[str], dict[str, int], bool]:
                async with tether.AsyncClient(timeout=10) as client:
                    conn = client.service("replica", registry=registry_url, timeout=0.8)
                    transport = conn.transport
                    assert isinstance(transport, AsyncDiscoveredTransport)
                    await conn.call("replica.record", tag="warm-up")  # the watch is synced
                    deadline = time.monotonic() + 10
                    while len(transport.cache.records()) < 2:
                        assert time.monotonic() < deadline, "the instances never showed up"
                        await asyncio.sleep(0.02)
                    # Round robin: one of the two calls is sent to "a-busy" first.
                    answers = [await conn.call("replica.whoami", idempotent=True) for _ in range(2)]
                    balancer = transport.balancer
                    return answers, dict(balancer.failures), balancer.ejector.is_ejected("a-busy")

            answers, failures, ejected = asyncio.run(go())
        else:
            with tether.Client(timeout=10) as client:
                conn = client.service("replica", registry=registry_url, timeout=0.8)
                transport = conn.transport
                assert isinstance(transport, SyncDiscoveredTransport)
                wait_until_known(transport, 2)
                answers = [conn.call("replica.whoami", idempotent=True) for _ in range(2)]
                failures = dict(transport.balancer.failures)
                ejected = transport.balancer.ejector.is_ejected("a-busy")
    finally:
        server.stop()
    assert answers == [live, live]
    assert failures == {"a-busy": 1}  # tried once, then left alone
    assert ejected


def test_the_policy_gives_up_when_retry_after_exceeds_the_time_left() -> None:
    policy = RetryPolicy(max_attempts=3)
    sent = tether.Unavailable("busy", {"sent": True})
    assert policy.should_retry(sent, 1, idempotent=True, remaining=5.0, retry_after=1.0)
    assert not policy.should_retry(sent, 1, idempotent=True, remaining=0.6, retry_after=1.0)


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


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An http:// address where a connection never completes, as with a host that
    died or a firewall that drops packets: a socket on loopback that listens but
    never accepts, with its accept queue filled, so that the kernel drops every
    further SYN. (Loopback only: no outside address may be used here.) The
    fixture checks that a connection there does time out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    for _ in range(16):
        try:
            fillers.append(socket.create_connection(address, 0.5))
        except TimeoutError:
            break
    else:
        pytest.fail("the accept queue never filled: no connection timed out")
    try:
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_connection_that_never_completes_is_unavailable_before_sending(
    blackhole: str,
) -> None:
    transport = SyncHTTPTransport(blackhole, connect_timeout=0.3)
    with pytest.raises(tether.Unavailable) as caught:
        transport.send("replica", "whoami", b"{}", {}, 30.0)  # the deadline is far
    assert caught.value.details == {"sent": False, "connect_timeout": True}
    assert "no connection within 0.300 s" in caught.value.message

    async def go() -> tether.Unavailable:
        transport = AsyncHTTPTransport(blackhole, connect_timeout=0.3)
        try:
            with pytest.raises(tether.Unavailable) as caught:
                await transport.send("replica", "whoami", b"{}", {}, 30.0)
            return caught.value
        finally:
            await transport.close()

    error = asyncio.run(go())
    assert error.details == {"sent": False, "connect_timeout": True}


def test_a_direct_connection_may_take_its_whole_deadline_to_connect(blackhole: str) -> None:
    """A direct connection has no other instance to try, so it has no connect
    timeout of its own: a connection that never completes ends with the
    deadline, as DeadlineExceeded (not Unavailable at the 2 s that discovered
    connections allow); ``connect_timeout=`` sets one."""
    with tether.Client() as client:
        with pytest.raises(tether.DeadlineExceeded):
            client.connect(blackhole, timeout=2.5).call("replica.whoami")
        with pytest.raises(tether.Unavailable) as caught:
            client.connect(blackhole, timeout=30, connect_timeout=0.3).call("replica.whoami")
    assert caught.value.details == {"sent": False, "connect_timeout": True}

    async def go() -> tuple[BaseException, BaseException]:
        async with tether.AsyncClient() as client:
            errors: list[BaseException] = []
            for conn in (
                client.connect(blackhole, timeout=2.5),
                client.connect(blackhole, timeout=30, connect_timeout=0.3),
            ):
                try:
                    await conn.call("replica.whoami")
                except tether.RemoteError as exc:
                    errors.append(exc)
            slow, capped = errors
            return slow, capped

    slow, capped = asyncio.run(go())
    assert isinstance(slow, tether.DeadlineExceeded), slow
    assert isinstance(capped, tether.Unavailable), capped
    assert capped.details == {"sent": False, "connect_timeout": True}


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_a_bad_connect_timeout_is_refused_at_once(bad: float) -> None:
    with tether.Client() as client, pytest.raises(ValueError, match="connect_timeout"):
        client.connect("http://127.0.0.1:1", connect_timeout=bad)
    with pytest.raises(ValueError, match="connect_timeout"):
        tether.AsyncClient().connect("http://127.0.0.1:1", connect_timeout=bad)


def test_a_deadline_that_ends_while_connecting_is_deadline_exceeded(
    blackhole: str, registry_url: str
) -> None:
    """Less of the deadline left than the connect timeout: it is the deadline that
    ran out, so DeadlineExceeded, and a discovered connection ejects nobody."""
    with pytest.raises(tether.DeadlineExceeded):
        SyncHTTPTransport(blackhole, connect_timeout=2.0).send("replica", "whoami", b"{}", {}, 0.3)

    async def go() -> None:
        transport = AsyncHTTPTransport(blackhole, connect_timeout=2.0)
        try:
            with pytest.raises(tether.DeadlineExceeded):
                await transport.send("replica", "whoami", b"{}", {}, 0.3)
        finally:
            await transport.close()

    asyncio.run(go())
    register(registry_url, {"a-hole": blackhole})
    with tether.Client() as client:
        conn = client.service("replica", registry=registry_url, timeout=0.5)
        transport = conn.transport
        assert isinstance(transport, SyncDiscoveredTransport)
        wait_until_known(transport, 1)
        with pytest.raises(tether.DeadlineExceeded):
            conn.call("replica.whoami")
        assert not transport.balancer.ejector.is_ejected("a-hole")
        assert dict(transport.balancer.failures) == {}


def test_a_dead_host_is_ejected_and_the_call_goes_elsewhere(
    blackhole: str, replicas: list[ServerProcess], registry_url: str
) -> None:
    register(registry_url, {"a-hole": blackhole, "b-live": replicas[0].url})
    with tether.Client(timeout=20) as client:
        conn = client.service("replica", registry=registry_url, selector="first")
        transport = conn.transport
        assert isinstance(transport, SyncDiscoveredTransport)
        # Not idempotent: retried only because the request was never sent.
        # Without a connect timeout, the connect would use the whole deadline.
        assert conn.call("replica.record", tag="t1") == f"t1@{pid(replicas[0])}"
        assert transport.balancer.ejector.is_ejected("a-hole")
        assert dict(transport.balancer.failures) == {"a-hole": 1}
        assert conn.call("replica.record", tag="t2") == f"t2@{pid(replicas[0])}"  # at once
        assert dict(transport.balancer.failures) == {"a-hole": 1}


def test_an_unreachable_registry_is_reported_as_the_cause(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    url = f"sqlite://{not_a_folder}/registry.db"  # its folder cannot be created
    with tether.Client(timeout=1) as client:
        with pytest.raises(tether.Unavailable) as caught:
            client.service("replica", registry=url).call("replica.whoami")
    assert "none registered" not in caught.value.message
    assert f"no view of 'replica' from the registry {url} yet" in caught.value.message
    assert "RegistryUnavailable: SQLite registry" in caught.value.message  # the real cause


def test_a_call_waits_for_the_first_instance(
    replicas: list[ServerProcess], registry_url: str
) -> None:
    with tether.Client(timeout=30) as client:
        conn = client.service("replica", registry=registry_url)
        transport = conn.transport
        assert isinstance(transport, SyncDiscoveredTransport)
        transport.balancer.wait_for_instance = 30.0  # so no timing matters below
        answers: list[object] = []
        caller = threading.Thread(target=lambda: answers.append(conn.call("replica.whoami")))
        caller.start()
        deadline = time.monotonic() + 10
        while not transport.cache.synced:  # the call found no instance and waits
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert caller.is_alive()
        register(registry_url, {"late": replicas[0].url})
        caller.join(30)
    assert answers == [pid(replicas[0])]


def test_with_nothing_registered_a_call_fails_after_a_short_wait(registry_url: str) -> None:
    with tether.Client(timeout=30) as client:
        conn = client.service("replica", registry=registry_url)
        transport = conn.transport
        assert isinstance(transport, SyncDiscoveredTransport)
        transport.balancer.wait_for_instance = 0.2
        with pytest.raises(tether.Unavailable, match="none registered"):
            conn.call("replica.whoami")  # long before the 30 s deadline


def test_a_re_registered_instance_is_not_ejected_any_more(
    replicas: list[ServerProcess], registry_url: str
) -> None:
    register(registry_url, {"moved": dead_address(), "other": replicas[0].url})
    with tether.Client(timeout=10) as client:
        conn = client.service("replica", registry=registry_url)
        transport = conn.transport
        assert isinstance(transport, SyncDiscoveredTransport)
        balancer = transport.balancer
        balancer.ejector = OutlierEjector(base_seconds=60, max_seconds=60)
        both_seen(conn)
        while not balancer.ejector.is_ejected("moved"):
            conn.call("replica.whoami")  # one of them goes to the dead address
        register(registry_url, {"moved": replicas[1].url})  # a restart, elsewhere
        deadline = time.monotonic() + 5
        while not any(
            r.instance_id == "moved" and r.address == replicas[1].url
            for r in transport.cache.records()
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pids = {conn.call("replica.whoami") for _ in range(4)}
        assert not balancer.ejector.is_ejected("moved")
    assert pids == {pid(replicas[0]), pid(replicas[1])}


_MEMORY_CHILD = """
import asyncio, time
import tether
from tether.registry import InstanceRecord, open_registry

async def register():
    async with open_registry("memory://shared") as registry:
        await registry.register(
            InstanceRecord(instance_id="a", services=["replica"], address="http://127.0.0.1:1"),
            60,
        )

with tether.Client(timeout=5) as client:
    conn = client.service("replica", registry="memory://shared")
    cache = conn.transport.cache
    cache.start(conn.transport._loop())
    assert cache.wait_synced(5)
    asyncio.run(register())  # this thread, not the client's loop thread
    deadline = time.monotonic() + 5
    while not cache.records():
        assert time.monotonic() < deadline, "the watch never saw the registration"
        time.sleep(0.01)
print("seen")
"""


def test_a_named_memory_registry_wakes_a_watch_on_another_thread() -> None:
    # asyncio's debug mode raises on an Event set from a thread that is not
    # its loop's: the registration must hand the wake-up to the loop instead.
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONASYNCIODEBUG": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "seen"
    assert "Non-thread-safe" not in result.stderr


def test_the_self_probe_waits_for_a_server_that_answers(replicas: list[ServerProcess]) -> None:
    from tether.server.probe import answers_healthz, wait_until_serving

    async def go() -> tuple[bool, bool]:
        await asyncio.wait_for(wait_until_serving("0.0.0.0", replicas[0].port), 10)
        nobody = await answers_healthz("127.0.0.1", free_port(), tls=False)
        somebody = await answers_healthz("127.0.0.1", replicas[0].port, tls=False)
        return nobody, somebody

    assert asyncio.run(go()) == (False, True)
