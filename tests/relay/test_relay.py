"""The relay against real NATS servers: load sharing, addressing, errors, headers, restarts."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

import tether
from tests.apps.relayed import WhoAmI, WhoAmIImpl
from tests.apps.relayed import app as relayed_app
from tests.fixtures.nats import NatsServer
from tests.fixtures.relay import RelayProcess, wait_for
from tests.relay.conftest import RunAsync
from tether.codec import Codec, decode_any
from tether.server.relay import RelayServer
from tether.transports.nats import AsyncNatsTransport, NatsLinks
from tether.transports.nats_connect import NatsCredentials


def test_two_instances_share_the_load(pair: list[RelayProcess], client: tether.Client) -> None:
    whoami = client.relay(pair[0].nats_url).proxy(WhoAmI)
    counts = Counter(whoami.instance() for _ in range(200))
    assert set(counts) == {p.instance_id for p in pair}
    assert min(counts.values()) >= 40, counts  # a queue group spreads calls at random


def test_an_instance_id_reaches_only_that_instance(
    pair: list[RelayProcess], client: tether.Client
) -> None:
    for relay in pair:
        whoami = client.relay(relay.nats_url, relay.instance_id).proxy(WhoAmI)
        assert {whoami.instance() for _ in range(30)} == {relay.instance_id}
        address = client.relay(f"{relay.nats_url}#{relay.instance_id}")  # the same, as one URL
        assert address.call("whoami.instance") == relay.instance_id
        # Over the instance's own subjects an unknown service is named, as over HTTP.
        with pytest.raises(tether.RemoteError) as caught:
            client.relay(relay.nats_url, relay.instance_id).call("nope.instance")
        assert caught.value.code is tether.StatusCode.UNIMPLEMENTED
        assert "whoami" in caught.value.message


def retries(caplog: pytest.LogCaptureFixture) -> int:
    """How many times the relay transport logged that it retries a call."""
    return sum(1 for r in caplog.records if r.getMessage().startswith("retrying "))


def test_no_responders_is_unavailable(
    pair: list[RelayProcess], client: tether.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tether.relay")
    url = pair[0].nats_url
    with pytest.raises(tether.Unavailable, match=r"no instance serves whoami\.size") as caught:
        client.relay(url, "no-such-instance").call("whoami.size", data="")
    assert retries(caplog) == 0  # not idempotent: no retry
    assert caught.value.details == {"sent": False}
    # An idempotent call retries until its deadline, then reports what it found.
    with pytest.raises(tether.Unavailable, match=r"no instance serves whoami\.instance"):
        client.relay(url, "no-such-instance").proxy(WhoAmI, timeout=1.0).instance()
    assert retries(caplog) >= 2


def test_a_silent_subscriber_is_deadline_exceeded(
    nats_url: str, client: tether.Client, run_async: RunAsync[Any]
) -> None:
    """Something subscribed that never answers: the call ends at its deadline, once."""
    received: list[str] = []

    async def swallow(msg: Msg) -> None:
        received.append(msg.subject)

    async def subscribe() -> Any:
        nc = await nats.connect(nats_url)
        await nc.subscribe("tether.inst.silent.>", cb=swallow)
        await nc.flush()
        return nc

    nc = run_async(subscribe())
    try:
        conn = client.relay(nats_url, "silent")
        with pytest.raises(tether.DeadlineExceeded, match=r"no answer from whoami\.size via"):
            conn.call("whoami.size", data="", timeout=0.5)
        with pytest.raises(tether.DeadlineExceeded, match=r"no answer from whoami\.instance via"):
            conn.proxy(WhoAmI, timeout=0.5).instance()  # idempotent: still sent once
    finally:
        run_async(nc.close())
    assert received == ["tether.inst.silent.whoami.size", "tether.inst.silent.whoami.instance"]


def test_refused_connection_is_unavailable(client: tether.Client) -> None:
    with pytest.raises(
        tether.Unavailable, match=r"cannot connect to NATS at nats://127\.0\.0\.1:9"
    ):
        client.relay("nats://127.0.0.1:9").call("whoami.instance")
    with pytest.raises(ValueError, match="not a NATS URL"):
        client.relay("http://127.0.0.1:9").call("whoami.instance")


def test_headers_reach_the_dispatcher_unchanged(pair: list[RelayProcess]) -> None:
    """The caller's token travels in NATS headers, so the service can check it itself."""
    sent = {
        "content-type": "application/json",
        "accept": "application/json",
        "authorization": "Bearer eyJ0eXAi.payload.signature",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tether-request-id": "req-42",
        "tether-timeout-ms": "5000",
    }

    async def call(instance_id: str | None) -> Any:
        transport = AsyncNatsTransport(pair[0].nats_url, instance_id=instance_id)
        try:
            raw = await transport.send("whoami", "headers", b"{}", sent, 5.0)
        finally:
            await transport.close()
        assert raw.status == 200 and raw.content_type == "application/json"
        return decode_any(raw.body, Codec.JSON)

    for instance_id in (None, pair[1].instance_id):
        received = asyncio.run(call(instance_id))
        for name in ("authorization", "traceparent", "tether-request-id", "content-type"):
            assert received[name] == sent[name]
        assert 0 < int(received["tether-timeout-ms"]) <= 5000


