"""Job stores: pick one by URL with ``open_store``.

URLs:
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy
      convention: the path is what follows ``sqlite:///``);
    * ``postgresql://user:password@host:port/db`` or ``postgres://...``; the query
      parameter ``tether_listen=false`` makes waiters poll instead of ``LISTEN``
      (behind a connection pooler in transaction mode), other parameters go to libpq;
    * ``memory://``: a private in-memory SQLite database (one store only).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from tether.jobs.store.base import JobStore
from tether.jobs.store.postgres import PostgresJobStore
from tether.jobs.store.sqlite import SqliteJobStore

__all__ = ["JobStore", "PostgresJobStore", "SqliteJobStore", "make_store", "open_store"]


def make_store(url: str, **options: Any) -> JobStore:
    """Build the store ``url`` names, without opening it.

    Args:
        url: see the module docstring.
        options: keyword arguments for the store's constructor (e.g. ``poll_interval``).

    Raises:
        ValueError: unknown scheme or missing path.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"not a job store URL: {url!r}")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ValueError("sqlite URL needs a path: sqlite:///jobs.db or sqlite:////abs/jobs.db")
        return SqliteJobStore(path, **options)
    if scheme == "memory":
        return SqliteJobStore(":memory:", **options)
    if scheme in ("postgresql", "postgres"):
        conninfo, listen = _split_listen(url)
        if listen is not None:
            options = {"listen": listen, **options}
        return PostgresJobStore(conninfo, **options)
    raise ValueError(f"unsupported job store scheme {scheme!r} (sqlite, postgresql, memory)")


async def open_store(url: str, **options: Any) -> JobStore:
    """Build and open (migrating if needed) the store ``url`` names.

    Returns:
        An open store; close it with ``await store.close()``.

    Raises:
        ValueError: unknown scheme or missing path.
        sqlite3.Error, psycopg.Error, psycopg_pool.PoolTimeout: the database is unusable.
    """
    store = make_store(url, **options)
    await store.open()
    return store


def _split_listen(url: str) -> tuple[str, bool | None]:
    """Take ``tether_listen=true|false`` out of a PostgreSQL URL's query.

    The other query options are kept byte for byte: re-encoding them would change
    what libpq reads (``urlencode`` writes a space as ``+``, which libpq keeps).

    Raises:
        ValueError: a value other than true/false/1/0.
    """
    parts = urlsplit(url)
    kept: list[str] = []
    found: list[str] = []
    for piece in parts.query.split("&") if parts.query else []:
        key, _, value = piece.partition("=")
        if unquote(key) == "tether_listen":
            found.append(unquote(value))
        else:
            kept.append(piece)
    if not found:
        return url, None
    value = found[-1].lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError(f"tether_listen must be true or false, not {found[-1]!r}")
    return urlunsplit(parts._replace(query="&".join(kept))), value in ("true", "1")
