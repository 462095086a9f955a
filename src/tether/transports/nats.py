"""Relay transport: calls travel as NATS requests to ``tether.rpc.*`` or ``tether.inst.*``.

The body and headers are those of HTTP (``content-type``, ``accept``,
``tether-timeout-ms``, ``authorization``...), sent as NATS headers; the
reply carries the HTTP-equivalent status in ``tether-status``. The NATS
connection opens on the first call, inside the running event loop, which
the transport then belongs to; nats-py reconnects by itself after an outage.

Idempotent calls are retried within their deadline when no instance answers
(``no responders``) or the connection to NATS breaks while they wait; other
calls fail with :class:`~tether.Unavailable` at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from tether.errors import DeadlineExceeded, StatusCode, TetherError, Unavailable
from tether.server.dispatcher import TIMEOUT_HEADER
from tether.transports.base import RawResponse
from tether.transports.nats_connect import (
    STATUS_HEADER,
    NatsCredentials,
    close_quietly,
    connect,
    subject_prefix,
)

log = logging.getLogger("tether.relay")

RunAsync = Callable[[Coroutine[Any, Any, Any], float | None], Any]

_FIRST_PAUSE = 0.02  # seconds before the first retry; doubles up to _MAX_PAUSE
_MAX_PAUSE = 0.25


class _Retryable(Exception):
    """A failure after which the call surely did not complete: retried if idempotent."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.message)
        self.error = error


class AsyncNatsTransport:
    """Calls through a NATS relay, from one event loop.

    Args:
        url: ``nats://host:port`` or ``tls://host:port`` (several, comma-separated).
        instance_id: address only this instance (``tether.inst.{id}``);
            default any instance (``tether.rpc``, load balanced by NATS).
        credentials: how to log in to NATS (default: none).
        connect_timeout: seconds to wait for the first connection.
        reconnect_wait: seconds between reconnection attempts.

    Raises:
        ValueError: ``instance_id`` cannot be a NATS subject token.
    """

    def __init__(
        self,
        url: str,
        *,
        instance_id: str | None = None,
        credentials: NatsCredentials | None = None,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
    ) -> None:
        self.url = url
        self.instance_id = instance_id
        self._prefix = subject_prefix(instance_id)
        self._credentials = credentials or NatsCredentials()
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._nc: NatsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._up: asyncio.Event | None = None
        self._lost: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._nc else "not connected"
        return f"<AsyncNatsTransport {self.url} {self._prefix} {state}>"

    @property
    def opened(self) -> bool:
        """True once a NATS connection was made (and until :meth:`close`)."""
        return self._nc is not None

    def _target(self, service: str, method: str) -> str:
        where = f" instance {self.instance_id}" if self.instance_id else ""
        return f"{service}.{method} via {self.url}{where}"

    async def _client(self) -> NatsClient:
        """The NATS connection, opened on first use in the running loop."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._lock = loop, asyncio.Lock()
        elif loop is not self._loop:
            raise RuntimeError(
                "this AsyncClient belongs to another event loop; make one AsyncClient per loop"
            )
        if self._closed:
            raise Unavailable("the client is closed", {"sent": False})
        if self._nc is not None:
            return self._nc
        assert self._lock is not None
        async with self._lock:
            if self._nc is None:
                self._up, self._lost = asyncio.Event(), loop.create_future()
                self._nc = await connect(
                    self.url,
                    self._credentials,
                    name="tether-client",
                    connect_timeout=self._connect_timeout,
                    reconnect_wait=self._reconnect_wait,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    log_level=logging.DEBUG,  # a client's outages surface as call errors
                )
                self._up.set()
        return self._nc

    async def _on_disconnected(self) -> None:
        if self._up is not None:
            self._up.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _on_reconnected(self) -> None:
        assert self._loop is not None and self._up is not None
        self._lost = self._loop.create_future()
        self._up.set()

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
        """Request ``{prefix}.{service}.{method}`` and wait for the reply.

        Args:
            service, method: wire names.
            body: the encoded arguments.
            headers: request headers (lower-case names), sent as NATS headers.
            timeout: seconds for the whole exchange, retries included.
            idempotent: retry when no instance answers or NATS drops the
                connection, until ``timeout``.

        Returns:
            The reply: status from ``tether-status``, its content type and body.

        Raises:
            Unavailable: no instance serves the method, NATS refused the
                connection or the connection broke.
            DeadlineExceeded: no reply within ``timeout``.
            TetherError: ``unauthenticated`` when NATS rejected the
                credentials; ``resource_exhausted`` (413) for a body over
                NATS's ``max_payload``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = _FIRST_PAUSE
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"no answer from {self._target(service, method)} within {timeout:.3f} s"
                )
            try:
                msg = await self._attempt(service, method, body, headers, remaining, idempotent)
                return _raw(msg)
            except _Retryable as failure:
                if not idempotent or deadline - loop.time() <= pause:
                    raise failure.error from None
                log.debug("retrying %s.%s in %.2f s: %s", service, method, pause, failure)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    async def _attempt(
        self,
        service: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        remaining: float,
        idempotent: bool,
    ) -> Msg:
        """One request; raises _Retryable when the call surely did not complete."""
        subject = f"{self._prefix}.{service}.{method}"
        try:
            async with asyncio.timeout(remaining):
                nc = await self._client()
        except TimeoutError:
            raise DeadlineExceeded(
                f"NATS at {self.url} did not accept a connection before the deadline"
            ) from None
        sent = dict(headers)
        if TIMEOUT_HEADER in sent:  # what is left of the deadline, on every attempt
            sent[TIMEOUT_HEADER] = str(max(1, int(remaining * 1000)))
        try:
            if not idempotent:
                return await nc.request(subject, body, timeout=remaining, headers=sent)
            return await self._idempotent_request(nc, subject, body, sent, remaining)
        except nats.errors.NoRespondersError:
            raise _Retryable(
                Unavailable(f"no instance serves {self._target(service, method)}", {"sent": False})
            ) from None
        except nats.errors.TimeoutError:
            raise DeadlineExceeded(
                f"no answer from {self._target(service, method)} within {remaining:.3f} s"
            ) from None
        except nats.errors.MaxPayloadError:
            raise TetherError(
                f"the request body of {len(body)} bytes is larger than the NATS server at "
                f"{self.url} accepts (max_payload {nc.max_payload} bytes)",
                code=StatusCode.RESOURCE_EXHAUSTED,
                http_status=413,
            ) from None
        except nats.errors.OutboundBufferLimitError:
            raise _Retryable(
                Unavailable(
                    f"the connection to NATS at {self.url} is down and its buffer is full",
                    {"sent": False},
                )
            ) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            raise Unavailable(
                f"the connection to NATS at {self.url} is closed", {"sent": False}
            ) from None

    async def _idempotent_request(
        self, nc: NatsClient, subject: str, body: bytes, headers: dict[str, str], remaining: float
    ) -> Msg:
        """A request abandoned (retryable) when the NATS connection drops while it waits.

        Its reply might be lost with the connection, and an idempotent call
        may simply run again, so it does not wait out the deadline.
        """
        assert self._up is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not self._up.is_set():
            try:
                async with asyncio.timeout(remaining):
                    await self._up.wait()
            except TimeoutError:
                raise _Retryable(
                    Unavailable(f"the connection to NATS at {self.url} is down", {"sent": False})
                ) from None
        lost = self._lost
        assert lost is not None
        left = remaining - (loop.time() - started)
        request = asyncio.ensure_future(nc.request(subject, body, timeout=left, headers=headers))
        waiters: set[asyncio.Future[Any]] = {request, lost}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if request.done():
                return request.result()
        finally:
            if not request.done():  # the connection dropped, or this call was cancelled
                request.cancel()
        raise _Retryable(
            Unavailable(
                f"the connection to NATS at {self.url} broke during the call", {"sent": True}
            )
        )

    async def close(self) -> None:
        """Close the NATS connection; later calls raise Unavailable."""
        self._closed = True
        nc, self._nc = self._nc, None
        if nc is not None:
            await close_quietly(nc)


