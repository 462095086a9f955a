"""The relay against real NATS servers: load sharing, addressing, errors, headers, restarts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tests.apps.relayed import WhoAmI
from tests.apps.relayed import app as relayed_app
from tests.fixtures.nats import NatsServer
from tests.fixtures.relay import RelayProcess
from tests.relay.conftest import RunAsync
from tether.codec import Codec, decode_any
from tether.server.relay import RelayServer
from tether.transports.nats import AsyncNatsTransport


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


def test_no_responders_is_unavailable(pair: list[RelayProcess], client: tether.Client) -> None:
    url = pair[0].nats_url
    started = time.monotonic()
    with pytest.raises(tether.Unavailable, match=r"no instance serves whoami\.size") as caught:
        client.relay(url, "no-such-instance").call("whoami.size", data="")
    assert time.monotonic() - started < 1.0  # not idempotent: no retry
    assert caught.value.details == {"sent": False}
    # An idempotent call retries until its deadline, then reports what it found.
    started = time.monotonic()
    with pytest.raises(tether.Unavailable, match=r"no instance serves whoami\.instance"):
        client.relay(url, "no-such-instance").proxy(WhoAmI, timeout=0.5).instance()
    assert 0.3 < time.monotonic() - started < 1.5


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
        time.sleep(0.3)
        before = len(results)
        server.kill()  # a crash, then the same port again
        time.sleep(0.3)
        server.start()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(15)
        assert not errors, errors
        assert before > 0 and len(results) > before + 20
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
