"""Discovered connections: a service name resolved through the registry.

:class:`InstanceCache` keeps a watched view of one service's instances
(started lazily, on the first call). :class:`Balancer` picks an instance
for each attempt (healthy ones, minus those ejected after failures, through
a selector) and decides on retries. :class:`SyncDiscoveredTransport` and
:class:`AsyncDiscoveredTransport` put them together behind the ordinary
transport interface, so a discovered connection is a plain
:class:`~tether.client.connection.Connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from tether.client.retry import RetryPolicy
from tether.errors import TetherError, Unavailable
from tether.registry import (
    InstanceRecord,
    OutlierEjector,
    RegistryError,
    Selector,
    make_selector,
    open_registry,
)
from tether.settings import Settings
from tether.transports.base import AsyncTransport, RawResponse, SyncTransport
from tether.transports.http_async import AsyncHTTPTransport
from tether.transports.http_sync import SyncHTTPTransport

if TYPE_CHECKING:
    from tether.transports.nats import NatsLinks

log = logging.getLogger("tether.discovery")

#: Seconds a new connection to a discovered instance may take (TCP and TLS
#: handshakes): a host that does not answer is then skipped for another instance.
DEFAULT_CONNECT_TIMEOUT = 2.0

T = TypeVar("T")


class InstanceCache:
    """The live instances of one service, kept up to date by a registry watch.

    The watch runs as a task on an event loop (the sync client's loop thread,
    or the async client's loop); it restarts with a growing pause (0.2 s to
    5 s) whenever the registry fails, whatever the error, keeping the last
    view meanwhile; :attr:`last_error` says what went wrong.

    Args:
        registry_url: ``sqlite:///...``, ``nats://...`` or ``memory://NAME``.
        service: the service's name.
        settings: NATS credentials for a ``nats://`` registry (default: the
            process settings).

    Raises:
        ValueError: ``registry_url`` has an unknown scheme or option.
    """

    def __init__(
        self, registry_url: str, service: str, *, settings: Settings | None = None
    ) -> None:
        open_registry(registry_url, settings=settings)  # a bad URL fails now, not at a call
        self.registry_url = registry_url
        self.service = service
        self.settings = settings
        self._records: dict[str, InstanceRecord] = {}
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._task: asyncio.Task[None] | None = None
        self.version = 0  # bumps on every change, for observers
        #: What the last failure of the watch was (``None`` while it works).
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<InstanceCache {self.service} via {self.registry_url} n={len(self._records)}>"

    @property
    def synced(self) -> bool:
        """True once a first complete view of the registry arrived."""
        return self._synced.is_set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the watch on ``loop``, which runs in another thread; idempotent."""
        if self._task is None:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result()

    async def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name=f"tether-watch-{self.service}"
            )

    def start_here(self) -> None:
        """Start the watch on the running loop; idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name=f"tether-watch-{self.service}"
            )

    async def _watch(self) -> None:
        pause = 0.2
        while True:
            try:
                async with open_registry(self.registry_url, settings=self.settings) as registry:
                    # A (re)started watch replays every live instance before
                    # "synced": build the view afresh so that instances removed
                    # while the registry was unreachable go away too.
                    fresh: dict[str, InstanceRecord] | None = {}
                    async for event in registry.watch(self.service):
                        pause = 0.2
                        if fresh is None:
                            self._apply(event.kind, event.record)
                        elif event.kind == "synced":
                            with self._lock:
                                self._records, fresh = fresh, None
                                self.last_error = None
                                self.version += 1
                                self._changed.notify_all()
                            self._synced.set()
                        elif event.record is not None:
                            fresh[event.record.instance_id] = event.record
                    raise RegistryError("the registry watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever failed (the registry, a bug), the view must stay and
                # the watch must come back: an instance cache that silently
                # stops would serve a stale view for ever.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "watching %s in %s failed (retrying in %.1f s): %s",
                    self.service,
                    self.registry_url,
                    pause,
                    self.last_error,
                    exc_info=not isinstance(exc, RegistryError | OSError),
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _apply(self, kind: str, record: InstanceRecord | None) -> None:
        with self._lock:
            if record is not None and kind in ("added", "updated"):
                self._records[record.instance_id] = record
            elif record is not None and kind == "removed":
                self._records.pop(record.instance_id, None)
            self.version += 1
            self._changed.notify_all()

    def wait_synced(self, timeout: float) -> bool:
        """Block until the first complete view arrived; False after ``timeout`` seconds."""
        return self._synced.wait(timeout)

    async def wait_synced_async(self, timeout: float) -> bool:
        """Async :meth:`wait_synced` (polls; only the first call ever waits)."""
        deadline = time.monotonic() + timeout
        while not self._synced.is_set():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def wait_changed(self, version: int, timeout: float) -> None:
        """Block until :attr:`version` differs from ``version``, or ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != version, timeout)

    async def wait_changed_async(self, version: int, timeout: float) -> None:
        """Async :meth:`wait_changed` (polls every 20 ms; only used while no instance is known)."""
        deadline = time.monotonic() + timeout
        while self.version == version and time.monotonic() < deadline:
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def records(self) -> list[InstanceRecord]:
        """Every known instance of the service, healthy or not."""
        with self._lock:
            return list(self._records.values())

    async def aclose(self) -> None:
        """Stop the watch and close its registry connection; run it on the watch's loop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class NoInstance(Unavailable):
    """No healthy instance to send a call to (``details["sent"]`` is False).

    The message says why: the registry has not answered yet (and its error),
    none is registered, or all registered ones are unhealthy.
    """


class Balancer:
    """Picks an instance per attempt and decides on retries (shared by sync and async).

    Args:
        service: the service's name (for health and messages).
        selector: ``round_robin``, ``random``, ``first`` or ``least_outstanding``.
        policy: the retry policy.
        wait_for_instance: seconds a call waits, within its deadline, for a
            healthy instance to appear when the registry lists none (default
            1); while the registry has not answered yet, a call waits up to
            its whole deadline.

    Attributes:
        calls: answered attempts per instance id.
        failures: failed attempts per instance id (refused, broken, 503).
    """

    def __init__(
        self,
        service: str,
        selector: str | Selector,
        policy: RetryPolicy,
        *,
        wait_for_instance: float = 1.0,
    ) -> None:
        self.service = service
        self.selector = make_selector(selector) if isinstance(selector, str) else selector
        self.ejector = OutlierEjector()
        self.policy = policy
        self.wait_for_instance = wait_for_instance
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._version = -1
        self._healthy: list[InstanceRecord] = []
        self._known = 0
        self._incarnations: dict[str, tuple[datetime, str]] = {}

    def choose(self, cache: InstanceCache) -> InstanceRecord:
        """The instance for the next attempt, among ``cache``'s healthy instances.

        The healthy list is worked out again only when the cache changed; an
        instance that registered again (a restart: new ``registered_at``, or a
        new address) then loses its ejection.

        Raises:
            NoInstance: no healthy instance is known now (``sent`` False).
        """
        healthy = self._refresh(cache)
        if not healthy:
            raise self._none(cache)
        return self.selector.select(self.ejector.available(healthy))

    def _refresh(self, cache: InstanceCache) -> list[InstanceRecord]:
        """The healthy instances, worked out again when the cache changed."""
        version = cache.version  # read first: a change meanwhile is seen next time
        if version != self._version:
            records = cache.records()
            self._healthy = [r for r in records if r.is_healthy(self.service)]
            self._known = len(records)
            incarnations = {r.instance_id: (r.registered_at, r.address) for r in records}
            for instance_id, incarnation in incarnations.items():
                previous = self._incarnations.get(instance_id)
                if previous is not None and previous != incarnation:
                    self.ejector.forget(instance_id)  # a new process: its past is not its own
            self._incarnations = incarnations
            self.ejector.retain(incarnations)
            self._version = version
        return self._healthy

    def has_alternative(self, cache: InstanceCache, record: InstanceRecord) -> bool:
        """True when a healthy instance other than ``record`` is in rotation now."""
        return any(
            other.instance_id != record.instance_id and not self.ejector.is_ejected(other)
            for other in self._refresh(cache)
        )

    def _none(self, cache: InstanceCache) -> NoInstance:
        if not cache.synced:
            cause = f": {cache.last_error}" if cache.last_error else ""
            return NoInstance(
                f"no view of {self.service!r} from the registry {cache.registry_url} yet{cause}",
                {"sent": False},
            )
        known = f"{self._known} registered, none healthy" if self._known else "none registered"
        failing = (
            f"; the registry watch is failing, this is the last view: {cache.last_error}"
            if cache.last_error
            else ""
        )
        return NoInstance(
            f"no healthy instance of {self.service!r} in {cache.registry_url} ({known}){failing}",
            {"sent": False},
        )

    def wait_before_failing(
        self, cache: InstanceCache, deadline: float, since: float, now: float
    ) -> float:
        """Seconds to wait for an instance after :meth:`choose` found none (0: fail now).

        ``since``: when this call first found none; ``deadline``: the call's,
        both in ``time.monotonic()`` seconds.
        """
        if not cache.synced:
            return max(0.0, deadline - now)
        return max(0.0, min(deadline, since + self.wait_for_instance) - now)

    def succeeded(self, record: InstanceRecord) -> None:
        """The attempt on ``record`` got an answer from the service."""
        self.ejector.record_success(record.instance_id)
        self.policy.budget.on_success()
        self.calls[record.instance_id] += 1

    def failed(self, record: InstanceRecord, retry_after: float | None = None) -> None:
        """The attempt on ``record`` failed: eject it for a while, at least
        ``retry_after`` seconds (its ``Retry-After``) when given."""
        period = self.ejector.record_failure(record.instance_id, at_least=retry_after)
        self.policy.budget.on_failure()
        self.failures[record.instance_id] += 1
        log.info("ejected %s (%s) for %.1f s", record.instance_id, record.address, period)

    def retry_wait(
        self,
        error: TetherError,
        attempt: int,
        *,
        idempotent: bool,
        remaining: float,
        retry_after: float | None,
        alternative: bool = False,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now: the
        policy says no, or the wait (a server's ``Retry-After`` included) would
        not leave time for another attempt within ``remaining`` seconds.

        ``alternative``: another instance can take the next attempt now. The
        ``Retry-After`` of the one that answered (ejected for that long,
        see :meth:`failed`) is then no reason to wait, nor to give up.
        """
        if alternative:
            retry_after = None
        policy = self.policy
        if not policy.should_retry(
            error, attempt, idempotent=idempotent, remaining=remaining, retry_after=retry_after
        ):
            return None
        wait = policy.backoff(attempt, retry_after)
        return wait if wait < remaining else None


