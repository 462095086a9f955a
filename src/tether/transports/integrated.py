"""In-process transport: hands the encoded call to an App's dispatcher.

Only the network is skipped: the call is encoded, validated, dispatched and
decoded exactly as over HTTP, so a test passes the same against both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from tether.errors import DeadlineExceeded
from tether.transports.base import RawResponse

if TYPE_CHECKING:
    from tether.codec import Codec
    from tether.interface import MethodSpec
    from tether.server.app import App

RunAsync = Callable[[Coroutine[Any, Any, Any], float | None], Any]


class SyncIntegratedTransport:
    """Calls an App in this process from blocking code.

    Sync methods run inline in the caller's thread (the fast path: no thread
    hop); async methods run on ``run_async``, the client's event-loop thread.
    """

    def __init__(self, app: App, run_async: RunAsync) -> None:
        self.app = app
        self._run_async = run_async

    def __repr__(self) -> str:
        return f"<SyncIntegratedTransport {self.app!r}>"

    def send(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """Dispatch the call in-process; never touches the network."""
        return self.app.dispatcher.dispatch_sync(service, method, body, headers, self._run_async)

    def send_local(
        self, service: str, method: str, body: bytes, headers: Mapping[str, str], codec: Codec
    ) -> bytes | RawResponse:
        """:meth:`send` for a caller that sends and accepts ``codec``: the result's
        bytes on success, else the error response (see :meth:`Dispatcher.dispatch_local`)."""
        return self.app.dispatcher.dispatch_local(
            service, method, body, headers, codec, self._run_async
        )

    def invoke_local(
        self, spec: MethodSpec, arguments: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[Any, RawResponse | None]:
        """A ``python``-codec call: no encoding (see :meth:`Dispatcher.invoke_local`)."""
        return self.app.dispatcher.invoke_local(spec, arguments, headers, self._run_async)

    def request(
        self,
        verb: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """Send one HTTP request to the App's ASGI interface in-process (the
        routes besides RPC calls, e.g. the jobs API), on the client's loop thread.

        Raises:
            DeadlineExceeded: no answer within ``timeout`` seconds.
        """
        answer: RawResponse = self._run_async(
            asgi_request(self.app, verb, path, body, headers, timeout), timeout
        )
        return answer

    def close(self) -> None:
        """Nothing to release: the App belongs to its owner."""


class AsyncIntegratedTransport:
    """Calls an App in this process from asyncio code (sync methods go to its threads)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __repr__(self) -> str:
        return f"<AsyncIntegratedTransport {self.app!r}>"

    async def send(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """Dispatch the call in-process; ``timeout`` also bounds the wait here."""
        try:
            async with asyncio.timeout(timeout + 0.5):
                return await self.app.dispatcher.dispatch(service, method, body, headers)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{service}.{method}: no answer within {timeout:.3f} s"
            ) from None

    async def invoke_local(
        self,
        spec: MethodSpec,
        arguments: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout: float,
    ) -> tuple[Any, RawResponse | None]:
        """A ``python``-codec call: no encoding (see :meth:`Dispatcher.invoke_local`)."""
        try:
            async with asyncio.timeout(timeout + 0.5):
                return await self.app.dispatcher.invoke_local_async(spec, arguments, headers)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{spec.qualified_name}: no answer within {timeout:.3f} s"
            ) from None

    async def request(
        self,
        verb: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
    ) -> RawResponse:
        """Send one HTTP request to the App's ASGI interface in-process; see
        :meth:`SyncIntegratedTransport.request`."""
        return await asgi_request(self.app, verb, path, body, headers, timeout)

    async def close(self) -> None:
        """Nothing to release: the App belongs to its owner."""


async def asgi_request(
    app: App,
    verb: str,
    path: str,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
) -> RawResponse:
    """Run one HTTP request through ``app`` as an ASGI server would, without a socket.

    ``path`` may carry a query string. The request's body arrives at once; a
    later ``receive`` waits until the response is complete (so long polls see
    a connected client).

    Raises:
        DeadlineExceeded: no complete answer within ``timeout`` seconds.
    """
    path_only, _, query = path.partition("?")
    data = body or b""
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw_headers.append((b"content-length", str(len(data)).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": verb,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 0),
        "server": ("integrated", 0),
    }
    delivered = False
    finished = asyncio.Event()
    status = 500
    content_type = ""
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": data, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal status, content_type
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for key, value in message.get("headers", []):
                if key.lower() == b"content-type":
                    content_type = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    try:
        async with asyncio.timeout(timeout + 0.5):
            await app(scope, receive, send)
    except TimeoutError:
        raise DeadlineExceeded(f"{verb} {path_only}: no answer within {timeout:.3f} s") from None
    finally:
        finished.set()
    return RawResponse(status, content_type, b"".join(chunks))
