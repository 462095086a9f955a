"""Relay transport: calls travel as NATS requests to ``tether.rpc.*`` or ``tether.inst.*``.

The body and headers are those of HTTP (``content-type``, ``accept``,
``tether-timeout-ms``, ``authorization``...), sent as NATS headers; the
reply carries the HTTP-equivalent status in ``tether-status``. The NATS
connection (a :class:`NatsLink`) opens on the first call, inside the running
event loop, which it then belongs to; nats-py reconnects by itself after an
outage. Transports made with the same :class:`NatsLinks` pool share one
connection per URL and credentials, closed when the last of them closes.

Every call watches the connection: when it drops while the call waits for
its reply (which is then lost with it), the call ends at once with
:class:`~tether.Unavailable` (``details["sent"]`` True: it may have run)
instead of waiting out its deadline. Idempotent calls are retried within
their deadline when no instance answers (``no responders``), when the
connection is down, or when it broke during the call; other calls fail at
once (``details["sent"]`` False while the connection is down: not sent).
A transport made with ``retry_idempotent=False`` (a discovered connection's,
whose balancer retries on another instance) fails at once when no instance
answers or the connection breaks during a call; an idempotent call still
waits, within its deadline, for a connection that is down, since every
relay instance is behind the same connection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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


class NatsLink:
    """One NATS connection, opened on first use in the running event loop.

    It then belongs to that loop. It tells the calls waiting on it when it
    drops (:attr:`lost`) and whether it is up now (:attr:`up`).

    Args:
        url: ``nats://host:port`` or ``tls://host:port`` (several, comma-separated).
        credentials: how to log in to NATS.
        connect_timeout: seconds to wait for the first connection.
        reconnect_wait: seconds between reconnection attempts.
    """

    def __init__(
        self,
        url: str,
        credentials: NatsCredentials,
        *,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
    ) -> None:
        self.url = url
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self._nc: NatsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self.up: asyncio.Event | None = None  # set while connected
        self.lost: asyncio.Future[None] | None = None  # done when the connection drops
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self._nc else "not connected"
        return f"<NatsLink {self.url} {state}>"

    @property
    def opened(self) -> bool:
        """True once the NATS connection was made (and until :meth:`close`)."""
        return self._nc is not None

    async def client(self) -> NatsClient:
        """The NATS connection, opened on first use in the running loop.

        Raises:
            RuntimeError: called from another event loop than the first call's.
            Unavailable: the link is closed, or NATS refused the connection.
            TetherError: ``unauthenticated`` when NATS rejected the credentials.
            ValueError: a bad URL, or an unreadable credentials or TLS file.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._lock = loop, asyncio.Lock()
        elif loop is not self._loop:
            raise RuntimeError(
                "this AsyncClient belongs to another event loop; make one AsyncClient per loop"
            )
        if self.closed:
            raise Unavailable("the client is closed", {"sent": False})
        if self._nc is not None:
            return self._nc
        assert self._lock is not None
        async with self._lock:
            if self._nc is None:
                self.up, self.lost = asyncio.Event(), loop.create_future()
                self._nc = await connect(
                    self.url,
                    self.credentials,
                    name="tether-client",
                    connect_timeout=self.connect_timeout,
                    reconnect_wait=self.reconnect_wait,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    log_level=logging.DEBUG,  # a client's outages surface as call errors
                )
                self.up.set()
            if self.closed:  # closed while connecting
                nc, self._nc = self._nc, None
                await close_quietly(nc)
                raise Unavailable("the client is closed", {"sent": False})
        return self._nc

    async def _on_disconnected(self) -> None:
        if self.up is not None:
            self.up.clear()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    async def _on_reconnected(self) -> None:
        assert self._loop is not None and self.up is not None
        self.lost = self._loop.create_future()
        self.up.set()

    async def close(self) -> None:
        """Close the NATS connection; later calls through it raise Unavailable."""
        self.closed = True
        nc, self._nc = self._nc, None
        if nc is not None:
            await close_quietly(nc)


