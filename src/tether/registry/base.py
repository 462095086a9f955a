"""The abstract registry interface shared by every backend."""

from __future__ import annotations

import abc
import builtins
import math
from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Self

from .model import HealthStatus, InstanceRecord, RegistryEvent

__all__ = ["Registry", "WatchView", "filter_records", "resolve_lease", "with_heartbeat"]

_Records = builtins.list[InstanceRecord]


def resolve_lease(record: InstanceRecord, lease_seconds: float | None) -> float:
    """Return the lease to use in seconds: ``lease_seconds`` if given, else the record's.

    Raises ``ValueError`` when it is not a finite number > 0.
    """
    lease = record.lease_seconds if lease_seconds is None else float(lease_seconds)
    if not math.isfinite(lease) or lease <= 0:
        raise ValueError(f"lease_seconds must be a finite number > 0, got {lease!r}")
    return lease


def with_heartbeat(
    record: InstanceRecord,
    now: datetime,
    *,
    health: HealthStatus | None,
    service_health: Mapping[str, HealthStatus] | None,
) -> InstanceRecord:
    """Return ``record`` renewed at ``now``: ``health`` replaces the overall health when
    given, ``service_health`` is merged into the per-service map when given."""
    update: dict[str, object] = {"last_heartbeat": now}
    if health is not None:
        update["health"] = health
    if service_health is not None:
        update["service_health"] = {**record.service_health, **service_health}
    return InstanceRecord.model_validate({**record.model_dump(), **update})


def filter_records(
    records: Iterable[InstanceRecord], service: str | None, include_unhealthy: bool
) -> _Records:
    """Keep the records serving ``service`` (``None``: all) and, unless
    ``include_unhealthy``, healthy for it; sorted by instance id."""
    out = [r for r in records if r.offers(service) and (include_unhealthy or r.is_healthy(service))]
    out.sort(key=lambda r: r.instance_id)
    return out


class WatchView:
    """A watcher's view of the registry, turning snapshots or single changes into
    :class:`RegistryEvent` objects. Pure bookkeeping, shared by the backends.

    ``service`` restricts the view to instances serving it (``None``: all).
    """

    def __init__(self, service: str | None) -> None:
        self.service = service
        self.state: dict[str, InstanceRecord] = {}

    def upsert(self, record: InstanceRecord) -> RegistryEvent | None:
        """Apply a new or changed record; return the event to emit, if any."""
        if not record.offers(self.service):
            return self.remove(record.instance_id)
        old = self.state.get(record.instance_id)
        self.state[record.instance_id] = record
        if old is None:
            return RegistryEvent(kind="added", record=record)
        if old.content_key() != record.content_key():
            return RegistryEvent(kind="updated", record=record)
        return None

    def remove(self, instance_id: str) -> RegistryEvent | None:
        """Apply the disappearance of ``instance_id``; return the event to emit, if any."""
        old = self.state.pop(instance_id, None)
        return None if old is None else RegistryEvent(kind="removed", record=old)

    def replace_all(self, records: Iterable[InstanceRecord]) -> builtins.list[RegistryEvent]:
        """Apply a full snapshot of live records; return the events, removals first."""
        fresh = {r.instance_id: r for r in records}
        events: builtins.list[RegistryEvent] = []
        for instance_id in sorted(set(self.state) - set(fresh)):
            event = self.remove(instance_id)
            if event is not None:
                events.append(event)
        for instance_id in sorted(fresh):
            event = self.upsert(fresh[instance_id])
            if event is not None:
                events.append(event)
        return events


class Registry(abc.ABC):
    """Instances with their services, addresses, metadata and health, kept alive by
    leases. Backends: :class:`~tether.registry.memory.MemoryRegistry`,
    :class:`~tether.registry.sqlite.SqliteRegistry`,
    :class:`~tether.registry.nats.NatsRegistry`; pick one with
    :func:`tether.registry.open_registry`.

    Constructors do no I/O; the first operation connects. An ``async with`` block
    closes the registry on exit. A registry belongs to one event loop.

    Errors, the same for every backend:
    :class:`~tether.registry.errors.RegistryUnavailable` when the backend
    fails (NATS unreachable or answering an error, the SQLite file locked
    past its busy timeout or unreadable), usually transient;
    :class:`~tether.registry.errors.RegistryClosed` after :meth:`close`;
    :class:`~tether.registry.errors.InstanceNotRegistered` from
    :meth:`heartbeat` when the entry is gone. All are
    :class:`~tether.registry.errors.RegistryError`.
    """

    @abc.abstractmethod
    async def register(self, record: InstanceRecord, lease_seconds: float | None = None) -> None:
        """Create or replace the entry of ``record.instance_id``.

        ``lease_seconds`` (seconds, > 0; default: ``record.lease_seconds``) is how
        long the entry lives without a heartbeat. The registry sets
        ``registered_at`` and ``last_heartbeat`` to now and stores the lease in
        the record.

        Raises:
            ValueError: the lease is not a finite number > 0.
            RegistryUnavailable: the backend failed.
            RegistryClosed: after :meth:`close`.
        """

    @abc.abstractmethod
    async def heartbeat(
        self,
        instance_id: str,
        *,
        health: HealthStatus | None = None,
        service_health: Mapping[str, HealthStatus] | None = None,
    ) -> None:
        """Renew the lease of ``instance_id`` for another ``lease_seconds``.

        ``health`` (if given) replaces the overall health; ``service_health`` (if
        given) is merged into the per-service health.

        Raises:
            InstanceNotRegistered: the entry is gone (expired, deregistered,
                never registered): register again.
            RegistryUnavailable: the backend failed.
            RegistryClosed: after :meth:`close`.
        """

    @abc.abstractmethod
    async def deregister(self, instance_id: str) -> None:
        """Remove the entry of ``instance_id`` now. Unknown ids are ignored.

        Raises:
            RegistryUnavailable: the backend failed.
            RegistryClosed: after :meth:`close`.
        """

    @abc.abstractmethod
    async def list(self, service: str | None = None, *, include_unhealthy: bool = True) -> _Records:
        """Return the live records, sorted by instance id.

        ``service``: only instances serving it (``None``: all). With
        ``include_unhealthy=False``, instances whose health for ``service`` is
        ``critical`` are left out. Entries whose lease ended are never returned.

        Raises:
            RegistryUnavailable: the backend failed.
            RegistryClosed: after :meth:`close`.
        """

    @abc.abstractmethod
    def watch(self, service: str | None = None) -> AsyncGenerator[RegistryEvent, None]:
        """Follow the instances serving ``service`` (``None``: all).

        Yields first an ``added`` event for every live instance (unhealthy ones
        included), then one ``synced`` event, then ``added`` / ``updated`` /
        ``removed`` events as they happen (removal by lease expiry included).
        Lease renewals alone yield nothing. The iterator ends when the registry
        is closed. It is an async generator: break out of it inside
        ``contextlib.aclosing(...)`` to release its resources promptly.

        Raises (from the iteration):
            RegistryUnavailable: the backend failed when the watch started
                (and, for SQLite, later: the watch then ends; start another).
            RegistryClosed: the registry was closed before the watch started.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and end every watch. Idempotent. Entries stay
        registered until they are deregistered or their lease ends."""

    async def __aenter__(self) -> Self:
        """Return the registry itself."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the registry."""
        await self.close()
