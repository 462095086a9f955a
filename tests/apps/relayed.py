"""An App for the relay tests: it tells which instance answered and what headers arrived."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tether
from tether.context import current_call


@tether.service(name="whoami")
class WhoAmI:
    """Reports on the instance and the call."""

    @tether.method(idempotent=True)
    def instance(self) -> str:
        """The id of the instance that served the call."""
        ...

    @tether.method(idempotent=True)
    async def echo(self, n: int) -> int:
        """Returns ``n``."""
        ...

    @tether.method(idempotent=True)
    def headers(self) -> dict[str, str]:
        """The request headers as the dispatcher received them."""
        ...

    def size(self, data: bytes) -> int:
        """The length of ``data``; not idempotent."""
        ...

    async def pause(self, seconds: float, started: str = "") -> float:
        """Waits ``seconds``, then returns them; first writes the file ``started``
        (a path, when given), so a test knows the call is running."""
        ...

    def blob(self, size: int) -> bytes:
        """``size`` zero bytes."""
        ...


class WhoAmIImpl(WhoAmI):
    def instance(self) -> str:
        return app.instance_id

    async def echo(self, n: int) -> int:
        return n

    def headers(self) -> dict[str, str]:
        call = current_call()
        assert call is not None
        return dict(call.headers)

    def size(self, data: bytes) -> int:
        return len(data)

    async def pause(self, seconds: float, started: str = "") -> float:
        if started:
            Path(started).write_text(app.instance_id)
        await asyncio.sleep(seconds)
        return seconds

    def blob(self, size: int) -> bytes:
        return bytes(size)


app = tether.App(WhoAmIImpl(), title="Relayed", max_body_size=16 * 1024)