def _overloaded(raw: RawResponse) -> TetherError | None:
    # A 503 says the instance cannot serve now: eject it. The method may have
    # run (it can raise Unavailable itself), so only idempotent calls retry.
    if raw.status == 503:
        return Unavailable("the instance answered 503", {"sent": True})
    return None


class SyncDiscoveredTransport:
    """Sends each call to an instance chosen from the registry, retrying where safe.

    Args:
        cache: the service's instance cache.
        balancer: selection, ejection and retry decisions.
        loop: returns the event loop the cache's watch runs on.
        make_transport: a transport for an instance's address.
    """

    def __init__(
        self,
        cache: InstanceCache,
        balancer: Balancer,
        loop: Callable[[], asyncio.AbstractEventLoop],
        make_transport: Callable[[InstanceRecord], SyncTransport],
    ) -> None:
        self.cache = cache
        self.balancer = balancer
        self._loop = loop
        self._make_transport = make_transport
        self._transports: dict[tuple[str, str], SyncTransport] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SyncDiscoveredTransport {self.cache.service} via {self.cache.registry_url}>"

    def _transport(self, record: InstanceRecord) -> SyncTransport:
        key = (record.instance_id, record.address)
        gone: list[SyncTransport] = []
        with self._lock:
            transport = self._transports.get(key)
            if transport is None:
                gone = _forget_gone(self._transports, self.cache)
                transport = self._transports[key] = self._make_transport(record)
        for old in gone:
            old.close()
        return transport

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
        """Send to a chosen instance; retry on another where safe, within ``timeout``.

        While the registry has not answered yet, waits for it (within
        ``timeout``); when it lists no healthy instance, waits up to the
        balancer's ``wait_for_instance`` for one. An attempt that fails before
        or while connecting (refused, no connection within the transport's
        connect timeout), that breaks, or that is answered 503 ejects the
        instance (a 503 with ``Retry-After`` for at least that long). The
        next attempt goes to another instance at once when one is in
        rotation; otherwise no retry when the wait before it
        (``Retry-After`` included) would use up the time left: the last
        answer is returned. A deadline that runs out while connecting is
        ``DeadlineExceeded``, and ejects no instance.

        Raises:
            NoInstance: no healthy instance (an ``Unavailable`` whose message
                gives the cause, e.g. the registry's error).
            Unavailable: every allowed attempt failed.
            DeadlineExceeded: the deadline passed.
        """
        deadline = time.monotonic() + timeout
        self.cache.start(self._loop())
        attempt = 0
        while True:
            attempt += 1
            record = self._choose(deadline)
            remaining = deadline - time.monotonic()
            raw: RawResponse | None = None
            error: TetherError
            with self.balancer.selector.track(record):
                try:
                    raw = self._transport(record).send(
                        service,
                        method,
                        body,
                        _headers(headers, remaining),
                        remaining,
                        idempotent=idempotent,
                    )
                except Unavailable as exc:
                    error = exc
            if raw is not None:
                overloaded = _overloaded(raw)
                if overloaded is None:
                    self.balancer.succeeded(record)
                    return raw
                error = overloaded
            retry_after = raw.retry_after if raw is not None else None
            self.balancer.failed(record, retry_after)
            wait = self.balancer.retry_wait(
                error,
                attempt,
                idempotent=idempotent,
                remaining=deadline - time.monotonic(),
                retry_after=retry_after,
                alternative=retry_after is not None
                and self.balancer.has_alternative(self.cache, record),
            )
            if wait is None:
                if raw is not None:
                    return raw
                raise error
            time.sleep(wait)

    def _choose(self, deadline: float) -> InstanceRecord:
        """An instance for the next attempt, waiting (within ``deadline``) while none is known."""
        since: float | None = None
        while True:
            version = self.cache.version
            try:
                return self.balancer.choose(self.cache)
            except NoInstance:
                now = time.monotonic()
                since = now if since is None else since
                wait = self.balancer.wait_before_failing(self.cache, deadline, since, now)
                if wait <= 0:
                    raise
            self.cache.wait_changed(version, wait)

    def close(self) -> None:
        """Close the per-instance transports (the cache belongs to the client)."""
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            transport.close()