def test_the_callers_token_travels_to_the_service(
    pair: list[RelayProcess], client: tether.Client
) -> None:
    conn = client.relay(pair[0].nats_url, pair[0].instance_id, token="tok.en-1")
    assert conn.call("whoami.headers")["authorization"] == "Bearer tok.en-1"
    assert "authorization" not in client.relay(pair[0].nats_url).call("whoami.headers")


def test_body_limits(pair: list[RelayProcess], client: tether.Client) -> None:
    conn = client.relay(pair[0].nats_url)
    assert conn.proxy(WhoAmI).size(b"x" * 1000) == 1000
    with pytest.raises(tether.RemoteError) as app_limit:  # the App's max_body_size (16 KiB)
        conn.proxy(WhoAmI).size(b"x" * 20_000)
    assert app_limit.value.code is tether.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than the limit of 16384 bytes" in app_limit.value.message
    with pytest.raises(tether.TetherError) as nats_limit:  # NATS's max_payload (1 MiB)
        conn.proxy(WhoAmI).size(b"x" * 2_000_000)
    assert nats_limit.value.code is tether.StatusCode.RESOURCE_EXHAUSTED
    assert "max_payload" in nats_limit.value.message
    assert len(conn.proxy(WhoAmI).blob(100_000)) == 100_000
    with pytest.raises(tether.RemoteError) as too_big:  # a result over NATS's max_payload
        conn.proxy(WhoAmI).blob(2_000_000)
    assert too_big.value.code is tether.StatusCode.RESOURCE_EXHAUSTED
    assert "the result of" in too_big.value.message


def test_async_relay_connection_belongs_to_one_loop(pair: list[RelayProcess]) -> None:
    client = tether.AsyncClient(timeout=5)
    conn = client.relay(pair[0].nats_url)
    assert asyncio.run(conn.call("whoami.echo", n=3)) == 3
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(conn.call("whoami.echo", n=4))