class SyncNatsTransport:
    """Calls through a NATS relay from blocking code.

    Each call runs :class:`AsyncNatsTransport` on ``run_async``, the
    client's event-loop thread (see :meth:`tether.Client._run_async`), so
    all the threads that call through this transport share its NATS connection.

    Args:
        url: ``nats://host:port`` or ``tls://...``.
        run_async: runs a coroutine with a timeout in seconds and returns its result.
        instance_id, credentials, connect_timeout, reconnect_wait: see
            :class:`AsyncNatsTransport`.
    """

    def __init__(
        self,
        url: str,
        run_async: RunAsync,
        *,
        instance_id: str | None = None,
        credentials: NatsCredentials | None = None,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
    ) -> None:
        self.transport = AsyncNatsTransport(
            url,
            instance_id=instance_id,
            credentials=credentials,
            connect_timeout=connect_timeout,
            reconnect_wait=reconnect_wait,
        )
        self._run_async = run_async

    def __repr__(self) -> str:
        return f"<SyncNatsTransport {self.transport!r}>"

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
        """Send a call and wait for the reply; see :meth:`AsyncNatsTransport.send`."""
        return self._run_async(  # type: ignore[no-any-return]
            self.transport.send(service, method, body, headers, timeout, idempotent=idempotent),
            timeout,
        )

    def close(self) -> None:
        """Close the NATS connection (no-op when none was opened)."""
        if self.transport.opened:
            self._run_async(self.transport.close(), 5.0)


def _raw(msg: Msg) -> RawResponse:
    """The reply as a RawResponse; a reply without ``tether-status`` counts as a 502."""
    headers = msg.headers or {}
    status = headers.get(STATUS_HEADER, "")
    return RawResponse(
        int(status) if status.isdigit() else 502, headers.get("content-type", ""), msg.data
    )
