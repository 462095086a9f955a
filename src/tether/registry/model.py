"""Data model of the registry: instance records and change events.

Every timestamp is a timezone-aware UTC ``datetime``; every duration is in
seconds (``float``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "EventKind",
    "HealthStatus",
    "InstanceRecord",
    "RegistryEvent",
    "ServiceRef",
    "utc_now",
    "validate_instance_id",
    "worst_health",
]

HealthStatus = Literal["passing", "warning", "critical"]
"""Health of an instance or of one of its services. Only ``critical`` is unhealthy."""

EventKind = Literal["added", "updated", "removed", "synced"]
"""Kind of a :class:`RegistryEvent`."""

DEFAULT_LEASE_SECONDS = 10.0
"""Lease used when neither the caller nor the record gives one, in seconds."""

_HEALTH_RANK: dict[str, int] = {"passing": 0, "warning": 1, "critical": 2}

# Safe as a NATS key-value key, a SQLite key and a NATS subject token list.
_INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*$")
_MAX_INSTANCE_ID = 200


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def validate_instance_id(instance_id: str) -> str:
    """Check that ``instance_id`` is usable as a registry key and return it.

    Allowed: letters, digits, ``_``, ``-``, ``=``, and dots between non-empty
    parts, at most 200 characters. Raises ``ValueError`` otherwise.
    """
    if len(instance_id) > _MAX_INSTANCE_ID or not _INSTANCE_ID_RE.match(instance_id):
        raise ValueError(
            f"invalid instance id {instance_id!r}: use letters, digits, '_', '-', '=' "
            f"and single dots between parts (at most {_MAX_INSTANCE_ID} characters)"
        )
    return instance_id


def worst_health(*statuses: HealthStatus | None) -> HealthStatus:
    """Return the worst of ``statuses`` (``None`` is ignored; none given -> ``passing``)."""
    worst: HealthStatus = "passing"
    for status in statuses:
        if status is not None and _HEALTH_RANK[status] > _HEALTH_RANK[worst]:
            worst = status
    return worst


class ServiceRef(BaseModel):
    """One service an instance serves: its name and version (both strings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str = ""


class InstanceRecord(BaseModel):
    """What the registry knows about one running instance (one App process).

    Fields:
        instance_id: unique id of the instance (see :func:`validate_instance_id`).
        services: the services it serves; replicas share service names.
        address: advertised URL to reach it, ``http(s)://host:port`` for direct
            calls or ``nats://host:port`` when it is reached through the relay.
        metadata: free-form string labels (zone, version, ...).
        health: overall health; ``critical`` takes it out of rotation.
        service_health: per-service health, service name -> status; a service
            missing from the map has the overall ``health``.
        registered_at: when it (re-)registered, UTC; set by the registry.
        last_heartbeat: when its lease was last renewed, UTC; set by the registry.
        lease_seconds: lease length in seconds; the entry disappears when no
            heartbeat comes within this time.

    Records are immutable; use ``model_copy(update=...)`` to derive one.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    instance_id: str
    services: list[ServiceRef] = Field(default_factory=list)
    address: str
    metadata: dict[str, str] = Field(default_factory=dict)
    health: HealthStatus = "passing"
    service_health: dict[str, HealthStatus] = Field(default_factory=dict)
    registered_at: datetime = Field(default_factory=utc_now)
    last_heartbeat: datetime = Field(default_factory=utc_now)
    lease_seconds: float = Field(default=DEFAULT_LEASE_SECONDS, gt=0)

    @field_validator("instance_id")
    @classmethod
    def _check_instance_id(cls, value: str) -> str:
        return validate_instance_id(value)

    @field_validator("services", mode="before")
    @classmethod
    def _coerce_services(cls, value: Any) -> Any:
        # Accept plain names ("inventory") and "name@version" shorthands.
        if isinstance(value, list):
            out: list[Any] = []
            for item in value:
                if isinstance(item, str):
                    name, _, version = item.partition("@")
                    out.append({"name": name, "version": version})
                else:
                    out.append(item)
            return out
        return value

    @field_validator("registered_at", "last_heartbeat")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    @property
    def service_names(self) -> list[str]:
        """Names of the services this instance serves, in declaration order."""
        return [ref.name for ref in self.services]

    @property
    def is_relay(self) -> bool:
        """True when :attr:`address` is a NATS relay address (``nats://`` or ``tls://``)."""
        return urlsplit(self.address).scheme in ("nats", "tls")

    def offers(self, service: str | None) -> bool:
        """Return True when the instance serves ``service`` (``None`` matches any instance)."""
        return service is None or any(ref.name == service for ref in self.services)

    def status_for(self, service: str | None = None) -> HealthStatus:
        """Health as seen by callers of ``service``: the worst of the overall health
        and that service's own health (``service=None``: overall health only)."""
        if service is None:
            return self.health
        return worst_health(self.health, self.service_health.get(service))

    def is_healthy(self, service: str | None = None) -> bool:
        """True unless :meth:`status_for` ``(service)`` is ``critical``."""
        return self.status_for(service) != "critical"

    def content_key(self) -> dict[str, Any]:
        """Everything except ``last_heartbeat``: two records with equal keys differ
        only by a lease renewal, which does not produce an ``updated`` event."""
        return self.model_dump(exclude={"last_heartbeat"})


class RegistryEvent(BaseModel):
    """A change seen by :meth:`tether.registry.Registry.watch`.

    ``kind`` is one of:
        ``added``: an instance appeared (also emitted for every instance present
            when the watch starts);
        ``updated``: its record changed (health, address, services, metadata,
            lease, re-registration); lease renewals alone are not reported;
        ``removed``: it deregistered, its lease expired, or it stopped serving the
            watched service; ``record`` is the last record known;
        ``synced``: emitted once, right after the initial ``added`` events, so a
            consumer knows its view is complete; ``record`` is ``None``.
    """

    model_config = ConfigDict(frozen=True)

    kind: EventKind
    record: InstanceRecord | None = None

    @property
    def instance_id(self) -> str | None:
        """The instance id of :attr:`record`, or ``None`` for ``synced``."""
        return None if self.record is None else self.record.instance_id
