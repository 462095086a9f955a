"""The asyncio HTTP transport (tether.transports.http_async) on its own.

Against a real ``tether serve`` (the replica App, busy on demand) for
``Retry-After``, and against the scripted raw-socket server of
test_http_client.py for connections dropped at chosen moments.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

import tether
from tests.apps.replica import Replica
from tests.core.test_http_client import Handler, RawServer
from tests.fixtures.servers import ServerProcess
from tether.transports.base import RawResponse
from tether.transports.http_async import AsyncHTTPTransport

JSON = {"content-type": "application/json", "accept": "application/json"}


@pytest.fixture
def scripted() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def make(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_retry_after_from_a_real_server(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.touch()
    server = ServerProcess("tests.apps.replica:app", env={"REPLICA_BUSY": str(busy)}).start()

    async def main() -> tuple[RawResponse, RawResponse]:
        transport = AsyncHTTPTransport(server.url)
        try:
            refused = await transport.send("replica", "whoami", b"{}", JSON, 5, idempotent=True)
            busy.unlink()
            served = await transport.send("replica", "whoami", b"{}", JSON, 5)
            return refused, served
        finally:
            await transport.close()

    try:
        refused, served = asyncio.run(main())
    finally:
        server.stop()
    assert refused.status == 503 and b"unavailable" in refused.body
    assert refused.retry_after == 1.0
    assert served.status == 200 and served.retry_after is None


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        (b"3", 3.0, 3.0),
        (b"0.5", 0.5, 0.5),
        (b"IN-60-S", 55.0, 60.0),  # a date 60 s from now, made when the test runs
        (b"Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.0),  # passed: no wait
        (b"soon", None, None),
        (b"-1", None, None),
    ],
    ids=["seconds", "decimal", "date", "past-date", "nonsense", "negative"],
)
def test_retry_after_seconds_or_date(
    scripted: Callable[[Handler], RawServer],
    header: bytes,
    low: float | None,
    high: float | None,
) -> None:
    if header == b"IN-60-S":
        header = formatdate(time.time() + 60, usegmt=True).encode()
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nretry-after: "
        + header
        + b"\r\n\r\nno"
    )

    def handle(conn: socket.socket, index: int) -> None:
        while server.read_request(conn) is not None:
            conn.sendall(answer)

    server = scripted(handle)

    async def main() -> RawResponse:
        transport = AsyncHTTPTransport(server.url)
        try:
            return await transport.request("GET", "/", None, {}, 5)
        finally:
            await transport.close()

    got = asyncio.run(main()).retry_after
    if low is None or high is None:
        assert got is None
    else:
        assert got is not None and low <= got <= high


def test_a_drop_after_sending_is_retried_only_when_idempotent(
    scripted: Callable[[Handler], RawServer],
) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n" + str(index).encode())
        if index % 2 == 0:
            server.read_request(conn)  # the second request on a connection: read, dropped
        else:
            while server.read_request(conn) is not None:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nr")

    server = scripted(handle)

    async def main() -> None:
        transport = AsyncHTTPTransport(server.url)
        try:
            assert (await transport.send("s", "m", b"{}", {}, 5)).body == b"0"
            with pytest.raises(tether.Unavailable) as caught:
                await transport.send("s", "m", b"{}", {}, 5)  # may have run: not retried
            assert caught.value.details == {"sent": True}
            assert (await transport.send("s", "m", b"{}", {}, 5)).body == b"1"  # connection 1
        finally:
            await transport.close()
        assert server.accepted == 2

        transport = AsyncHTTPTransport(server.url)
        try:
            assert (await transport.send("s", "m", b"{}", {}, 5)).body == b"2"  # connection 2
            answer = await transport.send("s", "m", b"{}", {}, 5, idempotent=True)
            assert answer.body == b"3"  # dropped on connection 2, then sent on connection 3
        finally:
            await transport.close()
        assert server.accepted == 4

    asyncio.run(main())


def test_idempotent_calls_through_a_connection_are_retried(
    scripted: Callable[[Handler], RawServer],
) -> None:
    """The flag reaches the transport from the interface (``@tether.method(idempotent=True)``)."""

    def handle(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\n\r\n"
            b'"%d"' % index
        )
        server.read_request(conn)  # every second request on a connection is dropped

    server = scripted(handle)

    async def main() -> None:
        async with tether.AsyncClient(timeout=5) as client:
            replica = client.connect(server.url).proxy(Replica)
            assert await replica.whoami() == "0"  # type: ignore[misc]
            assert await replica.whoami() == "1"  # type: ignore[misc]  # dropped, retried
            with pytest.raises(tether.Unavailable):
                await replica.record("x")  # type: ignore[misc]  # not idempotent: not retried

    asyncio.run(main())