def test_nats_restart_loses_no_idempotent_call(
    nats_server_factory: Callable[..., NatsServer], client: tether.Client
) -> None:
    server = nats_server_factory(jetstream=False)
    with RelayProcess("tests.apps.relayed:app", server.url) as relay:
        echo = client.relay(server.url).proxy(WhoAmI).echo
        results: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def stream(offset: int) -> None:
            i = offset
            while not stop.is_set():
                try:
                    results.append(echo(i) - i)
                except BaseException as exc:
                    errors.append(exc)
                    return
                i += 2

        threads = [threading.Thread(target=stream, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        before = wait_for(lambda: len(results), 20, "calls flowing before the restart")
        server.kill()  # a crash, then the same port again
        server.start()
        after = wait_for(
            lambda: errors or len(results) > before + 20, 30, "20 calls answered after the restart"
        )
        stop.set()
        for thread in threads:
            thread.join(15)
        assert not errors, errors
        assert after is True
        assert set(results) == {0}  # each answer was its own call's
        # The service subscribed again by itself: its instance subject answers too.
        direct = client.relay(server.url, relay.instance_id).proxy(WhoAmI)
        assert direct.instance() == relay.instance_id
        assert "reconnected to NATS" in relay.output


def test_relay_server_in_process(nats_url: str, run_async: RunAsync[Any]) -> None:
    """serve_relay-style use from Python: start, serve, stop; stopped means no responders."""
    relay = RelayServer(relayed_app, nats_url, instance_id="in-process-1")
    assert ("tether.inst.in-process-1.>", "inst.in-process-1") in relay.subjects
    run_async(relay.start())
    try:
        with tether.Client(timeout=5) as client:
            assert client.relay(nats_url, "in-process-1").call("whoami.echo", n=7) == 7
    finally:
        run_async(relay.stop())
    with tether.Client(timeout=5) as client:
        with pytest.raises(tether.Unavailable):
            client.relay(nats_url, "in-process-1").call("whoami.echo", n=7)
    with pytest.raises(ValueError, match="instance id"):
        RelayServer(relayed_app, nats_url, instance_id="a.b")


@tether.service(name="counter")
class Counting:
    """Counts the times it ran."""

    def tick(self) -> int:
        """One more run; returns the runs so far. Not idempotent."""
        ...


class CountingImpl(Counting):
    def __init__(self) -> None:
        self.runs = 0
        self._lock = threading.Lock()

    def tick(self) -> int:
        with self._lock:
            self.runs += 1
            return self.runs


def test_relays_sharing_an_instance_id_run_each_call_once(
    nats_url: str, run_async: RunAsync[Any]
) -> None:
    """``App(instance_id=...)`` served by several processes (``--workers N``): the
    instance subject has a queue group too, so each call runs on one of them."""
    impl = CountingImpl()
    app = tether.App(impl, instance_id="shared-1")
    relays = [RelayServer(app, nats_url) for _ in range(2)]
    for relay in relays:
        run_async(relay.start())
    try:
        with tether.Client(timeout=5) as client:
            conn = client.relay(nats_url, "shared-1")
            answers = [conn.call("counter.tick") for _ in range(40)]
    finally:
        for relay in relays:
            run_async(relay.stop())
    assert impl.runs == 40 and sorted(answers) == list(range(1, 41))
    # Both relays were subscribed and took a share (NATS picks at random).
    assert all(relay.calls_received > 0 for relay in relays)
    assert sum(relay.calls_received for relay in relays) == 40


def test_an_oversized_body_is_counted_in_metrics(nats_url: str, run_async: RunAsync[Any]) -> None:
    app = tether.App(WhoAmIImpl(), instance_id="metrics-1", max_body_size=1000)
    assert app.metrics is not None
    relay = RelayServer(app, nats_url)
    run_async(relay.start())
    try:
        with tether.Client(timeout=5) as client:
            size = client.relay(nats_url, "metrics-1").proxy(WhoAmI).size
            assert size(b"x" * 10) == 10
            with pytest.raises(tether.RemoteError) as caught:
                size(b"x" * 2000)
    finally:
        run_async(relay.stop())
    assert caught.value.code is tether.StatusCode.RESOURCE_EXHAUSTED
    _, ok, codes, _, _ = app.metrics.calls.stats("whoami", "size").snapshot()
    assert ok == 1 and codes == {"resource_exhausted": 1}
    assert 'code="resource_exhausted"' in app.metrics.render().decode()


def test_a_connection_lost_mid_call_fails_at_once(
    nats_server_factory: Callable[..., NatsServer], client: tether.Client, tmp_path: Path
) -> None:
    """NATS dies while a non-idempotent call runs: Unavailable (it may have run), not
    a wait until the deadline; the connection then comes back for later calls."""
    server = nats_server_factory(jetstream=False)
    with RelayProcess("tests.apps.relayed:app", server.url) as relay:
        conn = client.relay(server.url, relay.instance_id, timeout=60)
        assert conn.call("whoami.echo", n=1) == 1
        started = tmp_path / "started"
        outcome: list[BaseException | float] = []

        def call() -> None:
            try:
                outcome.append(conn.call("whoami.pause", seconds=30, started=str(started)))
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_for(started.exists, 20, "the call starting on the server")
        server.kill()
        caller.join(20)  # well before the call's 60 s deadline
        assert not caller.is_alive(), "the call waited for its deadline"
        [error] = outcome
        assert isinstance(error, tether.Unavailable), error
        assert error.details == {"sent": True}
        assert "broke during the call" in error.message
        server.start()
        assert conn.proxy(WhoAmI).echo(2) == 2  # idempotent: waits for the reconnection


def test_calls_that_do_not_retry_fail_at_once_while_nats_is_down(
    nats_server_factory: Callable[..., NatsServer], run_async: RunAsync[Any]
) -> None:
    """While the connection to NATS is down, a call that is not idempotent is
    Unavailable at once, never sent, instead of waiting out its deadline; an
    idempotent call waits for the connection within its deadline, even on a
    transport made with ``retry_idempotent=False`` (a discovered connection's:
    every relay instance is behind the same connection, so failing over to
    another would not help)."""
    server = nats_server_factory(jetstream=False)
    with RelayProcess("tests.apps.relayed:app", server.url) as relay:
        links = NatsLinks()
        retrying = AsyncNatsTransport(server.url, instance_id=relay.instance_id, links=links)
        balanced = AsyncNatsTransport(
            server.url, instance_id=relay.instance_id, links=links, retry_idempotent=False
        )
        assert retrying.link is balanced.link
        assert run_async(retrying.send("whoami", "echo", b'{"n": 1}', {}, 5.0)).status == 200
        server.kill()
        wait_for(lambda: not retrying.link.up.is_set(), 20, "the client seeing NATS go")  # type: ignore[union-attr]

        async def down_calls() -> list[BaseException]:
            errors: list[BaseException] = []
            calls = ((retrying, False, 60.0), (balanced, False, 60.0), (balanced, True, 1.0))
            for transport, idempotent, deadline in calls:
                try:
                    # Long deadlines, bounded below: waiting them out fails the test.
                    async with asyncio.timeout(15):
                        await transport.send(
                            "whoami", "echo", b'{"n": 2}', {}, deadline, idempotent=idempotent
                        )
                except BaseException as exc:  # collected for the asserts
                    errors.append(exc)
            return errors

        errors = run_async(down_calls())
        for error in errors:
            assert isinstance(error, tether.Unavailable), error
            assert error.details == {"sent": False}
            assert "is down" in error.message
        assert len(errors) == 3
        restart = threading.Timer(1.0, server.start)
        restart.start()
        try:  # idempotent: waits for the connection, then one attempt, no retries
            raw = run_async(balanced.send("whoami", "echo", b'{"n": 4}', {}, 30.0, idempotent=True))
            assert raw.status == 200
        except tether.Unavailable as exc:  # connected before the relay had subscribed again
            assert "no instance serves" in exc.message, exc
        restart.join()
        raw = run_async(retrying.send("whoami", "echo", b'{"n": 3}', {}, 30.0, idempotent=True))
        assert raw.status == 200  # idempotent and retrying: waited for the reconnection
        run_async(retrying.close())
        run_async(balanced.close())


def test_transports_of_one_pool_share_a_nats_connection(
    pair: list[RelayProcess], run_async: RunAsync[Any]
) -> None:
    url = pair[0].nats_url
    links = NatsLinks()
    anyone = AsyncNatsTransport(url, links=links)
    one = AsyncNatsTransport(url, instance_id=pair[1].instance_id, links=links)
    other_login = AsyncNatsTransport(url, credentials=NatsCredentials(user="x"), links=links)
    assert anyone.link is one.link and other_login.link is not anyone.link and len(links) == 2

    async def calls() -> list[int]:
        statuses = [
            (await t.send("whoami", "instance", b"{}", {}, 5.0)).status for t in (anyone, one)
        ]
        await anyone.close()  # the other transport still uses the connection
        statuses.append((await one.send("whoami", "instance", b"{}", {}, 5.0)).status)
        return statuses

    assert run_async(calls()) == [200, 200, 200]
    assert one.link.opened and not one.link.closed
    with pytest.raises(tether.Unavailable, match="closed"):
        run_async(anyone.send("whoami", "instance", b"{}", {}, 5.0))
    run_async(one.close())  # the last user: the connection closes
    assert one.link.closed and not one.link.opened
    run_async(other_login.close())
    assert len(links) == 0
    again = AsyncNatsTransport(url, links=links)  # a fresh connection after the last closed
    assert again.link is not one.link
    assert run_async(again.send("whoami", "instance", b"{}", {}, 5.0)).status == 200
    run_async(again.close())


def test_a_clients_relay_connections_share_one_nats_connection(pair: list[RelayProcess]) -> None:
    url = pair[0].nats_url
    with tether.Client(timeout=20) as client:
        conns = [client.relay(url) for _ in range(5)]
        conns.append(client.relay(url, pair[1].instance_id))
        assert {c.call("whoami.echo", n=1) for c in conns} == {1}
        links = {id(c.transport.transport.link) for c in conns}  # type: ignore[attr-defined]
        assert len(links) == 1
        conns[0].close()  # the others keep the shared connection
        assert conns[1].call("whoami.echo", n=2) == 2
