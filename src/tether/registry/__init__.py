"""Service registry: instances, leases, watches, selectors and outlier ejection.

Pick a backend by URL with :func:`open_registry`::

    async with open_registry("sqlite:///var/lib/tether/registry.db") as registry:
        await registry.register(record, lease_seconds=10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .base import Registry
from .ejection import OutlierEjector
from .errors import InstanceNotRegistered, RegistryClosed, RegistryError, RegistryUnavailable
from .memory import MemoryRegistry
from .model import (
    DEFAULT_LEASE_SECONDS,
    EventKind,
    HealthStatus,
    InstanceRecord,
    RegistryEvent,
    ServiceRef,
)
from .selectors import SELECTOR_NAMES, NoCandidates, Selector, make_selector
from .sqlite import SqliteRegistry

if TYPE_CHECKING:
    from .nats import NatsRegistry

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "SELECTOR_NAMES",
    "EventKind",
    "HealthStatus",
    "InstanceNotRegistered",
    "InstanceRecord",
    "MemoryRegistry",
    "NatsRegistry",
    "NoCandidates",
    "OutlierEjector",
    "Registry",
    "RegistryClosed",
    "RegistryError",
    "RegistryEvent",
    "RegistryUnavailable",
    "Selector",
    "ServiceRef",
    "SqliteRegistry",
    "make_selector",
    "open_registry",
]


def __getattr__(name: str) -> object:
    # NatsRegistry is imported lazily so that importing the registry does not
    # import nats-py.
    if name == "NatsRegistry":
        from .nats import NatsRegistry

        return NatsRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.pop(key, None)
    return values[-1] if values else None


def _sqlite_path(url: str) -> str:
    parts = urlsplit(url)
    # sqlite:///abs/x.db -> /abs/x.db; sqlite://rel/x.db -> rel/x.db
    path = parts.netloc + parts.path
    if not path or path == "/":
        raise ValueError(f"registry URL {url!r} names no file: use sqlite:///path/to/registry.db")
    return path


def open_registry(url: str) -> Registry:
    """Create the registry that ``url`` names, without connecting yet.

    Schemes:
        ``memory://`` a private in-process registry; ``memory://NAME`` one shared
        by every handle of that name in this process.
        ``sqlite:///abs/path/registry.db`` (or ``sqlite://relative/path.db``); query
        option ``poll_interval`` (seconds, default 0.2).
        ``nats://host:port`` (also ``tls://``; several servers separated by commas,
        credentials in the URL as ``nats://user:pass@host:port``); query options
        ``bucket`` (default ``tether_registry``) and ``marker_ttl`` (seconds).

    Returns a :class:`Registry`; raises ``ValueError`` for an unknown scheme,
    an unknown query option or a bad value.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query, keep_blank_values=True)
    registry: Registry
    if scheme == "memory":
        registry = MemoryRegistry(parts.netloc or None)
    elif scheme == "sqlite":
        poll = _one(query, "poll_interval")
        registry = SqliteRegistry(
            _sqlite_path(url), poll_interval=float(poll) if poll is not None else 0.2
        )
    elif scheme in ("nats", "tls"):
        from .nats import DEFAULT_BUCKET, NatsRegistry

        bucket = _one(query, "bucket") or DEFAULT_BUCKET
        marker_ttl = _one(query, "marker_ttl")
        servers = [
            urlunsplit((scheme, netloc, "", "", "")) for netloc in parts.netloc.split(",") if netloc
        ]
        if not servers:
            raise ValueError(f"registry URL {url!r} names no NATS server")
        registry = NatsRegistry(
            servers,
            bucket=bucket,
            marker_ttl=float(marker_ttl) if marker_ttl is not None else 60.0,
        )
    else:
        raise ValueError(
            f"unknown registry URL scheme in {url!r}: use memory://, sqlite:///path or "
            "nats://host:port"
        )
    if query:
        raise ValueError(f"unknown option(s) {sorted(query)} in registry URL {url!r}")
    return registry
