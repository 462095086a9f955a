"""PostgreSQL job store (psycopg 3, async, with a connection pool).

Claims are one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``
statement, so concurrent claimers in any number of processes never take the
same job. Time is the database's clock (``now()``). A trigger sends
``NOTIFY tether_jobs, '<queue>'`` whenever a job becomes queued; waiters listen
on one dedicated connection per store (opened on the first ``wait_for_work``)
and fall back to polling every ``poll_interval`` seconds while it is down, or
always with ``listen=False`` (for a connection pooler in transaction mode,
where LISTEN does not work).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from tether.jobs.errors import (
    DuplicateJob,
    IllegalTransition,
    JobNotFound,
    JobStoreError,
    LeaseLost,
)
from tether.jobs.model import Claim, Job, JobState, new_job_id, normalize_error
from tether.jobs.store._notify import job_topic, work_topic
from tether.jobs.store.base import (
    COLUMN_LIST,
    JOB_COLUMNS,
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
from tether.jobs.store.migrations import (
    MIGRATIONS,
    POSTGRES_CHANNEL,
    POSTGRES_MIGRATION_LOCK,
    VERSION_TABLE,
)

_log = logging.getLogger(__name__)

_LEASE_OK = (
    "id = %(id)s AND state = 'running' AND lease_token = %(token)s AND lease_expires_at > now()"
)
_RELEASE_LEASE = "lease_token = NULL, lease_expires_at = NULL, version = version + 1"
_J_COLUMNS = ", ".join(f"j.{column}" for column in JOB_COLUMNS)
#: Seconds between safety polls while the LISTEN connection is up.
_LISTENING_POLL = 5.0
#: Seconds before retrying a failed LISTEN connection.
_LISTEN_RETRY = 1.0


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _row_to_job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        type=row[1],
        queue=row[2],
        parameters=row[3],
        state=JobState(row[4]),
        priority=row[5],
        attempts=row[6],
        max_attempts=row[7],
        scheduled_at=row[8].astimezone(UTC),
        created_at=row[9].astimezone(UTC),
        started_at=_utc(row[10]),
        finished_at=_utc(row[11]),
        lease_token=row[12],
        lease_expires_at=_utc(row[13]),
        worker_id=row[14],
        progress=row[15],
        progress_message=row[16],
        result=row[17],
        error=row[18],
        idempotency_key=row[19],
        cancel_requested=row[20],
        version=row[21],
    )


class PostgresJobStore(JobStore):
    """Job store in a PostgreSQL database (tables ``tether_jobs``, ``tether_schema_version``)."""

    #: The server out of reach or restarting, a connection lost.
    transient_errors = (psycopg.OperationalError, OSError, TimeoutError)

    def __init__(
        self,
        conninfo: str,
        *,
        poll_interval: float = 0.25,
        min_connections: int = 1,
        max_connections: int = 10,
        listen: bool = True,
    ) -> None:
        """Configure the store; nothing is connected until ``open()``.

        Args:
            conninfo: libpq URL (``postgresql://...`` or ``postgres://...``) or key=value string.
            poll_interval: seconds between polls when notifications are unavailable,
                and between checks in ``wait_for_change``.
            min_connections, max_connections: pool size bounds.
            listen: wake waiters with ``LISTEN``; False: poll only.
        """
        super().__init__(poll_interval=poll_interval)
        self.conninfo = conninfo
        self.listen = listen
        self._pool_sizes = (min_connections, max_connections)
        self._pool_or_none: AsyncConnectionPool | None = None
        self._opened = False
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._listen_retry_at = 0.0

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool and apply pending migrations under an advisory lock.

        Raises:
            psycopg.Error, psycopg_pool.PoolTimeout: the database is unreachable.
        """
        if self._opened:
            return
        pool = AsyncConnectionPool(
            self.conninfo,
            min_size=self._pool_sizes[0],
            max_size=self._pool_sizes[1],
            kwargs={"autocommit": True},
            open=False,
        )
        await pool.open(wait=True)
        self._pool_or_none = pool
        try:
            await self._migrate()
        except BaseException:
            self._pool_or_none = None
            await pool.close()
            raise
        self._opened = True

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_MIGRATION_LOCK,))
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute(f"SELECT version FROM {VERSION_TABLE}")
            applied = {row[0] for row in await cur.fetchall()}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.postgres:
                    await conn.execute(statement)
                await conn.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )

    async def close(self) -> None:
        """Stop listening and close the pool; idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        pool, self._pool_or_none = self._pool_or_none, None
        self._opened = False
        if pool is not None:
            await pool.close()

    async def schema_version(self) -> int:
        """Return the highest applied migration version."""
        row = await self._one(f"SELECT max(version) FROM {VERSION_TABLE}", {})
        return int(row[0] or 0) if row else 0

    # -- plumbing ------------------------------------------------------------------

    @property
    def _pool(self) -> AsyncConnectionPool:
        if self._pool_or_none is None:
            raise RuntimeError("the job store is not open")
        return self._pool_or_none

    async def _one(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def _all(self, sql: str, params: Mapping[str, Any]) -> builtins.list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def _raise_lease_error(self, job_id: str, token: str) -> None:
        row = await self._one(
            "SELECT state, lease_token, lease_expires_at IS NULL OR lease_expires_at <= now()"
            " FROM tether_jobs WHERE id = %(id)s",
            {"id": job_id},
        )
        if row is None:
            raise JobNotFound(job_id)
        raise LeaseLost(job_id, lease_lost_reason(row[0], row[1] == token, bool(row[2])))

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
        params = {
            "id": new_job_id(),
            "type": type,
            "queue": queue,
            "parameters": params_json,
            "priority": priority,
            "max_attempts": max_attempts,
            "run_at": when,
            "key": idempotency_key,
        }
        while True:
            row = await self._one(
                "INSERT INTO tether_jobs (id, type, queue, parameters, state, priority, attempts,"
                " max_attempts, scheduled_at, created_at, idempotency_key) VALUES (%(id)s,"
                " %(type)s, %(queue)s, %(parameters)s::jsonb, 'queued', %(priority)s, 0,"
                " %(max_attempts)s, coalesce(%(run_at)s::timestamptz, now()), now(), %(key)s)"
                " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
                f" RETURNING {COLUMN_LIST}",
                params,
            )
            if row is not None:
                self._announce_work([queue])
                return _row_to_job(row)
            existing = await self._one(
                f"SELECT {COLUMN_LIST} FROM tether_jobs WHERE idempotency_key = %(key)s", params
            )
            if existing is None:  # pragma: no cover - the holder vanished meanwhile
                continue
            job = _row_to_job(existing)
            if not same_submission(job, type, params_json):
                assert idempotency_key is not None
                raise DuplicateJob(idempotency_key, job.id)
            return job

    async def get(self, job_id: str) -> Job:
        """See ``JobStore.get``."""
        row = await self._one(
            f"SELECT {COLUMN_LIST} FROM tether_jobs WHERE id = %(id)s", {"id": job_id}
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
                clauses.append(f"{column} {'<' if column == 'id' else '='} %({column})s")
                params[column] = str(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._all(
            f"SELECT {COLUMN_LIST} FROM tether_jobs {where} ORDER BY id DESC LIMIT %(n)s", params
        )
        jobs = [_row_to_job(row) for row in rows[:limit]]
        return jobs, (jobs[-1].id if len(rows) > limit else None)

    async def cancel(self, job_id: str) -> Job:
        """See ``JobStore.cancel``."""
        row = await self._one(
            "UPDATE tether_jobs SET"
            " state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,"
            " finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,"
            " cancel_requested = true, version = version + 1"
            f" WHERE id = %(id)s AND state IN ('queued', 'running') RETURNING {COLUMN_LIST}",
            {"id": job_id},
        )
        if row is None:
            found = await self._one(
                "SELECT state FROM tether_jobs WHERE id = %(id)s", {"id": job_id}
            )
            if found is None:
                raise JobNotFound(job_id)
            raise IllegalTransition(found[0], JobState.CANCELLED.value, job_id)
        job = _row_to_job(row)
        self._announce_change(job)
        return job

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
        queue_names = check_queues(queues)
        params: dict[str, Any] = {
            "worker": worker_id,
            "queues": queue_names,
            "types": check_types(types),
            "limit": check_limit(limit, MAX_CLAIM_LIMIT),
            "lease": check_lease_seconds(lease_seconds),
        }
        type_filter = "" if params["types"] is None else " AND type = ANY(%(types)s)"
        # One queue: an equality, so the claim index gives the order (with = ANY(...)
        # PostgreSQL sorts every queued job of the queue on each claim).
        queue_filter = "queue = ANY(%(queues)s)"
        if len(queue_names) == 1:
            params["queue"] = queue_names[0]
            queue_filter = "queue = %(queue)s"
        rows = await self._all(
            "UPDATE tether_jobs AS j SET state = 'running', attempts = j.attempts + 1,"
            " started_at = now(), lease_token = md5(gen_random_uuid()::text),"
            " lease_expires_at = now() + make_interval(secs => %(lease)s),"
            " worker_id = %(worker)s, progress = NULL, progress_message = NULL,"
            " version = j.version + 1"
            " FROM (SELECT id FROM tether_jobs"
            f" WHERE state = 'queued' AND {queue_filter}{type_filter}"
            " AND scheduled_at <= now()"
            " ORDER BY priority DESC, scheduled_at, id LIMIT %(limit)s"
            " FOR UPDATE SKIP LOCKED) AS picked"
            f" WHERE j.id = picked.id RETURNING {_J_COLUMNS}",
            params,
        )
        claims = claim_order([Claim.from_job(_row_to_job(row)) for row in rows])
        self._announce_change(*(c.job for c in claims))
        return claims

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
        bump = int(progress is not None or message is not None)
        row = await self._one(
            "UPDATE tether_jobs SET"
            " lease_expires_at = now() + make_interval(secs => %(lease)s),"
            " progress = coalesce(%(progress)s::float8, progress),"
            " progress_message = coalesce(%(message)s::text, progress_message),"
            f" version = version + %(bump)s WHERE {_LEASE_OK} RETURNING cancel_requested",
            {
                "id": job_id,
                "token": lease_token,
                "lease": check_lease_seconds(lease_seconds),
                "progress": check_progress(progress),
                "message": message,
                "bump": bump,
            },
        )
        if row is None:
            await self._raise_lease_error(job_id, lease_token)
            raise AssertionError("unreachable")
        if bump:
            self._notifier.notify(job_topic(job_id))
        return bool(row[0])

    async def _finish(
        self,
        job_id: str,
        token: str,
        assignments: str,
        *,
        only_if: str = "",
        target: str = "",
        **values: Any,
    ) -> Job:
        """Apply ``assignments`` to a job the caller holds the lease of; end the lease.

        ``only_if`` is an SQL condition the change also needs (else IllegalTransition
        to ``target``).
        """
        params = {"id": job_id, "token": token, **values}
        condition = f" AND {only_if}" if only_if else ""
        row = await self._one(
            f"UPDATE tether_jobs SET {assignments}, {_RELEASE_LEASE}"
            f" WHERE {_LEASE_OK}{condition} RETURNING {COLUMN_LIST}",
            params,
        )
        if row is None:
            if only_if and await self._one(f"SELECT 1 FROM tether_jobs WHERE {_LEASE_OK}", params):
                raise IllegalTransition(JobState.RUNNING.value, target, job_id)
            await self._raise_lease_error(job_id, token)
            raise AssertionError("unreachable")
        job = _row_to_job(row)
        if job.state == JobState.QUEUED:
            self._announce_work([job.queue])
        self._announce_change(job)
        return job

    async def complete(self, job_id: str, lease_token: str, result: Mapping[str, Any]) -> Job:
        """See ``JobStore.complete``."""
        return await self._finish(
            job_id,
            lease_token,
            "state = 'succeeded', result = %(result)s::jsonb, error = NULL, progress = 1.0,"
            " finished_at = now()",
            result=dump_json(dict(result), "result"),
        )

    async def complete_many(
        self, items: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> builtins.list[Job | JobStoreError]:
        """See ``JobStore.complete_many``: one ``UPDATE ... FROM unnest(...)`` statement."""
        if not items:
            return []
        if len({job_id for job_id, _, _ in items}) != len(items):
            return await super().complete_many(items)  # one job twice: item by item
        params = {
            "ids": [job_id for job_id, _, _ in items],
            "tokens": [token for _, token, _ in items],
            "results": [dump_json(dict(result), "result") for _, _, result in items],
        }
        rows = await self._all(
            "UPDATE tether_jobs AS j SET state = 'succeeded', result = v.result::jsonb,"
            " error = NULL, progress = 1.0, finished_at = now(), lease_token = NULL,"
            " lease_expires_at = NULL, version = j.version + 1"
            " FROM unnest(%(ids)s::text[], %(tokens)s::text[], %(results)s::text[])"
            " AS v(id, token, result)"
            " WHERE j.id = v.id AND j.state = 'running' AND j.lease_token = v.token"
            f" AND j.lease_expires_at > now() RETURNING {_J_COLUMNS}",
            params,
        )
        done = {job.id: job for job in map(_row_to_job, rows)}
        out: builtins.list[Job | JobStoreError] = []
        for job_id, token, _ in items:
            job = done.get(job_id)
            if job is not None:
                out.append(job)
                continue
            try:
                await self._raise_lease_error(job_id, token)
            except JobStoreError as exc:
                out.append(exc)
        self._announce_change(*done.values())
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
        retry = "(%(retry)s AND attempts < max_attempts AND NOT cancel_requested)"
        return await self._finish(
            job_id,
            lease_token,
            f"state = CASE WHEN {retry} THEN 'queued' ELSE 'failed' END,"
            f" scheduled_at = CASE WHEN {retry}"
            " THEN now() + make_interval(secs => %(delay)s) ELSE scheduled_at END,"
            f" finished_at = CASE WHEN {retry} THEN NULL ELSE now() END,"
            " error = %(error)s::jsonb",
            error=dump_json(normalize_error(error), "error"),
            retry=retry_delay is not None,
            delay=float(retry_delay or 0.0),
        )

    async def mark_cancelled(self, job_id: str, lease_token: str) -> Job:
        """See ``JobStore.mark_cancelled``."""
        return await self._finish(
            job_id,
            lease_token,
            "state = 'cancelled', finished_at = now()",
            only_if="cancel_requested",
            target=JobState.CANCELLED.value,
        )

    async def release(self, job_id: str, lease_token: str) -> Job:
        """See ``JobStore.release``."""
        return await self._finish(
            job_id,
            lease_token,
            "state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,"
            " attempts = CASE WHEN cancel_requested THEN attempts"
            "   ELSE greatest(attempts - 1, 0) END,"
            " scheduled_at = CASE WHEN cancel_requested THEN scheduled_at ELSE now() END,"
            " finished_at = CASE WHEN cancel_requested THEN now() ELSE NULL END",
        )

    async def requeue_expired(self) -> int:
        """See ``JobStore.requeue_expired``."""
        rows = await self._all(
            "UPDATE tether_jobs AS j SET"
            " state = CASE WHEN j.cancel_requested THEN 'cancelled'"
            "   WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'queued' END,"
            " scheduled_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts"
            "   THEN j.scheduled_at ELSE now() END,"
            " finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts"
            "   THEN now() ELSE NULL END,"
            " error = CASE WHEN j.cancel_requested THEN j.error ELSE jsonb_build_object("
            "   'code', 'lease_expired',"
            "   'message', 'the lease expired before the job finished',"
            "   'details', jsonb_build_object('worker_id', j.worker_id, 'attempts', j.attempts))"
            " END,"
            " lease_token = NULL, lease_expires_at = NULL, version = j.version + 1"
            " FROM (SELECT id FROM tether_jobs WHERE state = 'running'"
            " AND lease_expires_at <= now() FOR UPDATE SKIP LOCKED) AS expired"
            " WHERE j.id = expired.id RETURNING j.id, j.queue, j.state",
            {},
        )
        queues = sorted({queue for _, queue, state in rows if state == JobState.QUEUED})
        if queues:
            self._announce_work(queues)
        self._notifier.notify(*(job_topic(job_id) for job_id, _, _ in rows))
        return len(rows)

    # -- waiting -------------------------------------------------------------------

    async def _seconds_until_due(
        self, queues: Sequence[str], types: Sequence[str] | None
    ) -> float | None:
        params = {"queues": check_queues(queues), "types": check_types(types)}
        type_filter = "" if params["types"] is None else " AND type = ANY(%(types)s)"
        row = await self._one(
            "SELECT extract(epoch FROM min(scheduled_at) - now())::float8 FROM tether_jobs"
            f" WHERE state = 'queued' AND queue = ANY(%(queues)s){type_filter}",
            params,
        )
        return None if row is None or row[0] is None else float(row[0])

    def _work_poll_interval(self) -> float:
        """Start the listener if needed; poll rarely while it is up."""
        if not self.listen:
            return self.poll_interval
        if self._opened and (self._listener is None or self._listener.done()):
            if time.monotonic() >= self._listen_retry_at:
                self._listener = asyncio.get_running_loop().create_task(self._listen())
        return _LISTENING_POLL if self._listening else self.poll_interval

    async def _listen(self) -> None:
        """Relay ``NOTIFY tether_jobs`` to local waiters until cancelled or disconnected."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            _log.warning("job store: cannot LISTEN (%s); polling instead", exc)
            self._listen_retry_at = time.monotonic() + _LISTEN_RETRY
            return
        try:
            await conn.execute(f"LISTEN {POSTGRES_CHANNEL}")
            self._listening = True
            async for note in conn.notifies():
                self._notifier.notify(work_topic(note.payload))
        except psycopg.Error as exc:
            _log.warning("job store: LISTEN connection lost (%s); polling instead", exc)
            self._listen_retry_at = time.monotonic() + _LISTEN_RETRY
        finally:
            self._listening = False
            await conn.close()
