"""The job manager: job types, the opened store, the lease reaper, and the checks
every submission and completion goes through (the HTTP API and store-direct
workers both use it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tether.jobs.errors import JobStoreError
from tether.jobs.exceptions import InvalidResult, JobValidationError
from tether.jobs.model import Job
from tether.jobs.store import JobStore, make_store
from tether.jobs.types import JobTypeRegistry

log = logging.getLogger("tether.jobs")

#: Seconds between two sweeps of expired leases.
DEFAULT_REAP_INTERVAL = 1.0


class JobObserver(Protocol):
    """Told of the state changes a :class:`JobManager` makes (an App's job metrics).

    Called in the event loop right after the store changed; must be quick and
    must not raise.
    """

    def submitted(self, job: Job) -> None:
        """A new job was stored (not an idempotent re-submission)."""

    def finished(self, job: Job) -> None:
        """A job reached a final state (``succeeded``, ``failed``, ``cancelled``)."""


class JobManager:
    """Job types plus one open store, shared by an App's jobs API.

    The store opens on :meth:`open` (the App's start-up hook calls it) or on
    first use, in the event loop of that first use (a PostgreSQL pool belongs
    to one loop). While open, a background task returns expired leases to the
    queue every ``reap_interval`` seconds (``JobStore.requeue_expired``).

    Args:
        types: the job types (default: a new empty registry).
        store_url: ``sqlite:///...``, ``postgresql://...`` or ``memory://``;
            None: ``tether.settings.get_settings().effective_job_store_url``
            (``TETHER_JOB_STORE_URL``, or ``jobs.db`` in ``TETHER_STATE_DIR``), read at open.
        reap_interval: seconds between sweeps of expired leases.
        store_options: keyword arguments for the store (``poll_interval``, ...).
        observer: told of the jobs this manager stores and finishes (jobs that an
            expired lease ends are not reported).
    """

    def __init__(
        self,
        types: JobTypeRegistry | None = None,
        store_url: str | None = None,
        *,
        reap_interval: float = DEFAULT_REAP_INTERVAL,
        store_options: Mapping[str, Any] | None = None,
        observer: JobObserver | None = None,
    ) -> None:
        if reap_interval <= 0:
            raise ValueError("reap_interval must be > 0 seconds")
        self.types = types if types is not None else JobTypeRegistry()
        self._store_url = store_url
        self.reap_interval = reap_interval
        self._store_options = dict(store_options or {})
        self._store: JobStore | None = None
        self._lock: asyncio.Lock | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.observer = observer

    def __repr__(self) -> str:
        state = "open" if self._store is not None else "closed"
        return f"<JobManager {state} types={self.types.names}>"

    @property
    def store_url(self) -> str:
        """The store's URL (the explicit one, else the settings' one)."""
        if self._store_url is not None:
            return self._store_url
        from tether.settings import get_settings

        return get_settings().effective_job_store_url

    @property
    def is_open(self) -> bool:
        """True while the store is open."""
        return self._store is not None

    @property
    def transient_errors(self) -> tuple[type[BaseException], ...]:
        """The open store's errors that may pass (see :attr:`JobStore.transient_errors`);
        before it is open, those of any store (``OSError``, ``TimeoutError``)."""
        store = self._store
        return store.transient_errors if store is not None else JobStore.transient_errors

    async def open(self, *, reap: bool = True) -> JobStore:
        """Open the store (once; migrating it) and, with ``reap``, start the reaper.

        Returns:
            The open store.

        Raises:
            ValueError: a bad store URL.
            sqlite3.Error, psycopg.Error, psycopg_pool.PoolTimeout: the database is unusable.
        """
        if self._store is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._store is None:
                    self._store = await _open(self.store_url, self._store_options)
        store = self._store
        if reap and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap(store), name="tether-jobs-reaper"
            )
        return store

    async def store(self) -> JobStore:
        """The open store, opened on first use without the reaper (an App's
        start-up, or a worker, starts that; see :meth:`open`)."""
        return self._store if self._store is not None else await self.open(reap=False)

    async def close(self) -> None:
        """Stop the reaper and close the store; idempotent."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    async def _reap(self, store: JobStore) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                count = await store.requeue_expired()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("returning expired leases to the queue failed")
                continue
            if count:
                log.info("returned %d job(s) with an expired lease", count)

    # -- the checked operations ----------------------------------------------------------

    async def submit(
        self,
        type: str,
        parameters: Any,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Validate ``parameters`` against the job type's schema, then store the job.

        Args:
            type: a registered job type.
            parameters: a JSON object.
            queue, priority, max_attempts: default: the job type's options.
            run_at: earliest start (aware datetime); None: now.
            idempotency_key: the same key returns the same job.

        Returns:
            The job (new, or the one holding ``idempotency_key``).

        Raises:
            UnknownJobType: no such job type.
            JobValidationError: the parameters do not match (nothing is stored).
            DuplicateJob: the key names a job with other parameters.
            ValueError: bad options (naive ``run_at``, ``max_attempts < 1``...).
        """
        job_type = self.types.get(type)
        stored = job_type.validate_parameters(parameters)
        options = job_type.options
        store = await self.store()
        since = time.time_ns() // 1_000_000
        job = await store.submit(
            type,
            stored,
            queue=queue if queue is not None else options.queue,
            priority=priority if priority is not None else options.priority,
            max_attempts=max_attempts if max_attempts is not None else options.max_attempts,
            run_at=run_at,
            idempotency_key=idempotency_key,
        )
        # With a key the store may hand back an older job: its id (creation time
        # first) then predates this call.
        if self.observer is not None and (
            idempotency_key is None or _id_milliseconds(job.id) >= since
        ):
            self.observer.submitted(job)
        return job

    async def complete(
        self, job_id: str, lease_token: str, result: Any, *, job_type: str | None = None
    ) -> Job:
        """Complete a job after checking ``result`` against its type's result schema.

        An invalid result fails the job for good with code ``processing_error``
        and the validation problems as details. ``job_type``, when the caller
        knows it, saves reading the job first.

        Returns:
            The succeeded job.

        Raises:
            InvalidResult: the result did not match; ``job`` is the failed job.
            JobNotFound, LeaseLost: see ``JobStore.complete``.
        """
        store = await self.store()
        if job_type is None:
            job_type = (await store.get(job_id)).type
        try:
            value = self._check_result(job_type, result)
        except JobValidationError as exc:
            raise await self._reject(store, job_id, lease_token, exc) from None
        return self._finished(await store.complete(job_id, lease_token, value))

    async def complete_many(
        self, items: Sequence[tuple[str, str, Any, str | None]]
    ) -> list[Job | Exception]:
        """Complete several jobs, checking each result as :meth:`complete` does; the
        valid ones in one store operation (``JobStore.complete_many``).

        Args:
            items: ``(job_id, lease_token, result, job_type or None)``.

        Returns:
            Per item, in order: the succeeded job, or the error :meth:`complete` would
            have raised (``InvalidResult``, ``LeaseLost``, ``JobNotFound``).
        """
        store = await self.store()
        out: list[Job | Exception | None] = [None] * len(items)
        batch: list[tuple[str, str, Mapping[str, Any]]] = []
        slots: list[int] = []
        for k, (job_id, token, result, job_type) in enumerate(items):
            try:
                kind = job_type if job_type is not None else (await store.get(job_id)).type
                batch.append((job_id, token, self._check_result(kind, result)))
                slots.append(k)
            except JobValidationError as exc:
                try:
                    out[k] = await self._reject(store, job_id, token, exc)
                except JobStoreError as lost:
                    out[k] = lost
            except JobStoreError as exc:
                out[k] = exc
        if batch:
            for k, done in zip(slots, await store.complete_many(batch), strict=True):
                out[k] = self._finished(done) if isinstance(done, Job) else done
        return [x if x is not None else RuntimeError("not completed") for x in out]

    def _check_result(self, job_type: str, result: Any) -> dict[str, Any]:
        if job_type in self.types:
            return self.types.get(job_type).validate_result(result)
        if isinstance(result, Mapping):
            return dict(result)
        raise JobValidationError(
            "the result must be a JSON object",
            [{"loc": [], "msg": "must be a JSON object", "type": "object_type"}],
        )

    async def _reject(
        self, store: JobStore, job_id: str, lease_token: str, exc: JobValidationError
    ) -> InvalidResult:
        """Fail the job with ``processing_error``; return the error to report."""
        failed = self._finished(
            await store.fail(
                job_id,
                lease_token,
                {"code": "processing_error", "message": exc.message, "details": exc.details},
            )
        )
        return InvalidResult(
            f"{exc.message}; the job failed with processing_error", exc.details, failed
        )

    async def fail(
        self,
        job_id: str,
        lease_token: str,
        error: Mapping[str, Any],
        *,
        retry: bool = True,
        retry_delay: float | None = None,
    ) -> Job:
        """Record a failed attempt; retry after the job type's backoff when allowed.

        Args:
            error: ``{code, message, details}``.
            retry: whether another attempt may follow (when attempts remain).
            retry_delay: seconds before it; None: the job type's backoff.

        Returns:
            The job, ``queued`` again or ``failed``.

        Raises:
            JobNotFound, LeaseLost: see ``JobStore.fail``.
            ValueError: ``retry_delay`` negative or above ``MAX_DELAY_SECONDS``.
        """
        store = await self.store()
        delay: float | None = None
        if retry:
            if retry_delay is not None:
                delay = retry_delay
            else:
                job = await store.get(job_id)
                delay = (
                    self.types.get(job.type).options.retry_delay(job.attempts)
                    if job.type in self.types
                    else 1.0
                )
        return self._finished(await store.fail(job_id, lease_token, error, retry_delay=delay))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job (see ``JobStore.cancel``): ``queued`` ends ``cancelled``,
        ``running`` gets ``cancel_requested``.

        Raises:
            JobNotFound, IllegalTransition: see ``JobStore.cancel``.
        """
        return self._finished(await (await self.store()).cancel(job_id))

    async def release(self, job_id: str, lease_token: str) -> Job:
        """A worker hands a job back unfinished (see ``JobStore.release``); a job
        whose cancellation was requested ends ``cancelled``.

        Raises:
            JobNotFound, LeaseLost: see ``JobStore.release``.
        """
        return self._finished(await (await self.store()).release(job_id, lease_token))

    async def mark_cancelled(self, job_id: str, lease_token: str) -> Job:
        """A worker acknowledges a requested cancellation (see ``JobStore.mark_cancelled``).

        Raises:
            JobNotFound, LeaseLost: see ``JobStore.mark_cancelled``.
            IllegalTransition: no cancellation was requested.
        """
        return self._finished(await (await self.store()).mark_cancelled(job_id, lease_token))

    def _finished(self, job: Job) -> Job:
        """Tell the observer when ``job``, just changed, is final; return it."""
        if self.observer is not None and job.terminal:
            self.observer.finished(job)
        return job


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def _id_milliseconds(job_id: str) -> int:
    """The creation time (Unix ms) in a job id's first 10 characters (see ``new_job_id``);
    -1 for an id not made that way."""
    value = 0
    for char in job_id[:10]:
        digit = _CROCKFORD.get(char)
        if digit is None:
            return -1
        value = value * 32 + digit
    return value


async def _open(url: str, options: Mapping[str, Any]) -> JobStore:
    """Open the store ``url`` names, creating a SQLite file's directory; retry a
    SQLite file that another process is creating at the same moment."""
    if url.lower().startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        store = make_store(url, **options)
        try:
            await store.open()
            return store
        except sqlite3.OperationalError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")
