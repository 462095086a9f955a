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
from typing import Any, TypeVar

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

log = logging.getLogger("tether.discovery")

T = TypeVar("T")


class InstanceCache:
    """The live instances of one service, kept up to date by a registry watch.

    The watch runs as a task on an event loop (the sync client's loop thread,
    or the async client's loop); it restarts with a growing pause when the
    registry fails, keeping the last view meanwhile.

    Args:
        registry_url: ``sqlite:///...``, ``nats://...`` or ``memory://NAME``.
        service: the service's name.

    Raises:
        ValueError: ``registry_url`` has an unknown scheme or option.
    """

    def __init__(self, registry_url: str, service: str) -> None:
        open_registry(registry_url)  # raises ValueError for a bad URL now, not at a call
        self.registry_url = registry_url
        self.service = service
        self._records: dict[str, InstanceRecord] = {}
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.version = 0  # bumps on every change, for observers

    def __repr__(self) -> str:
        return f"<InstanceCache {self.service} via {self.registry_url} n={len(self._records)}>"

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
                async with open_registry(self.registry_url) as registry:
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
                                self.version += 1
                            self._synced.set()
                        elif event.record is not None:
                            fresh[event.record.instance_id] = event.record
            except asyncio.CancelledError:
                raise
            except (RegistryError, OSError, ValueError) as exc:
                log.warning("watching %s in %s failed: %s", self.service, self.registry_url, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _apply(self, kind: str, record: InstanceRecord | None) -> None:
        with self._lock:
            if record is not None and kind in ("added", "updated"):
                self._records[record.instance_id] = record
            elif record is not None and kind == "removed":
                self._records.pop(record.instance_id, None)
            self.version += 1

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


class Balancer:
    """Picks an instance per attempt and decides on retries (shared by sync and async).

    Args:
        service: the service's name (for health and messages).
        selector: ``round_robin``, ``random``, ``first`` or ``least_outstanding``.
        policy: the retry policy.
    """

    def __init__(self, service: str, selector: str | Selector, policy: RetryPolicy) -> None:
        self.service = service
        self.selector = make_selector(selector) if isinstance(selector, str) else selector
        self.ejector = OutlierEjector()
        self.policy = policy
        self.calls: Counter[str] = Counter()
        self._version = -1
        self._healthy: list[InstanceRecord] = []
        self._known = 0

    def choose(self, cache: InstanceCache) -> InstanceRecord:
        """The instance for the next attempt, among ``cache``'s healthy instances.

        The healthy list is worked out again only when the cache changed.

        Raises:
            Unavailable: no healthy instance is registered (``sent`` False).
        """
        version = cache.version  # read first: a change meanwhile is seen next time
        if version != self._version:
            records = cache.records()
            self._healthy = [r for r in records if r.is_healthy(self.service)]
            self._known = len(records)
            self.ejector.retain(r.instance_id for r in records)
            self._version = version
        healthy = self._healthy
        if not healthy:
            known = f"{self._known} registered, none healthy" if self._known else "none registered"
            raise Unavailable(
                f"no healthy instance of {self.service!r} in {cache.registry_url} ({known})",
                {"sent": False},
            )
        return self.selector.select(self.ejector.available(healthy))

    def succeeded(self, record: InstanceRecord) -> None:
        """The attempt on ``record`` got an answer from the service."""
        self.ejector.record_success(record.instance_id)
        self.policy.budget.on_success()
        self.calls[record.instance_id] += 1

    def failed(self, record: InstanceRecord) -> None:
        """The attempt on ``record`` failed: eject it for a while."""
        period = self.ejector.record_failure(record.instance_id)
        self.policy.budget.on_failure()
        log.info("ejected %s (%s) for %.1f s", record.instance_id, record.address, period)


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

        Raises:
            Unavailable: no healthy instance, or every allowed attempt failed.
            DeadlineExceeded: the deadline passed.
        """
        deadline = time.monotonic() + timeout
        self.cache.start(self._loop())
        self.cache.wait_synced(min(timeout, 5.0))
        policy, attempt = self.balancer.policy, 0
        while True:
            attempt += 1
            record = self.balancer.choose(self.cache)
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
            self.balancer.failed(record)
            remaining = deadline - time.monotonic()
            retry_after = raw.retry_after if raw is not None else None
            if not policy.should_retry(error, attempt, idempotent=idempotent, remaining=remaining):
                if raw is not None:
                    return raw
                raise error
            time.sleep(min(policy.backoff(attempt, retry_after), max(0.0, remaining)))

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
        await self.cache.wait_synced_async(min(timeout, 5.0))
        policy, attempt = self.balancer.policy, 0
        while True:
            attempt += 1
            record = self.balancer.choose(self.cache)
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
            self.balancer.failed(record)
            remaining = deadline - time.monotonic()
            retry_after = raw.retry_after if raw is not None else None
            if not policy.should_retry(error, attempt, idempotent=idempotent, remaining=remaining):
                if raw is not None:
                    return raw
                raise error
            await asyncio.sleep(min(policy.backoff(attempt, retry_after), max(0.0, remaining)))

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
) -> SyncTransport:
    """The transport for an instance's advertised address.

    ``http(s)://host:port`` is called directly; ``nats://host:port#ID`` (a
    relay instance) through NATS, addressed to that instance.

    Raises:
        ValueError: an address of another scheme.
    """
    if address.startswith(("http://", "https://")):
        return SyncHTTPTransport(address, ssl_context=ssl_context)
    if address.startswith(("nats://", "tls://")):
        from tether.transports.nats import SyncNatsTransport  # nats-py only when used
        from tether.transports.nats_connect import NatsCredentials, split_address

        url, instance_id = split_address(address)
        return SyncNatsTransport(
            url,
            run_async,
            instance_id=instance_id,
            credentials=NatsCredentials.from_settings(settings, url),
        )
    raise ValueError(f"cannot call an instance advertised at {address!r}")


def async_instance_transport(
    address: str, settings: Settings, ssl_context: ssl.SSLContext | None
) -> AsyncTransport:
    """The asyncio twin of :func:`sync_instance_transport`."""
    if address.startswith(("http://", "https://")):
        return AsyncHTTPTransport(address, ssl_context=ssl_context)
    if address.startswith(("nats://", "tls://")):
        from tether.transports.nats import AsyncNatsTransport
        from tether.transports.nats_connect import NatsCredentials, split_address

        url, instance_id = split_address(address)
        return AsyncNatsTransport(
            url,
            instance_id=instance_id,
            credentials=NatsCredentials.from_settings(settings, url),
        )
    raise ValueError(f"cannot call an instance advertised at {address!r}")
