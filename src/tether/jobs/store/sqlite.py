"""SQLite job store: the embedded default.

The stdlib ``sqlite3`` module runs on one dedicated thread per store (calls
are serialised through it and awaited from asyncio). The database is in WAL
mode and every write runs in ``BEGIN IMMEDIATE``, so several processes may use
the same file: claims are atomic across them. Times are stored as integer
microseconds since the Unix epoch (UTC), JSON as text.

Wake-ups: submissions and re-queues made by any store of this process on the
same file wake its waiters at once; changes made by other processes are seen
by polling every ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from tether.jobs.errors import (
    DuplicateJob,
    IllegalTransition,
    JobNotFound,
    JobStoreError,
    LeaseLost,
)
from tether.jobs.model import Claim, Job, JobState, new_job_id, normalize_error
from tether.jobs.store._notify import Notifier, job_topic
from tether.jobs.store.base import (
    COLUMN_LIST,
    MAX_CLAIM_LIMIT,
    MAX_LIST_LIMIT,
    JobStore,
    check_cursor,
    check_lease_seconds,
    check_limit,
    check_progress,
    check_queues,
    check_retry_delay,
    check_state,
    check_submit,
    check_types,
    claim_order,
    dump_json,
    lease_lost_reason,
    same_submission,
)
from tether.jobs.store.migrations import MIGRATIONS, VERSION_TABLE
from tether.sqlite_wal import enable_wal

P = ParamSpec("P")
T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# One notifier per database file, shared by the stores of this process.
_notifiers: weakref.WeakValueDictionary[str, Notifier] = weakref.WeakValueDictionary()
_notifiers_lock = threading.Lock()

_LEASE_OK = "id = :id AND state = 'running' AND lease_token = :token AND lease_expires_at > :now"
_RELEASE_LEASE = "lease_token = NULL, lease_expires_at = NULL, version = version + 1"


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_us(value: datetime) -> int:
    return (value - _EPOCH) // _US


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _row_to_job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        type=row[1],
        queue=row[2],
        parameters=json.loads(row[3]),
        state=JobState(row[4]),
        priority=row[5],
        attempts=row[6],
        max_attempts=row[7],
        scheduled_at=_EPOCH + timedelta(microseconds=row[8]),
        created_at=_EPOCH + timedelta(microseconds=row[9]),
        started_at=_from_us(row[10]),
        finished_at=_from_us(row[11]),
        lease_token=row[12],
        lease_expires_at=_from_us(row[13]),
        worker_id=row[14],
        progress=row[15],
        progress_message=row[16],
        result=_loads(row[17]),
        error=_loads(row[18]),
        idempotency_key=row[19],
        cancel_requested=bool(row[20]),
        version=row[21],
    )


def _in_list(prefix: str, values: Sequence[str], params: dict[str, Any]) -> str:
    """Return ``:prefix0, :prefix1, ...`` and put the values in ``params``."""
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f":{prefix}{i}")
    return ", ".join(names)


class SqliteJobStore(JobStore):
    """Job store in one SQLite file (or in memory, private to this store)."""

    #: A database locked past ``busy_timeout``, a file out of reach.
    transient_errors = (sqlite3.OperationalError, OSError, TimeoutError)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.05,
        busy_timeout: float = 30.0,
    ) -> None:
        """Configure the store; nothing is opened until ``open()``.

        Args:
            path: database file (created if missing), or ``":memory:"``.
            poll_interval: seconds between checks for changes by other processes.
            busy_timeout: seconds to wait for another process's write lock.
        """
        super().__init__(poll_interval=poll_interval)
        raw = os.fspath(path)
        self.memory = raw in ("", ":memory:")
        self.path = ":memory:" if self.memory else os.path.abspath(raw)
        if not self.memory:
            with _notifiers_lock:
                notifier = _notifiers.get(self.path)
                if notifier is None:
                    notifier = _notifiers[self.path] = Notifier()
            self._notifier = notifier
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- plumbing ------------------------------------------------------------------

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise RuntimeError("the job store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the job store is not open")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database's write lock from its start."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Open the file (WAL mode) and apply pending migrations.

        Raises:
            sqlite3.Error: the file cannot be opened or migrated.
        """
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tether-jobs-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            if not self.memory:
                enable_wal(conn, self._busy_timeout)
                conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
            self._migrate_sync()
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def _migrate_sync(self) -> None:
        with self._write() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            applied = {row[0] for row in conn.execute(f"SELECT version FROM {VERSION_TABLE}")}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.sqlite:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _now_us()),
                )

    async def close(self) -> None:
        """Close the connection and its thread; idempotent."""
        executor = self._executor
        if executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._executor = None
            executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def schema_version(self) -> int:
        """Return the highest applied migration version."""
        return await self._run(self._schema_version_sync)

    def _schema_version_sync(self) -> int:
        row = self._connection().execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()
        return int(row[0] or 0)

    # -- submitters ----------------------------------------------------------------

    async def submit(
        self,
        type: str,
        parameters: Mapping[str, Any],
        *,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """See ``JobStore.submit``."""
        when = check_submit(type, priority, max_attempts, run_at)
        params_json = dump_json(dict(parameters), "parameters")
        job, created = await self._run(
            self._submit_sync,
            type,
            params_json,
            queue,
            priority,
            max_attempts,
            None if when is None else _to_us(when),
            idempotency_key,
        )
        if created:
            self._announce_work([queue])
        elif not same_submission(job, type, params_json):
            assert idempotency_key is not None
            raise DuplicateJob(idempotency_key, job.id)
        return job

    def _submit_sync(
        self,
        type: str,
        params_json: str,
        queue: str,
        priority: int,
        max_attempts: int,
        run_at_us: int | None,
        key: str | None,
    ) -> tuple[Job, bool]:
        now = _now_us()
        scheduled = now if run_at_us is None else run_at_us
        job_id = new_job_id()
        with self._write() as conn:
            if key is not None:
                row = conn.execute(
                    f"SELECT {COLUMN_LIST} FROM tether_jobs WHERE idempotency_key = ?", (key,)
                ).fetchone()
                if row is not None:
                    return _row_to_job(row), False
            conn.execute(
                "INSERT INTO tether_jobs (id, type, queue, parameters, state, priority,"
                " attempts, max_attempts, scheduled_at, created_at, idempotency_key)"
                " VALUES (?, ?, ?, ?, 'queued', ?, 0, ?, ?, ?, ?)",
                (job_id, type, queue, params_json, priority, max_attempts, scheduled, now, key),
            )
        job = Job(
            id=job_id,
            type=type,
            queue=queue,
            parameters=json.loads(params_json),
            state=JobState.QUEUED,
            priority=priority,
            attempts=0,
            max_attempts=max_attempts,
            scheduled_at=_EPOCH + timedelta(microseconds=scheduled),
            created_at=_EPOCH + timedelta(microseconds=now),
            idempotency_key=key,
        )
        return job, True

    async def get(self, job_id: str) -> Job:
        """See ``JobStore.get``."""
        return await self._run(self._get_sync, job_id)

    def _get_sync(self, job_id: str) -> Job:
        row = (
            self._connection()
            .execute(f"SELECT {COLUMN_LIST} FROM tether_jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        if row is None:
            raise JobNotFound(job_id)
        return _row_to_job(row)

    async def list(
        self,
        *,
        type: str | None = None,
        state: JobState | str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        """See ``JobStore.list``."""
        limit = check_limit(limit, MAX_LIST_LIMIT)
        state_ = check_state(state)
        after = check_cursor(cursor)
        clauses: builtins.list[str] = []
        params: dict[str, Any] = {"n": limit + 1}
        for column, value in (("type", type), ("state", state_), ("queue", queue), ("id", after)):
            if value is not None:
                clauses.append(f"{column} {'<' if column == 'id' else '='} :{column}")
                params[column] = str(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {COLUMN_LIST} FROM tether_jobs {where} ORDER BY id DESC LIMIT :n"
        rows = await self._run(self._fetch_sync, sql, params)
        jobs = [_row_to_job(row) for row in rows[:limit]]
        return jobs, (jobs[-1].id if len(rows) > limit else None)

    def _fetch_sync(self, sql: str, params: Mapping[str, Any]) -> builtins.list[Any]:
        return self._connection().execute(sql, params).fetchall()

    async def cancel(self, job_id: str) -> Job:
        """See ``JobStore.cancel``."""
        job = await self._run(self._cancel_sync, job_id)
        self._announce_change(job)
        return job

    def _cancel_sync(self, job_id: str) -> Job:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE tether_jobs SET"
                " state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,"
                " finished_at = CASE WHEN state = 'queued' THEN :now ELSE finished_at END,"
                " cancel_requested = 1, version = version + 1"
                f" WHERE id = :id AND state IN ('queued', 'running') RETURNING {COLUMN_LIST}",
                {"id": job_id, "now": _now_us()},
            ).fetchone()
            if row is None:
                found = conn.execute(
                    "SELECT state FROM tether_jobs WHERE id = ?", (job_id,)
                ).fetchone()
                if found is None:
                    raise JobNotFound(job_id)
                raise IllegalTransition(found[0], JobState.CANCELLED.value, job_id)
        return _row_to_job(row)

    # -- workers -------------------------------------------------------------------

    async def claim(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        types: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float,
    ) -> builtins.list[Claim]:
        """See ``JobStore.claim``."""
        queues_ = check_queues(queues)
        types_ = check_types(types)
        limit = check_limit(limit, MAX_CLAIM_LIMIT)
        lease_us = round(check_lease_seconds(lease_seconds) * 1e6)
        params: dict[str, Any] = {"worker": worker_id, "limit": limit, "lease": lease_us}
        where = f"queue IN ({_in_list('q', queues_, params)})"
        if types_ is not None:
            where += f" AND type IN ({_in_list('t', types_, params)})"
        sql = (
            "UPDATE tether_jobs SET state = 'running', attempts = attempts + 1,"
            " started_at = :now, lease_token = lower(hex(randomblob(16))),"
            " lease_expires_at = :now + :lease, worker_id = :worker,"
            " progress = NULL, progress_message = NULL, version = version + 1"
            " WHERE id IN (SELECT id FROM tether_jobs"
            f" WHERE state = 'queued' AND {where} AND scheduled_at <= :now"
            " ORDER BY priority DESC, scheduled_at, id LIMIT :limit)"
            f" RETURNING {COLUMN_LIST}"
        )
        rows = await self._run(self._claim_sync, sql, params)
        claims = claim_order([Claim.from_job(_row_to_job(row)) for row in rows])
        self._announce_change(*(c.job for c in claims))
        return claims

    def _claim_sync(self, sql: str, params: dict[str, Any]) -> builtins.list[Any]:
        with self._write() as conn:
            params["now"] = _now_us()
            return conn.execute(sql, params).fetchall()

    def _raise_lease_error(
        self, conn: sqlite3.Connection, job_id: str, token: str, now: int
    ) -> None:
        row = conn.execute(
            "SELECT state, lease_token, lease_expires_at FROM tether_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        expired = row[2] is None or row[2] <= now
        raise LeaseLost(job_id, lease_lost_reason(row[0], row[1] == token, expired))

    async def heartbeat(
        self,
        job_id: str,
        lease_token: str,
        *,
        lease_seconds: float,
        progress: float | None = None,
        message: str | None = None,
    ) -> bool:
        """See ``JobStore.heartbeat``."""
        lease_us = round(check_lease_seconds(lease_seconds) * 1e6)
        params = {
            "id": job_id,
            "token": lease_token,
            "lease": lease_us,
            "progress": check_progress(progress),
            "message": message,
            "bump": int(progress is not None or message is not None),
        }
        cancel_requested = await self._run(self._heartbeat_sync, params)
        if params["bump"]:
            self._notifier.notify(job_topic(job_id))
        return cancel_requested

    def _heartbeat_sync(self, params: dict[str, Any]) -> bool:
        with self._write() as conn:
            params["now"] = now = _now_us()
            row = conn.execute(
                "UPDATE tether_jobs SET lease_expires_at = :now + :lease,"
                " progress = coalesce(:progress, progress),"
                " progress_message = coalesce(:message, progress_message),"
                f" version = version + :bump WHERE {_LEASE_OK} RETURNING cancel_requested",
                params,
            ).fetchone()
            if row is None:
                self._raise_lease_error(conn, params["id"], params["token"], now)
        return bool(row[0])

    async def _finish(
        self, job_id: str, token: str, assignments: str, *, only_if: str = "", **values: Any
    ) -> Job:
        """Apply ``assignments`` to a job the caller holds the lease of; end the lease.

        ``only_if`` is an SQL condition the change also needs (else IllegalTransition).
        """
        params = {"id": job_id, "token": token, **values}
        job = await self._run(self._finish_sync, assignments, params, only_if)
        if job.state == JobState.QUEUED:
            self._announce_work([job.queue])
        self._announce_change(job)
        return job

    def _finish_sync(self, assignments: str, params: dict[str, Any], only_if: str) -> Job:
        with self._write() as conn:
            params["now"] = now = _now_us()
            if "delay" in params:
                params["retry_at"] = now + params.pop("delay")
            condition = f" AND {only_if}" if only_if else ""
            row = conn.execute(
                f"UPDATE tether_jobs SET {assignments}, {_RELEASE_LEASE}"
                f" WHERE {_LEASE_OK}{condition} RETURNING {COLUMN_LIST}",
                params,
            ).fetchone()
            if row is None:
                if only_if:
                    held = conn.execute(
                        f"SELECT 1 FROM tether_jobs WHERE {_LEASE_OK}", params
                    ).fetchone()
                    if held is not None:
                        raise IllegalTransition(
                            JobState.RUNNING.value, params["target"], params["id"]
                        )
                self._raise_lease_error(conn, params["id"], params["token"], now)
        return _row_to_job(row)

    async def complete(self, job_id: str, lease_token: str, result: Mapping[str, Any]) -> Job:
        """See ``JobStore.complete``."""
        return await self._finish(
            job_id,
            lease_token,
            "state = 'succeeded', result = :result, error = NULL, progress = 1.0,"
            " finished_at = :now",
            result=dump_json(dict(result), "result"),
        )

    async def complete_many(
        self, items: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> builtins.list[Job | JobStoreError]:
        """See ``JobStore.complete_many``: one write transaction."""
        payload = [
            (job_id, token, dump_json(dict(result), "result")) for job_id, token, result in items
        ]
        if not payload:
            return []
        out = await self._run(self._complete_many_sync, payload)
        self._announce_change(*(job for job in out if isinstance(job, Job)))
        return out

    def _complete_many_sync(
        self, payload: builtins.list[tuple[str, str, str]]
    ) -> builtins.list[Job | JobStoreError]:
        out: builtins.list[Job | JobStoreError] = []
        with self._write() as conn:
            now = _now_us()
            for job_id, token, result in payload:
                row = conn.execute(
                    "UPDATE tether_jobs SET state = 'succeeded', result = :result, error = NULL,"
                    f" progress = 1.0, finished_at = :now, {_RELEASE_LEASE}"
                    f" WHERE {_LEASE_OK} RETURNING {COLUMN_LIST}",
                    {"id": job_id, "token": token, "now": now, "result": result},
                ).fetchone()
                if row is not None:
                    out.append(_row_to_job(row))
                    continue
                try:
                    self._raise_lease_error(conn, job_id, token, now)
                except JobStoreError as exc:
                    out.append(exc)
        return out

    async def fail(
        self,
        job_id: str,
        lease_token: str,
        error: Mapping[str, Any],
        *,
        retry_delay: float | None = None,
    ) -> Job:
        """See ``JobStore.fail``."""
        retry_delay = check_retry_delay(retry_delay)
        retry = "(:retry AND attempts < max_attempts AND NOT cancel_requested)"
        return await self._finish(
            job_id,
            lease_token,
            f"state = CASE WHEN {retry} THEN 'queued' ELSE 'failed' END,"
            f" scheduled_at = CASE WHEN {retry} THEN :retry_at ELSE scheduled_at END,"
            f" finished_at = CASE WHEN {retry} THEN NULL ELSE :now END,"
            " error = :error",
            error=dump_json(normalize_error(error), "error"),
            retry=int(retry_delay is not None),
            delay=round((retry_delay or 0.0) * 1e6),
        )

    async def mark_cancelled(self, job_id: str, lease_token: str) -> Job:
        """See ``JobStore.mark_cancelled``."""
        return await self._finish(
            job_id,
            lease_token,
            "state = 'cancelled', finished_at = :now",
            only_if="cancel_requested",
            target=JobState.CANCELLED.value,
        )

    async def release(self, job_id: str, lease_token: str) -> Job:
        """See ``JobStore.release``."""
        return await self._finish(
            job_id,
            lease_token,
            "state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,"
            " attempts = CASE WHEN cancel_requested THEN attempts ELSE max(attempts - 1, 0) END,"
            " scheduled_at = CASE WHEN cancel_requested THEN scheduled_at ELSE :now END,"
            " finished_at = CASE WHEN cancel_requested THEN :now ELSE NULL END",
        )

    async def requeue_expired(self) -> int:
        """See ``JobStore.requeue_expired``."""
        rows = await self._run(self._requeue_expired_sync)
        queues = sorted({queue for _, queue, state in rows if state == JobState.QUEUED})
        if queues:
            self._announce_work(queues)
        self._notifier.notify(*(job_topic(job_id) for job_id, _, _ in rows))
        return len(rows)

    def _requeue_expired_sync(self) -> builtins.list[Any]:
        with self._write() as conn:
            return conn.execute(
                "UPDATE tether_jobs SET"
                " state = CASE WHEN cancel_requested THEN 'cancelled'"
                "   WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,"
                " scheduled_at = CASE WHEN cancel_requested OR attempts >= max_attempts"
                "   THEN scheduled_at ELSE :now END,"
                " finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts"
                "   THEN :now ELSE NULL END,"
                " error = CASE WHEN cancel_requested THEN error ELSE json_object("
                "   'code', 'lease_expired',"
                "   'message', 'the lease expired before the job finished',"
                "   'details', json_object('worker_id', worker_id, 'attempts', attempts)) END,"
                f" {_RELEASE_LEASE}"
                " WHERE state = 'running' AND lease_expires_at <= :now"
                " RETURNING id, queue, state",
                {"now": _now_us()},
            ).fetchall()

    # -- waiting -------------------------------------------------------------------

    async def _seconds_until_due(
        self, queues: Sequence[str], types: Sequence[str] | None
    ) -> float | None:
        params: dict[str, Any] = {}
        where = f"queue IN ({_in_list('q', check_queues(queues), params)})"
        types_ = check_types(types)
        if types_ is not None:
            where += f" AND type IN ({_in_list('t', types_, params)})"
        sql = f"SELECT min(scheduled_at) FROM tether_jobs WHERE state = 'queued' AND {where}"
        rows = await self._run(self._fetch_sync, sql, params)
        earliest = rows[0][0]
        return None if earliest is None else (earliest - _now_us()) / 1e6
