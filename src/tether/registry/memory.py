"""In-process registry, for tests and single-process setups.

``MemoryRegistry()`` owns a private store; ``MemoryRegistry("name")`` (URL
``memory://name``) shares one store with every other handle of that name in
this process. Leases expire by the injected clock (wall-clock seconds by
default). A handle belongs to one event loop; handles of one named store may
live on different loops and threads (a sync ``Client`` watches on a loop
thread of its own): a change wakes each watcher on its own loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import UTC, datetime

from .base import Registry, WatchView, filter_records, resolve_lease, with_heartbeat
from .errors import InstanceNotRegistered, RegistryClosed
from .model import HealthStatus, InstanceRecord, RegistryEvent

__all__ = ["MemoryRegistry"]

_MAX_IDLE_WAIT = 1.0  # seconds; bounds a watcher's sleep when the clock is injected


class _Store:
    """Entries (record, expiry time in clock seconds) and change listeners."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[InstanceRecord, float]] = {}
        self.listeners: set[Callable[[], None]] = set()
        self.lock = threading.Lock()  # handles on several threads share the entries

    def notify(self) -> None:
        for listener in builtins.list(self.listeners):
            listener()

    def prune(self, now: float) -> None:
        with self.lock:
            expired = [key for key, (_, exp) in self.entries.items() if exp <= now]
            for key in expired:
                del self.entries[key]
        if expired:
            self.notify()

    def next_expiry(self) -> float | None:
        with self.lock:
            return min((exp for _, exp in self.entries.values()), default=None)


_NAMED_STORES: dict[str, _Store] = {}


class MemoryRegistry(Registry):
    """Registry kept in this process's memory.

    Args:
        name: share the store with other handles of the same name in this
            process (``None``: a private store).
        clock: returns the current time in seconds since the epoch; leases
            and record timestamps use it (default ``time.time``).
    """

    def __init__(self, name: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        if name:
            self._store = _NAMED_STORES.setdefault(name, _Store())
        else:
            self._store = _Store()
        self._clock = clock
        self._closed = False
        self._wakeups: set[asyncio.Event] = set()

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosed("the registry is closed")

    def _now(self) -> tuple[float, datetime]:
        now = self._clock()
        return now, datetime.fromtimestamp(now, UTC)

    def _live(self) -> builtins.list[InstanceRecord]:
        self._store.prune(self._clock())
        with self._store.lock:
            return [record for record, _ in self._store.entries.values()]

    async def register(self, record: InstanceRecord, lease_seconds: float | None = None) -> None:
        """See :meth:`Registry.register`."""
        self._check_open()
        lease = resolve_lease(record, lease_seconds)
        now, now_dt = self._now()
        stored = record.model_copy(
            update={"registered_at": now_dt, "last_heartbeat": now_dt, "lease_seconds": lease}
        )
        self._store.prune(now)
        with self._store.lock:
            self._store.entries[record.instance_id] = (stored, now + lease)
        self._store.notify()

    async def heartbeat(
        self,
        instance_id: str,
        *,
        health: HealthStatus | None = None,
        service_health: Mapping[str, HealthStatus] | None = None,
    ) -> None:
        """See :meth:`Registry.heartbeat`. Raises :class:`InstanceNotRegistered`."""
        self._check_open()
        now, now_dt = self._now()
        self._store.prune(now)
        with self._store.lock:
            entry = self._store.entries.get(instance_id)
            if entry is None:
                raise InstanceNotRegistered(instance_id)
            old = entry[0]
            new = with_heartbeat(old, now_dt, health=health, service_health=service_health)
            self._store.entries[instance_id] = (new, now + new.lease_seconds)
        if new.content_key() != old.content_key():
            self._store.notify()

    async def deregister(self, instance_id: str) -> None:
        """See :meth:`Registry.deregister`."""
        self._check_open()
        with self._store.lock:
            gone = self._store.entries.pop(instance_id, None)
        if gone is not None:
            self._store.notify()

    async def list(
        self, service: str | None = None, *, include_unhealthy: bool = True
    ) -> builtins.list[InstanceRecord]:
        """See :meth:`Registry.list`."""
        self._check_open()
        return filter_records(self._live(), service, include_unhealthy)

    async def watch(self, service: str | None = None) -> AsyncGenerator[RegistryEvent, None]:
        """See :meth:`Registry.watch`. Changes are seen at once; expiries within
        a few milliseconds of the lease end."""
        self._check_open()
        view = WatchView(service)
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            # Called by whichever thread changed the store; the Event belongs to this loop.
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(changed.set)

        self._store.listeners.add(wake)
        self._wakeups.add(changed)
        try:
            for event in view.replace_all(self._live()):
                yield event
            yield RegistryEvent(kind="synced")
            while not self._closed:
                changed.clear()
                for event in view.replace_all(self._live()):
                    yield event
                if self._closed:
                    break
                await self._wait(changed)
        finally:
            self._store.listeners.discard(wake)
            self._wakeups.discard(changed)

    async def _wait(self, changed: asyncio.Event) -> None:
        next_expiry = self._store.next_expiry()
        timeout = _MAX_IDLE_WAIT
        if next_expiry is not None:
            timeout = min(timeout, max(0.0, next_expiry - self._clock()) + 0.005)
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            pass

    async def close(self) -> None:
        """See :meth:`Registry.close`. A named store keeps its entries."""
        self._closed = True
        for wakeup in builtins.list(self._wakeups):
            wakeup.set()
