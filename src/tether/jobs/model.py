"""The job record, its state machine and the lease handed to workers.

Conventions:
    * All datetimes are timezone-aware UTC.
    * ``attempts`` counts how many times the job was *started*: a claim
      increments it. A lease that expires does not add another attempt (the
      claim already counted it); a ``release`` (a graceful hand-back) takes the
      attempt back.
    * ``priority``: higher runs first.
    * ``progress`` is a fraction in [0, 1], or None when never reported.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypedDict

from tether.jobs.errors import IllegalTransition


class JobState(StrEnum):
    """The states of a job; ``succeeded``, ``failed`` and ``cancelled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for a state no job ever leaves."""
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)

#: Legal state changes. ``running -> queued`` is a retry, an expired lease or a
#: hand-back. The SQL triggers of both stores enforce the same table.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def is_legal_transition(source: JobState | str, target: JobState | str) -> bool:
    """Tell whether ``source -> target`` is allowed (a state staying put is not a transition).

    Raises:
        ValueError: a name that is not a ``JobState``.
    """
    src, dst = JobState(source), JobState(target)
    return dst in TRANSITIONS[src]


def check_transition(
    source: JobState | str, target: JobState | str, job_id: str | None = None
) -> None:
    """Return None when ``source -> target`` is legal.

    Raises:
        IllegalTransition: the state machine forbids it.
        ValueError: a name that is not a ``JobState``.
    """
    if not is_legal_transition(source, target):
        raise IllegalTransition(str(JobState(source)), str(JobState(target)), job_id)


class JobErrorInfo(TypedDict):
    """Why a job failed: ``code`` (e.g. ``lease_expired``), ``message``, ``details``."""

    code: str
    message: str
    details: Any


def normalize_error(error: Mapping[str, Any]) -> JobErrorInfo:
    """Coerce a worker-given error mapping into ``{code, message, details}``.

    Missing ``code`` becomes ``"error"``, missing ``message`` ``""`` and missing
    ``details`` None; other keys are dropped.

    Raises:
        TypeError: ``error`` is not a mapping.
    """
    if not isinstance(error, Mapping):
        raise TypeError(f"error must be a mapping, not {type(error).__name__}")
    return JobErrorInfo(
        code=str(error.get("code") or "error"),
        message=str(error.get("message") or ""),
        details=error.get("details"),
    )


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job as stored.

    Attributes:
        id: sortable unique id (26 characters, ULID-like: creation time first).
        type: the job type name.
        queue: the queue the job waits in.
        parameters: the job's JSON parameters.
        state: its ``JobState``.
        priority: higher runs first.
        attempts: starts so far (incremented at claim).
        max_attempts: starts allowed before the job fails for good.
        scheduled_at: earliest time the job may be claimed (UTC).
        created_at: submission time (UTC).
        started_at: time of the latest claim, or None.
        finished_at: time the job reached a terminal state, or None.
        lease_token: token of the current lease while running, else None.
        lease_expires_at: end of the current lease while running, else None.
        worker_id: the worker that claimed it last, or None.
        progress: latest reported fraction in [0, 1], or None.
        progress_message: latest reported progress text, or None.
        result: the JSON result once succeeded, else None.
        error: ``{code, message, details}`` of the latest failure, or None.
        idempotency_key: the key given at submit, or None.
        cancel_requested: a cancellation was asked while it was running.
        version: incremented by every visible change (state, progress, ...);
            long polls compare it.
    """

    id: str
    type: str
    queue: str
    parameters: dict[str, Any]
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    worker_id: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    result: dict[str, Any] | None = None
    error: JobErrorInfo | None = None
    idempotency_key: str | None = None
    cancel_requested: bool = False
    version: int = 1

    @property
    def terminal(self) -> bool:
        """True once the job is succeeded, failed or cancelled."""
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (datetimes as ISO 8601 strings, state as its name)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, JobState):
                value = value.value
            out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class Claim:
    """A job handed to a worker with its lease.

    Attributes:
        job: the job, already in state ``running``.
        lease_token: proof of ownership for heartbeat/complete/fail.
        lease_expires_at: end of the lease (UTC) unless renewed by a heartbeat.
    """

    job: Job
    lease_token: str = field(repr=False)
    lease_expires_at: datetime

    @classmethod
    def from_job(cls, job: Job) -> Claim:
        """Build the claim of a running job.

        Raises:
            ValueError: the job has no lease.
        """
        if job.lease_token is None or job.lease_expires_at is None:
            raise ValueError(f"job {job.id!r} holds no lease")
        return cls(job=job, lease_token=job.lease_token, lease_expires_at=job.lease_expires_at)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_id_last: list[int] = [0, 0]  # [millisecond, random part] of the previous id


def new_job_id() -> str:
    """Return a new 26-character id that sorts by creation time (ULID layout).

    48 bits of Unix milliseconds then 80 random bits, Crockford base32. Ids made
    by one process in the same millisecond increase monotonically.
    """
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        if ms <= _id_last[0]:
            ms = _id_last[0]
            rand = (_id_last[1] + 1) & ((1 << 80) - 1)
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _id_last[0], _id_last[1] = ms, rand
    value = (ms << 80) | rand
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def ensure_aware_utc(value: datetime, name: str = "datetime") -> datetime:
    """Return ``value`` converted to UTC.

    Raises:
        ValueError: ``value`` is naive (has no timezone).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)
