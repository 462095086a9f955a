"""Registry in a SQLite file, shared by every process on one machine.

The file uses WAL mode. A row holds an instance's record as JSON and its
expiry time (wall-clock seconds since the epoch); reads ignore expired rows
and writes prune them. Watchers poll cheaply: every ``poll_interval`` seconds
they read ``PRAGMA data_version`` (which changes when another connection
commits) and rescan only when it changed or an entry's lease ended. Writes by
the same registry object wake its watchers at once.

SQLite calls run in one worker thread per registry, never on the event loop.
Every SQLite or file-system error (``database is locked`` past the busy
timeout, a folder that cannot be created, a corrupt file) is raised as
:class:`~tether.registry.errors.RegistryUnavailable`, with SQLite's own
exception as the cause, so callers handle one kind of transient failure.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from tether.sqlite_wal import enable_wal

from .base import Registry, WatchView, filter_records, resolve_lease, with_heartbeat
from .errors import InstanceNotRegistered, RegistryClosed, RegistryUnavailable
from .model import HealthStatus, InstanceRecord, RegistryEvent

__all__ = ["SqliteRegistry"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tether_registry (
    instance_id TEXT PRIMARY KEY,
    record      TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    revision    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tether_registry_expires ON tether_registry (expires_at);
CREATE TABLE IF NOT EXISTS tether_registry_seq (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER);
INSERT OR IGNORE INTO tether_registry_seq (id, seq) VALUES (0, 0);
"""


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _next_revision(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "UPDATE tether_registry_seq SET seq = seq + 1 WHERE id = 0 RETURNING seq"
    ).fetchone()
    return int(row[0])


@dataclass
class _WatchScan:
    """What one watcher knows: data_version, revisions and records by id."""

    data_version: int = -1
    next_expiry: float = float("inf")
    records: dict[str, tuple[int, InstanceRecord]] = field(default_factory=dict)


