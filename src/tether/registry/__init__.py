"""Service registry: instances, leases, watches, selectors and outlier ejection.

Pick a backend by URL with :func:`open_registry`::

    async with open_registry("sqlite:///var/lib/tether/registry.db") as registry:
        await registry.register(record, lease_seconds=10)
        await registry.heartbeat(record.instance_id)   # within the lease
        print(await registry.list("inventory"))
        await registry.deregister(record.instance_id)
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
    from tether.settings import Settings

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
    # sqlite:///abs/x.db -> /abs/x.db; sqlite://rel/x.db -> rel/x.db;
    # sqlite:////abs/x.db (the SQLAlchemy spelling the job store uses) -> /abs/x.db
    path = parts.netloc + parts.path
    if not path or path == "/":
        raise ValueError(f"registry URL {url!r} names no file: use sqlite:///path/to/registry.db")
    while path.startswith("//"):
        path = path[1:]
    return path


def _seconds(url: str, name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} in registry URL {url!r} is not a number") from None


def open_registry(url: str, *, settings: Settings | None = None) -> Registry:
    """Create the registry that ``url`` names, without connecting yet.

    Schemes:
        ``memory://`` a private in-process registry; ``memory://NAME`` one shared
        by every handle of that name in this process.
        ``sqlite:///abs/path/registry.db`` (or ``sqlite://relative/path.db``); query
        options ``poll_interval`` (seconds between a watcher's checks, default
        0.2) and ``busy_timeout`` (seconds to wait for another process's write
        lock, default 5).
        ``nats://host:port`` (also ``tls://``; several servers separated by commas,
        credentials in the URL as ``nats://user:pass@host:port``); query options
        ``bucket`` (default ``tether_registry``) and ``marker_ttl`` (seconds that
        deletion markers stay, default 60). The NATS login and TLS come from
        the ``TETHER_NATS_*`` settings (user and password, token, NKey seed,
        ``.creds`` file, TLS files; see
        :class:`~tether.transports.nats_connect.NatsCredentials`); a user and
        password in the URL win over the settings' user and password.

    Args:
        url: the registry URL.
        settings: where the NATS credentials come from (default:
            :func:`tether.settings.get_settings`).

    Returns:
        A :class:`Registry`, not connected yet.

    Raises:
        ValueError: an unknown scheme, an unknown query option, a bad value,
            or a NATS credentials or TLS file that cannot be read.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query, keep_blank_values=True)
    registry: Registry
    if scheme == "memory":
        registry = MemoryRegistry(parts.netloc or None)
    elif scheme == "sqlite":
        poll = _seconds(url, "poll_interval", _one(query, "poll_interval"), 0.2)
        busy = _seconds(url, "busy_timeout", _one(query, "busy_timeout"), 5.0)
        registry = SqliteRegistry(_sqlite_path(url), poll_interval=poll, busy_timeout=busy)
    elif scheme in ("nats", "tls"):
        from tether.settings import get_settings
        from tether.transports.nats_connect import NatsCredentials

        from .nats import DEFAULT_BUCKET, NatsRegistry

        bucket = _one(query, "bucket") or DEFAULT_BUCKET
        marker_ttl = _seconds(url, "marker_ttl", _one(query, "marker_ttl"), 60.0)
        servers = [
            urlunsplit((scheme, netloc, "", "", "")) for netloc in parts.netloc.split(",") if netloc
        ]
        if not servers:
            raise ValueError(f"registry URL {url!r} names no NATS server")
        credentials = NatsCredentials.from_settings(settings or get_settings(), url)
        options = credentials.connect_options()
        if "@" in parts.netloc:  # the URL's own login wins
            options.pop("user", None)
            options.pop("password", None)
        registry = NatsRegistry(
            servers, bucket=bucket, marker_ttl=marker_ttl, connect_options=options
        )
    else:
        raise ValueError(
            f"unknown registry URL scheme in {url!r}: use memory://, sqlite:///path or "
            "nats://host:port"
        )
    if query:
        raise ValueError(f"unknown option(s) {sorted(query)} in registry URL {url!r}")
    return registry