class NatsLinks:
    """A pool of :class:`NatsLink`: one per URL, credentials and timeouts, shared by
    the transports that :meth:`acquire` it and closed when the last releases it.

    Thread-safe, so a client's threads may make transports at once; each link
    still belongs to the event loop of its first call.
    """

    def __init__(self) -> None:
        self._links: dict[tuple[str, NatsCredentials, float, float], NatsLink] = {}
        self._users: dict[int, int] = {}  # id(link) -> transports using it
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<NatsLinks {len(self._links)} open>"

    def __len__(self) -> int:
        """The number of links in use."""
        return len(self._links)

    def acquire(
        self,
        url: str,
        credentials: NatsCredentials,
        *,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
    ) -> NatsLink:
        """The link for these settings (made if none is in use), counted as used once more."""
        key = (url, credentials, connect_timeout, reconnect_wait)
        with self._lock:
            link = self._links.get(key)
            if link is None:
                link = self._links[key] = NatsLink(
                    url,
                    credentials,
                    connect_timeout=connect_timeout,
                    reconnect_wait=reconnect_wait,
                )
            self._users[id(link)] = self._users.get(id(link), 0) + 1
            return link

    def release(self, link: NatsLink) -> bool:
        """One user less; True when it was the last (the caller then closes ``link``,
        and the next :meth:`acquire` makes a new one)."""
        with self._lock:
            users = self._users.get(id(link), 0) - 1
            if users > 0:
                self._users[id(link)] = users
                return False
            self._users.pop(id(link), None)
            key = (link.url, link.credentials, link.connect_timeout, link.reconnect_wait)
            if self._links.get(key) is link:
                del self._links[key]
            return True


class AsyncNatsTransport:
    """Calls through a NATS relay, from one event loop.

    Args:
        url: ``nats://host:port`` or ``tls://host:port`` (several, comma-separated).
        instance_id: address only this instance (``tether.inst.{id}``);
            default any instance (``tether.rpc``, load balanced by NATS).
        credentials: how to log in to NATS (default: none).
        connect_timeout: seconds to wait for the first connection.
        reconnect_wait: seconds between reconnection attempts.
        links: share the NATS connection with the other transports of this
            pool that have the same URL, credentials and timeouts (default:
            a connection of this transport's own).
        retry_idempotent: retry idempotent calls within their deadline (see
            :meth:`send`); False for a transport whose caller retries
            elsewhere, as a discovered connection's balancer does: its
            calls then fail at once, and the balancer ejects the instance
            and picks another instead of this transport spending the
            deadline on a dead ``tether.inst.{id}`` subject.

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
        links: NatsLinks | None = None,
        retry_idempotent: bool = True,
    ) -> None:
        self.url = url
        self.instance_id = instance_id
        self.retry_idempotent = retry_idempotent
        self._prefix = subject_prefix(instance_id)
        self._links = links
        options = {"connect_timeout": connect_timeout, "reconnect_wait": reconnect_wait}
        credentials = credentials or NatsCredentials()
        self.link = (
            links.acquire(url, credentials, **options)
            if links is not None
            else NatsLink(url, credentials, **options)
        )
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self.link.opened else "not connected"
        return f"<AsyncNatsTransport {self.url} {self._prefix} {state}>"

    @property
    def opened(self) -> bool:
        """True once its NATS connection was made (and until :meth:`close`)."""
        return not self._closed and self.link.opened

    def _target(self, service: str, method: str) -> str:
        where = f" instance {self.instance_id}" if self.instance_id else ""
        return f"{service}.{method} via {self.url}{where}"

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
            idempotent: retry when no instance answers, the connection is down
                or NATS drops it during the call, until ``timeout`` (unless
                the transport was made with ``retry_idempotent=False``, which
                keeps only the wait for a connection that is down). A call
                that is not idempotent, made while the connection is down,
                fails at once (``sent`` False) rather than waiting for it.

        Returns:
            The reply: status from ``tether-status``, its content type and body.

        Raises:
            Unavailable: no instance serves the method, NATS refused the
                connection, or the connection was down or broke during the call
                (``details["sent"]``: False when the request surely did not
                leave, True when it may have run).
            DeadlineExceeded: no reply within ``timeout``.
            TetherError: ``unauthenticated`` when NATS rejected the
                credentials; ``resource_exhausted`` (413) for a body over
                NATS's ``max_payload``.
            RuntimeError: called from another event loop than the first call's.
        """
        if self._closed:
            raise Unavailable("the client is closed", {"sent": False})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = _FIRST_PAUSE
        retry = idempotent and self.retry_idempotent
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"no answer from {self._target(service, method)} within {timeout:.3f} s"
                )
            try:
                # An idempotent call waits for a connection that is down even
                # without retries: every instance is behind the same link, so
                # failing over to another relay instance would not help.
                msg = await self._attempt(service, method, body, headers, remaining, idempotent)
                return _raw(msg)
            except _Retryable as failure:
                if not retry or deadline - loop.time() <= pause:
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
        retry: bool,
    ) -> Msg:
        """One request; raises _Retryable for a failure an idempotent call may retry
        (``retry``: the call is idempotent, so it may wait for a connection that is down)."""
        subject = f"{self._prefix}.{service}.{method}"
        try:
            async with asyncio.timeout(remaining):
                nc = await self.link.client()
        except TimeoutError:
            raise DeadlineExceeded(
                f"NATS at {self.url} did not accept a connection before the deadline"
            ) from None
        sent = dict(headers)
        if TIMEOUT_HEADER in sent:  # what is left of the deadline, on every attempt
            sent[TIMEOUT_HEADER] = str(max(1, int(remaining * 1000)))
        try:
            return await self._watched_request(nc, subject, body, sent, remaining, retry)
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

    async def _watched_request(
        self,
        nc: NatsClient,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        remaining: float,
        wait_for_link: bool,
    ) -> Msg:
        """A request abandoned when the NATS connection drops while it waits.

        Its reply would be lost with the connection, so the call does not
        wait out its deadline: it raises _Retryable (``sent`` True: it may
        have run), which an idempotent call retries and any other reports.
        While the connection is down the request waits for it to come back
        when ``wait_for_link`` (until ``remaining`` seconds pass), else
        fails at once; both are _Retryable with ``sent`` False.
        """
        link = self.link
        assert link.up is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not link.up.is_set():
            down = _Retryable(
                Unavailable(f"the connection to NATS at {self.url} is down", {"sent": False})
            )
            if not wait_for_link:
                raise down
            try:
                async with asyncio.timeout(remaining):
                    await link.up.wait()
            except TimeoutError:
                raise down from None
        lost = link.lost
        assert lost is not None
        left = remaining - (loop.time() - started)
        # Cancel this task when the connection drops: cheaper on every call than
        # racing the request in a task of its own against ``lost``.
        task = asyncio.current_task()
        assert task is not None
        finished = False  # the request ended: a drop now is none of this call's business
        cancelled = False  # a cancel of ours is outstanding

        def on_lost(_: asyncio.Future[None]) -> None:
            # Scheduled when ``lost`` resolves; remove_done_callback cannot take
            # it back once scheduled, so it may run after the request ended in
            # the same loop iteration: it must not cancel the caller then.
            nonlocal cancelled
            if not finished:
                cancelled = True
                task.cancel()

        lost.add_done_callback(on_lost)
        try:
            return await nc.request(subject, body, timeout=left, headers=headers)
        except asyncio.CancelledError:
            if not cancelled:
                raise  # the caller's own cancellation
            cancelled = False
            if task.uncancel() > 0:  # the caller's own cancellation as well
                raise
        finally:
            finished = True
            lost.remove_done_callback(on_lost)
            if cancelled:
                # The request ended although our cancel reached it (3.11's
                # wait_for returns a reply that was ready when the cancel came):
                # take the cancel back so the caller's task does not keep it.
                task.uncancel()
        raise _Retryable(
            Unavailable(
                f"the connection to NATS at {self.url} broke during the call, which may have run",
                {"sent": True},
            )
        )

    def detach(self) -> NatsLink | None:
        """Stop using the NATS connection (later calls raise Unavailable).

        Returns:
            The link to close when this transport was its last user, else None.
        """
        if self._closed:
            return None
        self._closed = True
        if self._links is None or self._links.release(self.link):
            return self.link
        return None

    async def close(self) -> None:
        """Close this transport; its NATS connection too when no other transport shares it.
        Later calls raise Unavailable."""
        link = self.detach()
        if link is not None:
            await link.close()


