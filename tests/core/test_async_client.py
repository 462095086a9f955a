"""The asyncio client against every connection kind and codec (``kind`` and ``codec``
come from the pairs in conftest.py: the python codec with integrated connections only)."""

from __future__ import annotations

import asyncio

import pytest

import tether
from tests.apps.behaviour import SAMPLES, Behave, Missing, Port, Types
from tests.apps.behaviour import app as behaviour_app
from tests.fixtures.servers import ServerProcess


def make(
    client: tether.AsyncClient, kind: str, request: pytest.FixtureRequest, codec: str
) -> tether.AsyncConnection:
    if kind == "integrated":
        return client.integrated(behaviour_app, codec=codec)
    if kind == "relay":
        return client.relay(request.getfixturevalue("behaviour_relay").nats_url, codec=codec)
    return client.connect(request.getfixturevalue("behaviour_server").url, codec=codec)


def test_async_client(kind: str, codec: str, request: pytest.FixtureRequest) -> None:
    async def scenario() -> None:
        async with tether.AsyncClient(timeout=10) as client:
            conn = make(client, kind, request, codec)
            behave = conn.proxy(Behave)
            assert await behave.greet("ann", times=2) == "hello ann! hello ann!"  # type: ignore[misc]
            assert await behave.async_greet("bo") == "hello bo"  # type: ignore[misc]
            port = SAMPLES["model"][1]
            echoed = await conn.proxy(Types).echo_model(port)  # type: ignore[attr-defined]
            assert isinstance(echoed, Port) and echoed == port
            with pytest.raises(Missing):
                await behave.fail("missing")  # type: ignore[misc]
            with pytest.raises(tether.DeadlineExceeded):
                await conn.proxy(Behave, timeout=0.2).async_sleep(5)  # type: ignore[misc]
            results = await asyncio.gather(*(behave.greet(f"n{i}") for i in range(50)))
            assert results == [f"hello n{i}!" for i in range(50)]
            assert await conn.call("behave.greet", name="dyn") == "hello dyn!"

    asyncio.run(scenario())


def test_async_client_belongs_to_one_loop(behaviour_server: ServerProcess) -> None:
    client = tether.AsyncClient()
    conn = client.connect(behaviour_server.url)
    assert asyncio.run(conn.call("behave.greet", name="a")) == "hello a!"
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(conn.call("behave.greet", name="b"))
