"""asyncio HTTP/1.1 transport on aiohttp.

aiohttp sustains about 24 times the concurrent call rate of
``httpx.AsyncClient`` (DESIGN.md, "Library choices"). The session is made
lazily inside the running event loop, which the transport then belongs to.
Given a ``connect_timeout``, opening a connection gets at most that much of
a call's deadline, as in :mod:`tether.transports.http_sync`: a host that
drops the packets is then :class:`~tether.errors.Unavailable` with ``sent``
False; without one (or with less of the deadline left) the deadline bounds
it, and running out of it is :class:`~tether.errors.DeadlineExceeded`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

import aiohttp

from tether.errors import DeadlineExceeded, Unavailable
from tether.transports.base import RawResponse, check_seconds, retry_after_seconds


class AsyncHTTPTransport:
    """A keep-alive connection pool to one base URL, for one event loop.

    Args:
        url: ``http://host:port[/prefix]`` or ``https://...``.
        ssl_context: for ``https``; default the system's trust store.
        max_connections: connections open at once to this URL.
        connect_timeout: seconds a new connection may take, TCP and TLS
            handshakes included; slower is ``Unavailable`` with ``sent``
            False (and ``connect_timeout`` True). Default None: no limit but
            the call's deadline. When less of the deadline is left, the
            deadline bounds the connection and ending it is ``DeadlineExceeded``.

    Raises:
        ValueError: not an http(s) URL, or ``connect_timeout`` is not
            positive, finite seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        connect_timeout: float | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.connect_timeout = (
            None if connect_timeout is None else check_seconds(connect_timeout, "connect_timeout")
        )
        # The whole call is bounded by asyncio.timeout; aiohttp bounds the
        # connect when the cap is shorter than what is left of the deadline.
        self._uncapped = aiohttp.ClientTimeout(total=None)
        self._capped = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self.url = url.rstrip("/")
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<AsyncHTTPTransport {self.url}>"

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._uncapped)
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                "this AsyncClient belongs to another event loop; make one AsyncClient per loop"
            )
        return self._session

    async def request(
        self,
        verb: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        *,
        idempotent: bool = False,
    ) -> RawResponse:
        """Send one HTTP request to ``base URL + path`` and read the whole answer.

        When ``idempotent``, a request whose connection broke (a pooled
        connection the server had closed, say) is sent once more, on another
        connection, as :class:`~tether.transports.http_sync.SyncHTTPTransport`
        does. aiohttp does not tell whether the connection was a pooled one,
        so a fresh connection that broke is retried too; aiohttp's own retry
        covers only GET, HEAD, PUT, DELETE and the like, never a POST. The
        answer's ``retry_after`` holds the seconds of a ``Retry-After`` header.

        Raises:
            Unavailable: connection refused, not made within
                ``connect_timeout`` (both with ``details["sent"]`` False), or
                reset or closed mid-call.
            DeadlineExceeded: no complete answer within ``timeout`` seconds
                (a connection not made within them included).
        """
        session = self._get_session()
        url = self.url + path
        fields = dict(headers)
        # The connect cap, unless the deadline comes first: then it is the
        # deadline that ends a slow connect (DeadlineExceeded, not Unavailable).
        cap = self.connect_timeout
        limits = self._capped if cap is not None and cap < timeout else self._uncapped
        try:
            async with asyncio.timeout(timeout):
                retry = idempotent
                while True:
                    try:
                        async with session.request(
                            verb, url, data=body, headers=fields, timeout=limits
                        ) as response:
                            data = await response.read()
                            get = response.headers.get
                            wait = get("retry-after")
                            return RawResponse(
                                response.status,
                                get("content-type", ""),
                                data,
                                None if wait is None else retry_after_seconds(wait),
                            )
                    except aiohttp.ClientConnectorError:
                        raise  # never connected: nothing was sent
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        if not retry:
                            raise
                        retry = False  # once, on a new connection
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: caught first
            raise Unavailable(
                f"cannot connect to {self.url}: no connection within {cap or timeout:.3f} s",
                {"sent": False, "connect_timeout": True},
            ) from None
        except TimeoutError:
            raise DeadlineExceeded(f"no answer from {self.url} within {timeout:.3f} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(f"cannot connect to {self.url}: {exc}", {"sent": False}) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable(
                f"connection to {self.url} broke: {type(exc).__name__}: {exc}", {"sent": True}
            ) from None

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
        """POST a call to ``/rpc/{service}/{method}`` (see :meth:`request`)."""
        return await self.request(
            "POST", f"/rpc/{service}/{method}", body, headers, timeout, idempotent=idempotent
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