class AsyncDiscoveredTransport:
    """The asyncio twin of :class:`SyncDiscoveredTransport`."""

    def __init__(
        self,
        cache: InstanceCache,
        balancer: Balancer,
        make_transport: Callable[[InstanceRecord], AsyncTransport],
    ) -> None:
        self.cache = cache
        self.balancer = balancer
        self._make_transport = make_transport
        self._transports: dict[tuple[str, str], AsyncTransport] = {}

    def __repr__(self) -> str:
        return f"<AsyncDiscoveredTransport {self.cache.service} via {self.cache.registry_url}>"

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
        """See :meth:`SyncDiscoveredTransport.send`."""
        deadline = time.monotonic() + timeout
        self.cache.start_here()
        attempt = 0
        while True:
            attempt += 1
            record = await self._choose(deadline)
            key = (record.instance_id, record.address)
            transport = self._transports.get(key)
            if transport is None:
                for old in _forget_gone(self._transports, self.cache):
                    await old.close()
                transport = self._transports[key] = self._make_transport(record)
            remaining = deadline - time.monotonic()
            raw: RawResponse | None = None
            error: TetherError
            with self.balancer.selector.track(record):
                try:
                    raw = await transport.send(
                        service,
                        method,
                        body,
                        _headers(headers, remaining),
                        remaining,
                        idempotent=idempotent,
                    )
                except Unavailable as exc:
                    error = exc
            if raw is not None:
                overloaded = _overloaded(raw)
                if overloaded is None:
                    self.balancer.succeeded(record)
                    return raw
                error = overloaded
            retry_after = raw.retry_after if raw is not None else None
            self.balancer.failed(record, retry_after)
            wait = self.balancer.retry_wait(
                error,
                attempt,
                idempotent=idempotent,
                remaining=deadline - time.monotonic(),
                retry_after=retry_after,
                alternative=retry_after is not None
                and self.balancer.has_alternative(self.cache, record),
            )
            if wait is None:
                if raw is not None:
                    return raw
                raise error
            await asyncio.sleep(wait)

    async def _choose(self, deadline: float) -> InstanceRecord:
        """See :meth:`SyncDiscoveredTransport._choose`."""
        since: float | None = None
        while True:
            version = self.cache.version
            try:
                return self.balancer.choose(self.cache)
            except NoInstance:
                now = time.monotonic()
                since = now if since is None else since
                wait = self.balancer.wait_before_failing(self.cache, deadline, since, now)
                if wait <= 0:
                    raise
            await self.cache.wait_changed_async(version, wait)

    async def close(self) -> None:
        """Close the per-instance transports."""
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.close()