class SyncNatsTransport:
    """Calls through a NATS relay from blocking code.

    Each call runs :class:`AsyncNatsTransport` on ``run_async``, the
    client's event-loop thread (see :meth:`tether.Client._run_async`), so
    all the threads that call through this transport share its NATS connection
    (and, with ``links``, the other transports of that pool too).

    Args:
        url: ``nats://host:port`` or ``tls://...``.
        run_async: runs a coroutine with a timeout in seconds and returns its result.
        instance_id, credentials, connect_timeout, reconnect_wait, links,
            retry_idempotent: see :class:`AsyncNatsTransport`.

    Raises:
        ValueError: ``instance_id`` cannot be a NATS subject token.
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
        links: NatsLinks | None = None,
        retry_idempotent: bool = True,
    ) -> None:
        self.transport = AsyncNatsTransport(
            url,
            instance_id=instance_id,
            credentials=credentials,
            connect_timeout=connect_timeout,
            reconnect_wait=reconnect_wait,
            links=links,
            retry_idempotent=retry_idempotent,
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
        """Close this transport; its NATS connection too when no other transport shares it."""
        link = self.transport.detach()
        if link is not None:
            if link.opened:
                self._run_async(link.close(), 5.0)
            else:
                link.closed = True


def _raw(msg: Msg) -> RawResponse:
    """The reply as a RawResponse; a reply without ``tether-status`` counts as a 502."""
    headers = msg.headers or {}
    status = headers.get(STATUS_HEADER, "")
    return RawResponse(
        int(status) if status.isdigit() else 502, headers.get("content-type", ""), msg.data
    )
