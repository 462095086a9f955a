"""The abstract job store: the contract both the SQLite and PostgreSQL stores fulfil.

Semantics shared by every store:
    * ``attempts`` is incremented when a job is claimed. An expired lease sends
      the job back to ``queued`` without adding to it (the claim counted that
      start), or fails it with error code ``lease_expired`` once
      ``attempts >= max_attempts``. ``release`` (a graceful hand-back) takes the
      attempt back.
    * A lease is valid while the job is ``running``, the token matches and
      ``lease_expires_at`` is in the future; otherwise heartbeat, complete,
      fail, mark_cancelled and release raise ``LeaseLost``.
    * Claim order: ``priority`` descending, then ``scheduled_at``, then ``id``;
      only jobs with ``scheduled_at <= now``.
    * ``list`` pages newest first (``id`` descending) with an opaque keyset cursor.
    * Once a cancellation was requested, a job is never retried: an expired
      lease or a hand-back cancels it, and ``fail`` fails it for good.
    * Times are seconds (floats) or aware UTC datetimes.
"""

from __future__ import annotations

import builtins
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Self

from tether.jobs.errors import JobStoreError
from tether.jobs.model import Claim, Job, JobState, ensure_aware_utc
from tether.jobs.store._notify import Notifier, job_topic, work_topic

#: Largest page ``list`` returns.
MAX_LIST_LIMIT = 1000
#: Largest number of jobs one ``claim`` takes.
MAX_CLAIM_LIMIT = 1000
#: Longest lease one claim or heartbeat grants, in seconds (a week).
MAX_LEASE_SECONDS = 7 * 86400.0
#: Longest retry delay (and submission delay of the HTTP API), in seconds (a year).
MAX_DELAY_SECONDS = 366 * 86400.0