def _forget_gone(transports: dict[tuple[str, str], T], cache: InstanceCache) -> list[T]:
    """Remove and return the transports of instances no longer registered.

    Called when a new instance is first used, so connections to instances
    that came and went do not pile up."""
    live = {(r.instance_id, r.address) for r in cache.records()}
    gone = [key for key in transports if key not in live]
    return [transports.pop(key) for key in gone]


def _headers(headers: Mapping[str, str], remaining: float) -> Mapping[str, str]:
    """The headers with the deadline the server sees brought up to date for this attempt."""
    if "tether-timeout-ms" not in headers:
        return headers
    updated: dict[str, Any] = dict(headers)
    updated["tether-timeout-ms"] = str(max(1, int(remaining * 1000)))
    return updated


def sync_instance_transport(
    address: str,
    settings: Settings,
    run_async: Callable[[Coroutine[Any, Any, Any], float | None], Any],
    ssl_context: ssl.SSLContext | None,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    links: NatsLinks | None = None,
) -> SyncTransport:
    """The transport for an instance's advertised address.

    ``http(s)://host:port`` is called directly, with new connections given
    at most ``connect_timeout`` seconds (a dead host is then a failure
    before sending: retried elsewhere, the instance ejected);
    ``nats://host:port#ID`` (a relay instance) through NATS, addressed to
    that instance, on a connection of ``links`` (the client's pool of NATS
    connections) when given. That transport does not retry by itself (no
    responders, NATS down): the balancer ejects the instance and retries on
    another, rather than the deadline going to an instance that died.

    Raises:
        ValueError: an address of another scheme.
    """
    if address.startswith(("http://", "https://")):
        return SyncHTTPTransport(address, ssl_context=ssl_context, connect_timeout=connect_timeout)
    if address.startswith(("nats://", "tls://")):
        from tether.transports.nats import SyncNatsTransport  # nats-py only when used
        from tether.transports.nats_connect import NatsCredentials, split_address

        url, instance_id = split_address(address)
        return SyncNatsTransport(
            url,
            run_async,
            instance_id=instance_id,
            credentials=NatsCredentials.from_settings(settings, url),
            links=links,
            retry_idempotent=False,  # the balancer retries, elsewhere
        )
    raise ValueError(f"cannot call an instance advertised at {address!r}")


def async_instance_transport(
    address: str,
    settings: Settings,
    ssl_context: ssl.SSLContext | None,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    links: NatsLinks | None = None,
) -> AsyncTransport:
    """The asyncio twin of :func:`sync_instance_transport`."""
    if address.startswith(("http://", "https://")):
        return AsyncHTTPTransport(address, ssl_context=ssl_context, connect_timeout=connect_timeout)
    if address.startswith(("nats://", "tls://")):
        from tether.transports.nats import AsyncNatsTransport
        from tether.transports.nats_connect import NatsCredentials, split_address

        url, instance_id = split_address(address)
        return AsyncNatsTransport(
            url,
            instance_id=instance_id,
            credentials=NatsCredentials.from_settings(settings, url),
            links=links,
            retry_idempotent=False,  # the balancer retries, elsewhere
        )
    raise ValueError(f"cannot call an instance advertised at {address!r}")
