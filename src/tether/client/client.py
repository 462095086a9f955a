"""Client and AsyncClient: own the connection pools and hand out connections."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tether.client.auth import StaticAuth, resolve, tls_for
from tether.client.connection import AsyncConnection, Connection
from tether.client.discovery import (
    AsyncDiscoveredTransport,
    Balancer,
    InstanceCache,
    SyncDiscoveredTransport,
    async_instance_transport,
    sync_instance_transport,
)
from tether.client.retry import RetryPolicy
from tether.codec import Codec
from tether.errors import DeadlineExceeded
from tether.settings import Settings, get_settings
from tether.transports.base import AsyncTransport, SyncTransport, check_seconds
from tether.transports.http_async import AsyncHTTPTransport
from tether.transports.http_sync import SyncHTTPTransport
from tether.transports.integrated import AsyncIntegratedTransport, SyncIntegratedTransport

if TYPE_CHECKING:
    from tether.jobs.client import AsyncJobsClient, JobsClient
    from tether.registry import InstanceRecord, Selector
    from tether.server.app import App
    from tether.transports.nats import NatsLinks
    from tether.transports.nats_connect import NatsCredentials


class Client:
    """A blocking Tether client.

    Use it as a context manager, or call :meth:`close` when done (a notebook
    may keep one open). Constructing it opens nothing; connections open on
    the first call.

    Args:
        timeout: default seconds per call (default: ``settings.default_timeout``, 30).
        codec: default body encoding, ``"json"`` or ``"msgpack"`` (``"python"``: only
            for integrated connections; the others then need their own ``codec=``).
        settings: preferences for this client (default: :func:`tether.settings.get_settings`).

    Raises:
        ValueError: ``timeout`` is not positive, finite seconds, or ``codec``
            is not ``"json"``, ``"msgpack"`` or ``"python"``.

    Example::

        with tether.Client() as client:
            inventory = client.connect("http://127.0.0.1:8000").proxy(Inventory)
            inventory.get(name="r1")
    """

    def __init__(
        self,
        *,
        timeout: float | None = None,
        codec: Codec | str = Codec.JSON,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.timeout = check_seconds(self.settings.default_timeout if timeout is None else timeout)
        self.codec = Codec(codec)
        self._connections: list[Connection] = []
        self._caches: dict[tuple[str, str], InstanceCache] = {}
        self._nats_links: NatsLinks | None = None  # made by the first relay()
        self._jobs: JobsClient | None = None  # made by the first use of .jobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._connections)} connections"
        return f"<tether.Client {state} timeout={self.timeout}s codec={self.codec.value}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _keep(self, connection: Connection) -> Connection:
        if self._closed:
            raise RuntimeError("this Client is closed")
        self._connections.append(connection)
        return connection

    def connect(
        self,
        url: str,
        *,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        cert: tuple[str | Path, str | Path] | str | Path | None = None,
        ca: str | Path | None = None,
        pin_sha256: str | None = None,
        connect_timeout: float | None = None,
    ) -> Connection:
        """A direct connection to ``http(s)://host:port`` (no network call yet).

        Credentials (one of ``token``, ``api_key``, ``username``): an access
        token or API key sent as is; or a password login at the first call
        (the password asked for with getpass when None and a terminal is
        attached), its tokens kept in the credentials file and renewed.
        With none, the credentials file's entry for ``url`` is used, if any.

        Args:
            cert: a client certificate for mutual TLS: ``(cert, key)`` PEM files.
            ca: CA bundle to verify the server with (default
                ``settings.tls_ca_bundle``, else the system's).
            pin_sha256: accept only the server certificate with this SHA-256
                fingerprint (hex).
            connect_timeout: seconds a new connection may take (TCP and TLS
                handshakes); slower fails the call with ``Unavailable``
                (``details`` ``sent`` False, ``connect_timeout`` True). By
                default a connection may take what is left of the call's
                deadline, and a deadline that runs out while connecting is
                ``DeadlineExceeded``: a direct connection has no other
                instance to try, so a slow handshake over a long path
                should not fail early. (Discovered connections give a new
                connection 2 s, then try another instance.)

        Raises:
            ValueError: ``url`` is not an http(s) URL, conflicting credentials,
                codec ``"python"`` (integrated connections only), or a
                ``timeout`` or ``connect_timeout`` that is not positive,
                finite seconds.
        """
        codec = _wire_codec(codec, self.codec, "connect")
        auth, context = resolve(
            url,
            self.settings,
            token=token,
            api_key=api_key,
            username=username,
            password=password,
            cert=cert,
            ca=ca,
            pin_sha256=pin_sha256,
        )
        return self._keep(
            Connection(
                SyncHTTPTransport(url, ssl_context=context, connect_timeout=connect_timeout),
                url,
                codec=codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=auth,
            )
        )

    def integrated(
        self,
        app: App,
        *,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        api_key: str | None = None,
    ) -> Connection:
        """An in-process connection to ``app``: the full call path minus the network.

        Routing, auth, argument validation, deadlines and errors are those of
        a call over HTTP. A sync method runs inline in the calling thread, an
        async one on this client's event-loop thread.

        Args:
            app: the :class:`~tether.App` to call, in this process.
            codec: ``"json"`` or ``"msgpack"`` (default: the client's) encode
                each call as over HTTP, so a test sees exactly what a remote
                caller would. ``"python"`` skips the encoding: arguments go to
                the method as the caller's Python objects, still validated
                against the method's parameters (bad ones raise
                ``invalid_argument`` as over JSON; a value that already has
                the declared type is passed as it is, not copied), and the
                result comes back validated into the declared type as a copy,
                never the implementation's own objects. It is the fastest
                way to call an App in-process, and valid for integrated
                connections only: :meth:`connect`, :meth:`relay` and
                :meth:`service` refuse it with ValueError.
                Dynamic calls (:meth:`Connection.call`) go as JSON.
            timeout: default seconds per call (default: the client's).
            token, api_key: the caller's credentials, for an App that runs with
                auth: an access token (issued by the App's auth or a provider
                it trusts) or an API key, sent as ``authorization: Bearer ...``
                with each call and checked, scopes included, as over HTTP.
                Give at most one. Without either, calls to an App with auth
                fail ``unauthenticated``; an App without auth ignores them.
                The credentials file is not consulted.

        Raises:
            ValueError: both ``token`` and ``api_key``, an unknown codec, or a
                ``timeout`` that is not positive, finite seconds.
        """
        return self._keep(
            Connection(
                SyncIntegratedTransport(app, self._run_async),
                f"integrated:{app.title}",
                codec=codec or self.codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=_static(token, api_key),
            )
        )

    def relay(
        self,
        url: str,
        service_id: str | None = None,
        *,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        credentials: NatsCredentials | None = None,
        token: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
    ) -> Connection:
        """A connection through the NATS relay at ``url`` (no network call yet).

        Args:
            url: ``nats://host:port`` or ``tls://host:port`` (several, comma-separated);
                ``nats://host:port#ID`` names an instance as ``service_id`` does.
            service_id: an instance id: call only that instance
                (``tether.inst.{id}...``); default any instance (``tether.rpc...``).
            codec: body encoding (default: the client's).
            timeout: default seconds per call (default: the client's).
            credentials: NATS's own login and TLS; fields left unset come from
                the ``nats_*`` settings.
            token, api_key: the caller's Tether credentials, sent in the
                ``authorization`` NATS header; the service checks them, not the relay.
            connect_timeout: seconds to wait for NATS at the first call.

        Connections of one client to the same NATS servers with the same NATS
        credentials share one NATS connection, closed with the last of them
        (or by :meth:`close`).

        Raises:
            ValueError: at once: ``service_id`` cannot be a NATS subject
                token, codec ``"python"`` (integrated connections only), or a
                ``timeout`` or ``connect_timeout`` that is not positive,
                finite seconds. A bad URL or unreadable credentials file
                raises ValueError at the first call.
            Unavailable: at a call: NATS refused the connection, no instance
                serves the method, or the connection to NATS was down or
                broke (see :class:`~tether.transports.nats.AsyncNatsTransport`).
            DeadlineExceeded: at a call: no answer within its deadline (NATS
                not accepting the first connection within it included).
            TetherError: at a call, code ``unauthenticated``: NATS rejected
                the credentials.
        """
        codec = _wire_codec(codec, self.codec, "relay")
        from tether.transports.nats import SyncNatsTransport  # nats-py only when used
        from tether.transports.nats_connect import NatsCredentials, split_address

        url, service_id = split_address(url, service_id)
        fallback = NatsCredentials.from_settings(self.settings, url)
        transport = SyncNatsTransport(
            url,
            self._run_async,
            instance_id=service_id,
            credentials=(credentials or NatsCredentials()).over(fallback),
            connect_timeout=check_seconds(connect_timeout, "connect_timeout"),
            links=self._links(),
        )
        return self._keep(
            Connection(
                transport,
                f"{url}#{service_id}" if service_id else url,
                codec=codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=_static(token, api_key),
            )
        )

    def _links(self) -> NatsLinks:
        """The pool of NATS connections shared by this client's relay connections."""
        if self._nats_links is None:
            from tether.transports.nats import NatsLinks  # nats-py only when used

            self._nats_links = NatsLinks()
        return self._nats_links

    def service(
        self,
        name: str,
        *,
        registry: str | None = None,
        selector: str | Selector = "round_robin",
        retry: RetryPolicy | None = None,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        api_key: str | None = None,
        cert: tuple[str | Path, str | Path] | str | Path | None = None,
        ca: str | Path | None = None,
    ) -> Connection:
        """A connection to any healthy instance of service ``name``, found through the registry.

        Nothing happens on the network yet. At the first call the client
        starts watching the registry (one watch per registry and service,
        shared by this client's connections) and keeps that view up to date;
        each call then goes to an instance picked by ``selector`` among the
        healthy ones, minus those ejected after recent failures. An instance
        advertised as ``http(s)://...`` is called directly, one advertised as
        ``nats://host:port#ID`` through the relay.

        Retries (see :class:`~tether.client.retry.RetryPolicy`) go to another
        instance, only when safe: the method is idempotent, or the request
        was never sent. Every attempt fits in the call's deadline. Until the
        registry has answered (its first complete view), a call waits for
        it up to its whole deadline; when the registry lists no healthy
        instance, a call waits up to a second for one.

        Args:
            name: the service's name, as in ``@tether.service(name=...)``.
            registry: ``sqlite:///path``, ``nats://host:port`` or ``memory://NAME``
                (default: ``settings.effective_registry_url``).
            selector: ``round_robin``, ``random``, ``first`` or ``least_outstanding``
                (power of two choices on calls in flight), or a Selector.
            retry: the retry policy (default: 3 attempts, 50 ms to 1 s backoff).
            codec, timeout: as for :meth:`connect`.
            token, api_key: the caller's credentials, sent to every instance.
            cert, ca: client certificate and CA bundle for ``https://`` instances.

        Raises:
            ValueError: at once: an unknown selector, a bad registry URL
                (unknown scheme or option), codec ``"python"``, a ``timeout``
                that is not positive, finite seconds, or, for a ``nats://``
                registry, a NATS credentials or TLS file (the ``nats_*``
                settings) that cannot be read; at the first call to a relay
                instance (``nats://host:port#ID``), such a file too.
            Unavailable: at a call: no healthy instance is registered, the
                registry did not answer within the deadline (the message
                gives its error), or every allowed attempt failed.
            DeadlineExceeded: at a call: the deadline passed during an attempt.
        """
        codec = _wire_codec(codec, self.codec, "service")
        registry_url = registry or self.settings.effective_registry_url
        with self._lock:
            cache = self._caches.get((registry_url, name))
            if cache is None:
                cache = self._caches[registry_url, name] = InstanceCache(
                    registry_url, name, settings=self.settings
                )

        def make_transport(record: InstanceRecord) -> SyncTransport:
            context = tls_for(record.address, self.settings, None, ca=ca, cert=cert)
            links = self._links() if record.address.startswith(("nats://", "tls://")) else None
            return sync_instance_transport(
                record.address, self.settings, self._run_async, context, links=links
            )

        transport = SyncDiscoveredTransport(
            cache,
            Balancer(name, selector, retry or RetryPolicy()),
            self._event_loop,
            make_transport,
        )
        return self._keep(
            Connection(
                transport,
                f"{name} via {registry_url}",
                codec=codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=_static(token, api_key),
            )
        )

    @property
    def jobs(self) -> JobsClient:
        """The jobs API of the default server, ``settings.url`` (``TETHER_URL``):
        ``client.jobs.submit(type, parameters)``; made on first use, with the
        credentials stored for that URL. ``client.connect(url).jobs`` reaches
        another server.

        Raises:
            ValueError: no default URL is set (the message names ``TETHER_URL``),
                or it is not an http(s) URL.
            RuntimeError: the client is closed.
        """
        if self._jobs is None:
            self._jobs = self.connect(self.settings.require_url()).jobs
        return self._jobs

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """This client's event loop, running in its own thread (started on first use)."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="tether-client-loop", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _run_async(self, coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
        """Run a coroutine on this client's event-loop thread and wait for it."""
        future = asyncio.run_coroutine_threadsafe(coro, self._event_loop())
        try:
            return future.result(None if timeout is None else timeout + 0.5)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded("no answer within the call's deadline") from None

    def close(self) -> None:
        """Close every connection this client made; idempotent."""
        self._closed = True
        for connection in self._connections:
            connection.close()
        self._connections.clear()
        caches, self._caches = list(self._caches.values()), {}
        if self._loop is not None:
            for cache in caches:
                try:
                    self._run_async(cache.aclose(), 5.0)
                except DeadlineExceeded:
                    pass  # a registry that hangs up slowly: the loop stops anyway
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(5)
            self._loop.close()
            self._loop = None


class AsyncClient:
    """The asyncio twin of :class:`Client`; it belongs to the event loop that first uses it.

    Use ``async with tether.AsyncClient() as client:``, or ``await client.close()``.

    Args:
        timeout, codec, settings: as for :class:`Client`.

    Raises:
        ValueError: as for :class:`Client`: a timeout that is not positive,
            finite seconds, or an unknown codec.
    """

    def __init__(
        self,
        *,
        timeout: float | None = None,
        codec: Codec | str = Codec.JSON,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.timeout = check_seconds(self.settings.default_timeout if timeout is None else timeout)
        self.codec = Codec(codec)
        self._connections: list[AsyncConnection] = []
        self._caches: dict[tuple[str, str], InstanceCache] = {}
        self._nats_links: NatsLinks | None = None  # made by the first relay()
        self._jobs: AsyncJobsClient | None = None  # made by the first use of .jobs
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._connections)} connections"
        return f"<tether.AsyncClient {state} timeout={self.timeout}s codec={self.codec.value}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _keep(self, connection: AsyncConnection) -> AsyncConnection:
        if self._closed:
            raise RuntimeError("this AsyncClient is closed")
        self._connections.append(connection)
        return connection

    def connect(
        self,
        url: str,
        *,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        cert: tuple[str | Path, str | Path] | str | Path | None = None,
        ca: str | Path | None = None,
        pin_sha256: str | None = None,
        connect_timeout: float | None = None,
    ) -> AsyncConnection:
        """A direct connection to ``http(s)://host:port``; see :meth:`Client.connect`
        (``connect_timeout`` included).

        Raises:
            ValueError: as for :meth:`Client.connect`.
        """
        codec = _wire_codec(codec, self.codec, "connect")
        auth, context = resolve(
            url,
            self.settings,
            token=token,
            api_key=api_key,
            username=username,
            password=password,
            cert=cert,
            ca=ca,
            pin_sha256=pin_sha256,
        )
        return self._keep(
            AsyncConnection(
                AsyncHTTPTransport(url, ssl_context=context, connect_timeout=connect_timeout),
                url,
                codec=codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=auth,
            )
        )

    def integrated(
        self,
        app: App,
        *,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        api_key: str | None = None,
    ) -> AsyncConnection:
        """An in-process connection to ``app``; see :meth:`Client.integrated`.

        Async methods run on the calling event loop, sync ones in the App's
        thread pool.

        Args:
            app: the :class:`~tether.App` to call, in this process.
            codec: ``"json"`` or ``"msgpack"`` (default: the client's) encode
                each call as over HTTP. ``"python"`` skips the encoding:
                arguments go to the method as Python objects, still
                validated against its parameters, and the result comes back
                validated as a copy. Integrated connections only:
                :meth:`connect`, :meth:`relay` and :meth:`service` refuse it
                with ValueError.
            timeout: default seconds per call (default: the client's).
            token, api_key: an access token or API key sent as
                ``authorization: Bearer ...`` with each call, for an App that
                runs with auth (checked as over HTTP); at most one.

        Raises:
            ValueError: both ``token`` and ``api_key``, an unknown codec, or a
                ``timeout`` that is not positive, finite seconds.
        """
        return self._keep(
            AsyncConnection(
                AsyncIntegratedTransport(app),
                f"integrated:{app.title}",
                codec=codec or self.codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=_static(token, api_key),
            )
        )

    def relay(
        self,
        url: str,
        service_id: str | None = None,
        *,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        credentials: NatsCredentials | None = None,
        token: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
    ) -> AsyncConnection:
        """A connection through the NATS relay at ``url``; see :meth:`Client.relay`.

        Raises:
            ValueError: at once: ``service_id`` cannot be a NATS subject
                token, codec ``"python"``, or a ``timeout`` or
                ``connect_timeout`` that is not positive, finite seconds; a
                bad URL or unreadable credentials file at the first call.
            Unavailable, DeadlineExceeded, TetherError: at a call, as for
                :meth:`Client.relay`.
        """
        codec = _wire_codec(codec, self.codec, "relay")
        from tether.transports.nats import AsyncNatsTransport  # nats-py only when used
        from tether.transports.nats_connect import NatsCredentials, split_address

        url, service_id = split_address(url, service_id)
        fallback = NatsCredentials.from_settings(self.settings, url)
        transport = AsyncNatsTransport(
            url,
            instance_id=service_id,
            credentials=(credentials or NatsCredentials()).over(fallback),
            connect_timeout=check_seconds(connect_timeout, "connect_timeout"),
            links=self._links(),
        )
        return self._keep(
            AsyncConnection(
                transport,
                f"{url}#{service_id}" if service_id else url,
                codec=codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=_static(token, api_key),
            )
        )

    def _links(self) -> NatsLinks:
        """The pool of NATS connections shared by this client's relay connections."""
        if self._nats_links is None:
            from tether.transports.nats import NatsLinks  # nats-py only when used

            self._nats_links = NatsLinks()
        return self._nats_links

    def service(
        self,
        name: str,
        *,
        registry: str | None = None,
        selector: str | Selector = "round_robin",
        retry: RetryPolicy | None = None,
        codec: Codec | str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        api_key: str | None = None,
        cert: tuple[str | Path, str | Path] | str | Path | None = None,
        ca: str | Path | None = None,
    ) -> AsyncConnection:
        """A connection to any healthy instance of ``name``; see :meth:`Client.service`.

        The registry watch runs as a task on the event loop of the first call.

        Raises:
            ValueError: at once, or at the first call to a relay instance, as
                for :meth:`Client.service`.
            Unavailable, DeadlineExceeded: at a call, as for :meth:`Client.service`.
        """
        codec = _wire_codec(codec, self.codec, "service")
        registry_url = registry or self.settings.effective_registry_url
        cache = self._caches.get((registry_url, name))
        if cache is None:
            cache = self._caches[registry_url, name] = InstanceCache(
                registry_url, name, settings=self.settings
            )

        def make_transport(record: InstanceRecord) -> AsyncTransport:
            context = tls_for(record.address, self.settings, None, ca=ca, cert=cert)
            links = self._links() if record.address.startswith(("nats://", "tls://")) else None
            return async_instance_transport(record.address, self.settings, context, links=links)

        transport = AsyncDiscoveredTransport(
            cache, Balancer(name, selector, retry or RetryPolicy()), make_transport
        )
        return self._keep(
            AsyncConnection(
                transport,
                f"{name} via {registry_url}",
                codec=codec,
                timeout=self.timeout if timeout is None else timeout,
                auth=_static(token, api_key),
            )
        )

    @property
    def jobs(self) -> AsyncJobsClient:
        """The async jobs API of the default server; see :attr:`Client.jobs`.

        Raises:
            ValueError: no default URL is set (the message names ``TETHER_URL``).
            RuntimeError: the client is closed.
        """
        if self._jobs is None:
            self._jobs = self.connect(self.settings.require_url()).jobs
        return self._jobs

    async def close(self) -> None:
        """Close every connection this client made; idempotent."""
        self._closed = True
        for connection in self._connections:
            await connection.close()
        self._connections.clear()
        caches, self._caches = list(self._caches.values()), {}
        for cache in caches:
            await cache.aclose()


def _wire_codec(codec: Codec | str | None, default: Codec, method: str) -> Codec:
    """The codec of a connection that sends bytes: ``codec``, else the client's ``default``.

    Raises:
        ValueError: an unknown codec, or ``"python"``, which only integrated
            connections take (checked before anything else is set up).
    """
    chosen = Codec(codec) if codec else default
    if chosen is Codec.PYTHON:
        source = "codec='python'" if codec else "the client's default codec 'python'"
        raise ValueError(
            f"{method}(): {source} passes Python objects in-process, so it is for "
            "integrated connections only (client.integrated(app, codec='python')); "
            "give codec='json' or codec='msgpack' here"
        )
    return chosen


def _static(token: str | None, api_key: str | None) -> StaticAuth | None:
    if token is not None and api_key is not None:
        raise ValueError("give token= or api_key=, not both")
    secret = token if token is not None else api_key
    return None if secret is None else StaticAuth(secret)