class SqliteRegistry(Registry):
    """Registry stored in the SQLite file ``path`` (created with its folders).

    Args:
        path: the database file, e.g. ``<state dir>/registry.db``.
        poll_interval: seconds between a watcher's checks for changes made by
            other processes (default 0.2).
        busy_timeout: seconds to wait for another process's write lock before
            :class:`~tether.registry.errors.RegistryUnavailable` is raised
            (default 5).
        clock: current time in seconds since the epoch (default ``time.time``);
            every process sharing the file must use the same clock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.2,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0 seconds")
        if busy_timeout < 0:
            raise ValueError("busy_timeout must be >= 0 seconds")
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._watch_conn: sqlite3.Connection | None = None
        self._closed = False
        self._wakeups: set[asyncio.Event] = set()

    # -- plumbing (the _sync methods run in the worker thread) -------------

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise RegistryClosed("the registry is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="tether-registry-sqlite")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(fn, *args))
        except (sqlite3.Error, OSError) as exc:
            raise RegistryUnavailable(f"SQLite registry {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        enable_wal(conn, self._busy_timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = self._connect()
            try:
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()  # a locked file: the next operation connects afresh
                raise
            self._conn = conn
        return self._conn

    def _wake_watchers(self) -> None:
        for wakeup in builtins.list(self._wakeups):
            wakeup.set()

    # -- operations ---------------------------------------------------------

    def _register_sync(self, record: InstanceRecord, lease: float) -> None:
        conn = self._db()
        now = self._clock()
        now_dt = datetime.fromtimestamp(now, UTC)
        stored = record.model_copy(
            update={"registered_at": now_dt, "last_heartbeat": now_dt, "lease_seconds": lease}
        )
        with _transaction(conn):
            conn.execute("DELETE FROM tether_registry WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO tether_registry (instance_id, record, expires_at, revision)"
                " VALUES (?, ?, ?, ?)",
                (record.instance_id, stored.model_dump_json(), now + lease, _next_revision(conn)),
            )

    async def register(self, record: InstanceRecord, lease_seconds: float | None = None) -> None:
        """See :meth:`Registry.register`.

        Raises:
            ValueError: a lease that is not a finite number > 0.
            RegistryUnavailable: the file stayed locked longer than
                ``busy_timeout``, or cannot be opened or written.
            RegistryClosed: after :meth:`close`.
        """
        lease = resolve_lease(record, lease_seconds)
        await self._run(self._register_sync, record, lease)
        self._wake_watchers()

    def _heartbeat_sync(
        self,
        instance_id: str,
        health: HealthStatus | None,
        service_health: Mapping[str, HealthStatus] | None,
    ) -> bool:
        conn = self._db()
        now = self._clock()
        with _transaction(conn):
            row = conn.execute(
                "SELECT record, expires_at FROM tether_registry WHERE instance_id = ?",
                (instance_id,),
            ).fetchone()
            if row is None or row[1] <= now:
                conn.execute("DELETE FROM tether_registry WHERE instance_id = ?", (instance_id,))
                missing = True
            else:
                missing = False
                old = InstanceRecord.model_validate_json(row[0])
                new = with_heartbeat(
                    old,
                    datetime.fromtimestamp(now, UTC),
                    health=health,
                    service_health=service_health,
                )
                changed = new.content_key() != old.content_key()
                conn.execute(
                    "UPDATE tether_registry SET record = ?, expires_at = ?,"
                    " revision = CASE WHEN ? THEN ? ELSE revision END WHERE instance_id = ?",
                    (
                        new.model_dump_json(),
                        now + new.lease_seconds,
                        changed,
                        _next_revision(conn) if changed else 0,
                        instance_id,
                    ),
                )
        if missing:
            raise InstanceNotRegistered(instance_id)
        return changed

    async def heartbeat(
        self,
        instance_id: str,
        *,
        health: HealthStatus | None = None,
        service_health: Mapping[str, HealthStatus] | None = None,
    ) -> None:
        """See :meth:`Registry.heartbeat`.

        Raises:
            InstanceNotRegistered: the entry is gone (its lease ended, or it
                was deregistered or never registered).
            RegistryUnavailable: the file stayed locked longer than
                ``busy_timeout``, or cannot be opened or written.
            RegistryClosed: after :meth:`close`.
        """
        changed = await self._run(self._heartbeat_sync, instance_id, health, service_health)
        if changed:
            self._wake_watchers()

    def _deregister_sync(self, instance_id: str) -> None:
        self._db().execute("DELETE FROM tether_registry WHERE instance_id = ?", (instance_id,))

    async def deregister(self, instance_id: str) -> None:
        """See :meth:`Registry.deregister`.

        Raises:
            RegistryUnavailable: the file stayed locked longer than
                ``busy_timeout``, or cannot be opened or written.
            RegistryClosed: after :meth:`close`.
        """
        await self._run(self._deregister_sync, instance_id)
        self._wake_watchers()

    def _list_sync(self) -> builtins.list[InstanceRecord]:
        rows = (
            self._db()
            .execute(
                "SELECT instance_id, record FROM tether_registry WHERE expires_at > ?",
                (self._clock(),),
            )
            .fetchall()
        )
        decoded = (self._decode(instance_id, text) for instance_id, text in rows)
        return [record for record in decoded if record is not None]

    def _decode(self, instance_id: str, text: str) -> InstanceRecord | None:
        """The row's record; None (and a warning) for a row no Tether wrote."""
        try:
            return InstanceRecord.model_validate_json(text)
        except ValidationError:
            logger.warning("ignoring malformed registry entry %r in %s", instance_id, self.path)
            return None

    async def list(
        self, service: str | None = None, *, include_unhealthy: bool = True
    ) -> builtins.list[InstanceRecord]:
        """See :meth:`Registry.list`. Malformed rows are skipped with a warning.

        Raises:
            RegistryUnavailable: the file cannot be opened or read (a lock held
                while the schema is first created, a corrupt file).
            RegistryClosed: after :meth:`close`.
        """
        return filter_records(await self._run(self._list_sync), service, include_unhealthy)

    # -- watch ----------------------------------------------------------------

    def _scan_sync(self, scan: _WatchScan, force: bool) -> bool:
        """Refresh ``scan`` if the file changed or a lease ended; True if rescanned."""
        self._db()  # the schema exists before the watch connection reads it
        if self._watch_conn is None:
            self._watch_conn = self._connect()
        conn = self._watch_conn
        now = self._clock()
        data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if not force and data_version == scan.data_version and now < scan.next_expiry:
            return False
        rows = conn.execute(
            "SELECT instance_id, revision, expires_at FROM tether_registry WHERE expires_at > ?",
            (now,),
        ).fetchall()
        known = scan.records
        stale = [row[0] for row in rows if row[0] not in known or known[row[0]][0] != row[1]]
        fresh: dict[str, tuple[int, InstanceRecord]] = {}
        for start in range(0, len(stale), 500):
            chunk = stale[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for instance_id, revision, text in conn.execute(
                "SELECT instance_id, revision, record FROM tether_registry"
                f" WHERE instance_id IN ({marks})",
                chunk,
            ):
                record = self._decode(instance_id, text)
                if record is not None:
                    fresh[instance_id] = (revision, record)
        scan.records = {
            row[0]: fresh.get(row[0]) or known[row[0]]
            for row in rows
            if row[0] in fresh or row[0] in known
        }
        scan.next_expiry = min((row[2] for row in rows), default=float("inf"))
        scan.data_version = data_version
        return True

    async def watch(self, service: str | None = None) -> AsyncGenerator[RegistryEvent, None]:
        """See :meth:`Registry.watch`. Changes by other processes are seen within
        about ``poll_interval`` seconds, expiries within ``poll_interval`` of the
        lease end.

        Raises:
            RegistryUnavailable: the file cannot be read (when the watch starts
                or later); the watch then ends and may be started again.
            RegistryClosed: the registry was closed before the watch started.
        """
        view = WatchView(service)
        scan = _WatchScan()
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            await self._run(self._scan_sync, scan, True)
            for event in view.replace_all(r for _, r in scan.records.values()):
                yield event
            yield RegistryEvent(kind="synced")
            while not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), self.poll_interval)
                forced = wakeup.is_set()
                wakeup.clear()
                if self._closed:
                    break
                try:
                    rescanned = await self._run(self._scan_sync, scan, forced)
                except RegistryClosed:
                    break
                if rescanned:
                    for event in view.replace_all(r for _, r in scan.records.values()):
                        yield event
        finally:
            self._wakeups.discard(wakeup)

    # -- close ----------------------------------------------------------------

    def _close_sync(self) -> None:
        for conn in (self._conn, self._watch_conn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._conn = self._watch_conn = None

    async def close(self) -> None:
        """See :meth:`Registry.close`. Never raises."""
        if self._closed:
            return
        self._closed = True
        self._wake_watchers()
        executor = self._executor
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
            executor.shutdown(wait=False)
