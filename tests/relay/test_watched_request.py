"""The relay transport's watch on its NATS connection, at the scale of one loop iteration.

A real NATS server cannot make a reply and a dropped connection land in the
same event-loop iteration on demand, so these tests hand the transport a
stand-in for nats-py's client whose ``request`` does exactly that (and
waits as nats-py does, with ``asyncio.wait_for``). The transport's link is
primed as :meth:`NatsLink.client` leaves it after connecting.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tether
from tether.transports.nats import AsyncNatsTransport, NatsLink


class _Reply:
    def __init__(self) -> None:
        self.headers = {"tether-status": "200", "content-type": "application/json"}
        self.data = b"1"


class _StandIn:
    """``request`` answers after 10 ms; with ``drop``, the connection drops in the same
    callback (``reply``) or instead of any answer (``never``)."""

    def __init__(self, link: NatsLink, drop: str) -> None:
        self.link = link
        self.drop = drop

    async def request(
        self, subject: str, body: bytes, timeout: float, headers: dict[str, str]
    ) -> Any:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[_Reply] = loop.create_future()

        def answer() -> None:
            if self.drop != "never":
                reply.set_result(_Reply())
            assert self.link.lost is not None
            self.link.lost.set_result(None)  # what NatsLink._on_disconnected does

        loop.call_later(0.01, answer)
        return await asyncio.wait_for(reply, timeout)


def _connected(transport: AsyncNatsTransport, drop: str) -> NatsLink:
    link = transport.link
    loop = asyncio.get_running_loop()
    link._loop, link._lock = loop, asyncio.Lock()
    link.up, link.lost = asyncio.Event(), loop.create_future()
    link.up.set()
    link._nc = _StandIn(link, drop)  # type: ignore[assignment]
    return link


def test_a_drop_with_the_reply_leaves_the_caller_uncancelled() -> None:
    """The reply and the drop arrive together: the call returns the reply, and the
    caller's task carries no cancellation of the transport's afterwards (none
    pending at its next await, none counted), so a later real drop mid-call is
    Unavailable, not a CancelledError."""

    async def main() -> tuple[int, int, tether.Unavailable]:
        transport = AsyncNatsTransport("nats://127.0.0.1:1")
        link = _connected(transport, "reply")
        raw = await transport.send("whoami", "instance", b"{}", {}, 5.0)
        task = asyncio.current_task()
        assert task is not None
        counted = task.cancelling()
        await asyncio.sleep(0.05)  # the caller's own next await
        await link._on_reconnected()  # the connection is back
        link._nc = _StandIn(link, "never")  # type: ignore[assignment]
        with pytest.raises(tether.Unavailable) as caught:
            await transport.send("whoami", "instance", b"{}", {}, 5.0)
        return raw.status, counted, caught.value

    status, counted, error = asyncio.run(main())
    assert status == 200
    assert counted == 0
    assert error.details == {"sent": True}
    assert "broke during the call" in error.message


def test_the_callers_own_cancellation_still_cancels() -> None:
    """A call cancelled by its caller while it waits raises CancelledError, even when
    the connection then drops too."""

    async def main() -> bool:
        transport = AsyncNatsTransport("nats://127.0.0.1:1")
        _connected(transport, "never")
        call = asyncio.create_task(transport.send("whoami", "instance", b"{}", {}, 5.0))
        await asyncio.sleep(0)  # the call is waiting for its reply
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return call.cancelled()

    assert asyncio.run(main())