class JobStore(ABC):
    """Persistent, concurrency-safe storage of jobs (abstract).

    Use ``await store.open()`` / ``await store.close()`` or ``async with store``.
    """

    #: This store's errors that may pass (the database out of reach, a lock held a
    #: moment): worth trying the operation again.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, TimeoutError)

    def __init__(self, *, poll_interval: float) -> None:
        """Set the polling period (seconds) of the wait methods' fallback."""
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0 seconds")
        self.poll_interval = poll_interval
        self._notifier = Notifier()

    # -- lifecycle ---------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations (safe when processes open at once)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks; idempotent."""

    @abstractmethod
    async def schema_version(self) -> int:
        """Return the highest migration version applied to the database."""

    async def __aenter__(self) -> Self:
        """Open the store."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.close()

    # -- submitters ----------------------------------------------------------------

    @abstractmethod
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
        """Store a new ``queued`` job and wake the workers of ``queue``.

        Args:
            type: job type name.
            parameters: JSON-serialisable parameters (already validated).
            queue: queue name.
            priority: higher runs first.
            max_attempts: starts allowed (>= 1).
            run_at: earliest start (aware datetime); None means now.
            idempotency_key: when a job with this key exists, return it instead.

        Returns:
            The new job, or the existing job holding ``idempotency_key``.

        Raises:
            DuplicateJob: the key is held by a job of another type or parameters.
            ValueError: invalid arguments (naive ``run_at``, ``max_attempts < 1``, ...).
        """

    @abstractmethod
    async def get(self, job_id: str) -> Job:
        """Return the job ``job_id``.

        Raises:
            JobNotFound: no such job.
        """

    @abstractmethod
    async def list(
        self,
        *,
        type: str | None = None,
        state: JobState | str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        """Return one page of jobs, newest first, matching all the given filters.

        Args:
            type, state, queue: filters (None: any).
            limit: page size, 1..1000.
            cursor: the ``next_cursor`` of the previous page, None for the first.

        Returns:
            ``(jobs, next_cursor)``; ``next_cursor`` is None on the last page.

        Raises:
            ValueError: bad limit, state or cursor.
        """

    @abstractmethod
    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: ``queued`` becomes ``cancelled`` at once; ``running`` gets
        ``cancel_requested`` (its worker learns it from its next heartbeat).

        Returns:
            The job after the change.

        Raises:
            JobNotFound: no such job.
            IllegalTransition: the job is already terminal.
        """

    # -- workers -------------------------------------------------------------------

    @abstractmethod
    async def claim(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        types: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float,
    ) -> builtins.list[Claim]:
        """Atomically take up to ``limit`` due jobs; concurrent claimers never share one.

        Each claimed job becomes ``running``, gets ``attempts + 1``, a fresh lease
        token and a lease ending ``lease_seconds`` from now.

        Returns:
            The claims in claim order (possibly empty).

        Raises:
            ValueError: empty ``queues``, ``limit`` outside 1..1000, ``lease_seconds``
                not in (0, ``MAX_LEASE_SECONDS``].
        """

    @abstractmethod
    async def heartbeat(
        self,
        job_id: str,
        lease_token: str,
        *,
        lease_seconds: float,
        progress: float | None = None,
        message: str | None = None,
    ) -> bool:
        """Extend the lease to ``lease_seconds`` from now, recording progress when given.

        Args:
            progress: fraction done in [0, 1] (None: unchanged).
            message: progress text (None: unchanged).

        Returns:
            True when cancellation was requested: the worker should stop and call
            ``mark_cancelled``.

        Raises:
            JobNotFound: no such job.
            LeaseLost: wrong token, expired lease or job not running.
            ValueError: progress outside [0, 1], ``lease_seconds`` not in
                (0, ``MAX_LEASE_SECONDS``].
        """

    @abstractmethod
    async def complete(self, job_id: str, lease_token: str, result: Mapping[str, Any]) -> Job:
        """Mark a running job ``succeeded`` with ``result`` (progress becomes 1).

        Raises:
            JobNotFound: no such job.
            LeaseLost: the caller does not hold the current lease.
        """

    async def complete_many(
        self, items: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> builtins.list[Job | JobStoreError]:
        """Complete several jobs at once: ``items`` are ``(job_id, lease_token, result)``.

        Each job is completed as :meth:`complete` would; the stores do it in one
        statement or transaction. This default calls :meth:`complete` in turn.

        Returns:
            Per item, in order: the succeeded job, or the ``JobNotFound`` /
            ``LeaseLost`` that :meth:`complete` would have raised.

        Raises:
            ValueError: a result is not JSON-serialisable (nothing is completed).
        """
        out: builtins.list[Job | JobStoreError] = []
        for job_id, token, result in items:
            try:
                out.append(await self.complete(job_id, token, result))
            except JobStoreError as exc:
                out.append(exc)
        return out

    @abstractmethod
    async def fail(
        self,
        job_id: str,
        lease_token: str,
        error: Mapping[str, Any],
        *,
        retry_delay: float | None = None,
    ) -> Job:
        """Record a failed attempt with ``error`` (``{code, message, details}``).

        With ``retry_delay`` (seconds) not None, ``attempts < max_attempts`` and
        no cancellation requested, the job goes back to ``queued`` with
        ``scheduled_at = now + retry_delay``; otherwise it becomes ``failed``.

        Raises:
            JobNotFound: no such job.
            LeaseLost: the caller does not hold the current lease.
            ValueError: ``retry_delay`` negative or above ``MAX_DELAY_SECONDS``.
        """

    @abstractmethod
    async def mark_cancelled(self, job_id: str, lease_token: str) -> Job:
        """A worker acknowledges a requested cancellation: the running job becomes
        ``cancelled``.

        Raises:
            JobNotFound: no such job.
            LeaseLost: the caller does not hold the current lease.
            IllegalTransition: no cancellation was requested (the job stays running;
                a worker that gives up on a job fails it instead).
        """

    @abstractmethod
    async def release(self, job_id: str, lease_token: str) -> Job:
        """A worker hands a running job back unfinished (e.g. on shutdown).

        The job returns to ``queued``, due now, and the attempt is not counted;
        if cancellation was requested it becomes ``cancelled`` instead.

        Raises:
            JobNotFound: no such job.
            LeaseLost: the caller does not hold the current lease.
        """

    @abstractmethod
    async def requeue_expired(self) -> int:
        """Handle every running job whose lease has expired.

        Each goes back to ``queued`` (due now; the attempt stays counted), or to
        ``failed`` when ``attempts >= max_attempts``, or to ``cancelled`` when
        cancellation was requested. The error is set to code ``lease_expired``
        unless cancelled.

        Returns:
            How many jobs were handled.
        """

    # -- waiting -------------------------------------------------------------------

    @abstractmethod
    async def _seconds_until_due(
        self, queues: Sequence[str], types: Sequence[str] | None
    ) -> float | None:
        """Seconds until the earliest queued job of ``queues``/``types`` is due
        (<= 0: due now), or None when none is queued."""

    def _work_poll_interval(self) -> float:
        """Seconds between availability checks while waiting for work."""
        return self.poll_interval

    async def wait_for_work(
        self,
        queues: Sequence[str],
        timeout: float,
        *,
        types: Sequence[str] | None = None,
    ) -> None:
        """Return as soon as a job of ``queues`` (and ``types``) may be claimable, or
        after ``timeout`` seconds.

        Returns at once when a due job is already queued; wakes on submissions
        and re-queues made through this process (and, for PostgreSQL, through
        ``NOTIFY`` from any process), when a delayed job becomes due, and
        otherwise polls every ``poll_interval`` seconds.

        Raises:
            ValueError: empty ``queues``.
        """
        check_queues(queues)
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._notifier.subscribe(work_topic(q) for q in queues) as sub:
            while True:
                due = await self._seconds_until_due(queues, types)
                if due is not None and due <= 0:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                pause = min(remaining, self._work_poll_interval())
                if due is not None:
                    pause = min(pause, due)
                # A notification names a queue, not a type: with a type filter, check again.
                if await sub.wait(pause) and types is None:
                    return

    async def wait_for_change(
        self, job_id: str, timeout: float, *, since_version: int | None = None
    ) -> Job:
        """Long poll: return the job once it is terminal or its ``version`` differs
        from ``since_version`` (default: its version when called), or after
        ``timeout`` seconds with its current state.

        Raises:
            JobNotFound: no such job.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._notifier.subscribe([job_topic(job_id)]) as sub:
            job = await self.get(job_id)
            base = job.version if since_version is None else since_version
            while True:
                if job.terminal or job.version != base:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return job
                await sub.wait(min(remaining, self.poll_interval))
                job = await self.get(job_id)

    def _announce_work(self, queues: Sequence[str]) -> None:
        """Wake local waiters for work in ``queues``."""
        self._notifier.notify(*(work_topic(q) for q in queues))

    def _announce_change(self, *jobs: Job) -> None:
        """Wake local long polls on ``jobs``."""
        self._notifier.notify(*(job_topic(j.id) for j in jobs))


# -- argument checks shared by the stores -------------------------------------------


def check_queues(queues: Sequence[str]) -> builtins.list[str]:
    """Return ``queues`` as a list.

    Raises:
        ValueError: empty, or given as a bare string.
    """
    if isinstance(queues, str):
        raise ValueError("queues must be a sequence of names, not a string")
    out = [str(q) for q in queues]
    if not out:
        raise ValueError("queues must not be empty")
    return out


def check_types(types: Sequence[str] | None) -> builtins.list[str] | None:
    """Return ``types`` as a list or None.

    Raises:
        ValueError: given as a bare string or empty.
    """
    if types is None:
        return None
    if isinstance(types, str):
        raise ValueError("types must be a sequence of names, not a string")
    out = [str(t) for t in types]
    if not out:
        raise ValueError("types must not be empty (use None for any type)")
    return out


def check_positive_seconds(value: float, name: str) -> float:
    """Return ``value`` as float seconds.

    Raises:
        ValueError: not > 0.
    """
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"{name} must be > 0 seconds")
    return seconds


def check_lease_seconds(value: float) -> float:
    """Return a lease length as float seconds.

    Raises:
        ValueError: not in (0, MAX_LEASE_SECONDS].
    """
    seconds = check_positive_seconds(value, "lease_seconds")
    if seconds > MAX_LEASE_SECONDS:
        raise ValueError(f"lease_seconds must be at most {MAX_LEASE_SECONDS:.0f}")
    return seconds


def check_retry_delay(value: float | None) -> float | None:
    """Return a retry delay (seconds) or None.

    Raises:
        ValueError: negative, not a number, or above MAX_DELAY_SECONDS.
    """
    if value is None:
        return None
    seconds = float(value)
    if not 0 <= seconds <= MAX_DELAY_SECONDS:
        raise ValueError(f"retry_delay must be between 0 and {MAX_DELAY_SECONDS:.0f} seconds")
    return seconds


def check_limit(limit: int, maximum: int) -> int:
    """Return ``limit``.

    Raises:
        ValueError: outside 1..maximum.
    """
    if not 1 <= int(limit) <= maximum:
        raise ValueError(f"limit must be between 1 and {maximum}")
    return int(limit)


def check_progress(progress: float | None) -> float | None:
    """Return ``progress`` as float or None.

    Raises:
        ValueError: outside [0, 1].
    """
    if progress is None:
        return None
    value = float(progress)
    if not 0.0 <= value <= 1.0:
        raise ValueError("progress must be between 0 and 1")
    return value


def check_submit(
    type: str, priority: int, max_attempts: int, run_at: datetime | None
) -> datetime | None:
    """Validate submit arguments; return ``run_at`` in UTC.

    Raises:
        ValueError: empty type, ``max_attempts < 1``, non-int priority, naive ``run_at``.
    """
    if not type:
        raise ValueError("job type must not be empty")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError("priority must be an int")
    if not -(2**31) <= priority < 2**31:
        raise ValueError("priority must fit in 32 bits")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError("max_attempts must be an int >= 1")
    return None if run_at is None else ensure_aware_utc(run_at, "run_at")


def check_state(state: JobState | str | None) -> JobState | None:
    """Return ``state`` as a ``JobState`` or None.

    Raises:
        ValueError: unknown state name.
    """
    return None if state is None else JobState(state)


#: Column order of the jobs table in SELECT/RETURNING lists; it is ``Job``'s field order.
JOB_COLUMNS: tuple[str, ...] = (
    "id",
    "type",
    "queue",
    "parameters",
    "state",
    "priority",
    "attempts",
    "max_attempts",
    "scheduled_at",
    "created_at",
    "started_at",
    "finished_at",
    "lease_token",
    "lease_expires_at",
    "worker_id",
    "progress",
    "progress_message",
    "result",
    "error",
    "idempotency_key",
    "cancel_requested",
    "version",
)
COLUMN_LIST = ", ".join(JOB_COLUMNS)

_CURSOR_CHARS = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def check_cursor(cursor: str | None) -> str | None:
    """Return the job id a ``list`` cursor stands for.

    Raises:
        ValueError: not a cursor ``list`` returned.
    """
    if cursor is None:
        return None
    if len(cursor) != 26 or not set(cursor) <= _CURSOR_CHARS:
        raise ValueError("invalid cursor")
    return cursor


def dump_json(value: Any, what: str) -> str:
    """Serialise ``value`` to compact JSON text.

    Raises:
        ValueError: not JSON-serialisable (including NaN and infinities).
    """
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from exc


def claim_order(claims: builtins.list[Claim]) -> builtins.list[Claim]:
    """Sort claims in claim order: priority descending, scheduled_at, id."""
    return sorted(claims, key=lambda c: (-c.job.priority, c.job.scheduled_at, c.job.id))


def same_submission(job: Job, type: str, parameters_json: str) -> bool:
    """Tell whether ``job`` was submitted with this type and these parameters (JSON text)."""
    return job.type == type and job.parameters == json.loads(parameters_json)


def lease_lost_reason(state: str, token_matches: bool, expired: bool) -> str:
    """Explain why a lease check failed, for ``LeaseLost``."""
    if state != JobState.RUNNING:
        return f"job is {state}, not running"
    if not token_matches:
        return "wrong lease token"
    if expired:
        return "lease expired"
    return "lease lost"
